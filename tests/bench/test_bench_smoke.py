"""`python -m benchmarks --quick` runs every benchmark and writes every ratio key to its JSON (slow: it checks
the benchmarks' own code, which `make test` leaves out; `make test-all` runs it).

Nothing about speed is asserted: the numbers depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.common import Ratio
from benchmarks.run import RATIO_KEYS
from cptlab.data.tokens import usable_cpus

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_bench_writes_every_ratio(tmp_path):
    out = tmp_path / "results" / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["mode"] == "quick"
    assert set(data["benchmarks"]) == set(RATIO_KEYS)
    for name, bench in data["benchmarks"].items():
        assert bench["error"] is None, f"{name}: {bench['error']}"
    expected = [key for keys in RATIO_KEYS.values() for key in keys]
    assert sorted(data["ratios"]) == sorted(expected)
    for key in expected:
        entry = data["ratios"][key]
        if key == "corpus.num_proc2_on_2_cpus_vs_num_proc1_on_1" and usable_cpus() < 2:
            assert entry["value"] is None and "needs 2 CPUs" in entry["measured"]
            continue
        assert isinstance(entry["value"], (int, float)) and math.isfinite(entry["value"]), key
        assert entry["met"] in (True, False, None)
        assert key in proc.stdout  # the table names every ratio


def test_ratio_targets():
    assert Ratio("k", 1.2, "", "", ">= 1.0").met is True
    assert Ratio("k", 0.9, "", "", ">= 1.0").met is False
    assert Ratio("k", 0.01, "", "", "<= 0.05").met is True
    assert Ratio("k", 1.0, "", "", "== 1.0").met is True
    assert Ratio("k", 2.0, "", "", None).met is None
    assert Ratio("k", None, "", "", ">= 1.0").met is None
