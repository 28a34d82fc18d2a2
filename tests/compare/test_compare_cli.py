"""cptlab-compare as users run it: outputs written into the sweep or --out, the table printed,
--old/--new, and one-line errors with exit status 2."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cptlab.cli.compare import OUTPUTS, main

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def cptlab_compare(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cptlab.cli.compare", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=60, env=env)


def test_cli_subprocess_writes_into_the_sweep_and_prints_the_table(sweep):
    proc = cptlab_compare(sweep)
    assert proc.returncode == 0, proc.stderr
    for name in OUTPUTS:
        path = sweep / name
        assert path.stat().st_size > 0
        assert str(path) in proc.stdout
    for name in ("forgetting_curves.png", "tradeoff.png"):
        assert (sweep / name).read_bytes()[:8] == PNG
    assert "data.replay_ratio=0.25, optim.lr=10.0" in proc.stdout and "unfinished" in proc.stdout
    assert "failed: loss is NaN at step 12" in proc.stdout
    assert not list(sweep.glob(".*.tmp"))  # atomic writes leave no temporaries behind


def test_cli_subprocess_error_is_one_line(tmp_path):
    proc = cptlab_compare(tmp_path / "missing")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"cptlab-compare: error: {tmp_path / 'missing'} does not exist"
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_empty_sweep_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("cptlab-compare: error: no run under") and err.count("\n") == 1


def test_out_and_role_flags(sweep, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cmp"
    main([str(sweep / "0"), str(sweep / "1"), "--out", str(out), "--old", "zh", "--new", "en"])
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["data.replay_ratio=0.1", "data.replay_ratio=0.25"]
    assert float(rows[1]["learning"]) == pytest.approx(-0.06)  # en treated as the new domain
    md = (out / "summary.md").read_text()
    assert "new bpb (en)" in md and "old bpb (zh)" in md
    # Several run dirs and no --out: ./compare
    monkeypatch.chdir(tmp_path)
    main([str(sweep / "0"), str(sweep / "2")])
    assert (tmp_path / "compare" / "summary.csv").is_file()
    assert "compare/summary.md" in capsys.readouterr().out


def test_unknown_domain_flag_is_an_error(sweep, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(sweep), "--old", "fr,en"])
    assert exc.value.code == 2
    assert "no run has domain fr" in capsys.readouterr().err
