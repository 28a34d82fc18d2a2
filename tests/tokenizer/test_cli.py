"""The `cptlab-tokenizer` command: extend and report, in a subprocess as users run it; one-line errors."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys

import pytest

from cptlab.cli.tokenizer import main
from cptlab.tokenizer.prepare import extension_stats

CHARS = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成"
    "会可主发年动同工也能下过子说产种面而方后多定"
)


def run_cli(*args):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "cptlab.cli.tokenizer", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory, make_docs):
    root = tmp_path_factory.mktemp("cli")
    rnd = random.Random(0)
    words = [CHARS[i : i + 2] for i in range(0, len(CHARS) - 1, 3)] + list(CHARS)
    zh = ["".join(rnd.choices(words, k=rnd.randint(10, 30))) + "。" for _ in range(400)]
    (root / "zh.txt").write_text("\n".join(zh) + "\n", encoding="utf-8")
    (root / "en.txt").write_text("\n".join(d.replace("\n", " ") for d in make_docs(100, seed=4)) + "\n")
    return root


@pytest.fixture(scope="module")
def extended_dir(files, exported):
    base_model, _ = exported("bpe")
    out = files / "extended"
    result = run_cli("extend", "--base", base_model, "--corpus", files / "zh.txt", "--vocab-size", 600,
                     "--out", out, "--check-text", files / "en.txt")  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def test_extend_writes_a_tokenizer_and_prints_the_gain(extended_dir):
    out, stdout = extended_dir
    stats = extension_stats(out)
    assert stats["added"] > 100 and (out / "tokenizer.json").is_file() and (out / "tokenizer.model").is_file()
    assert f"{stats['added']} pieces added to 400 ({stats['final_pieces']} in all), admit=auto" in stdout
    assert f"skipped of the {stats['domain_pieces']} domain pieces: {stats['skipped_special']} special or byte " \
           "pieces" in stdout
    assert f"base-language texts segmented differently: 0 of {stats['check_texts']} (0.00%)" in stdout
    before, after = map(float, re.search(r"on the corpus: ([\d.]+) before, ([\d.]+) after", stdout).groups())
    assert after < 0.5 * before
    before, after = re.search(r"on the check text: ([\d.]+) before, ([\d.]+) after", stdout).groups()
    assert before == after  # English segments as before


def test_extend_add_pieces_and_admit(files, exported, tmp_path):
    base_model, _ = exported("bpe")
    out = tmp_path / "exact"
    result = run_cli("extend", "--base", base_model, "--corpus", files / "zh.txt", "--add-pieces", 123,
                     "--admit", "all", "--out", out, "--check-text", files / "en.txt")  # fmt: skip
    assert result.returncode == 0, result.stderr
    stats = extension_stats(out)
    assert (stats["added"], stats["admit"], stats["add_pieces"]) == (123, "all", 123)
    assert "123 pieces added to 400 (523 in all), admit=all" in result.stdout and "beyond add_pieces" in result.stdout
    changed = re.search(r"segmented differently: (\d+) of (\d+) \(([\d.]+)%\)", result.stdout)
    assert int(changed[1]) == stats["check_texts_changed"] and int(changed[2]) == stats["check_texts"] == 100
    both = run_cli("extend", "--base", base_model, "--corpus", files / "zh.txt", "--add-pieces", 5,
                   "--vocab-size", 600, "--out", tmp_path / "x")  # fmt: skip
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    bad = run_cli("extend", "--base", base_model, "--corpus", files / "zh.txt", "--add-pieces", 5, "--admit", "some",
                  "--out", tmp_path / "y")  # fmt: skip
    assert bad.returncode == 2 and "--admit: invalid choice: 'some'" in bad.stderr


def test_report_json_and_table(extended_dir, files, exported, capsys):
    out, _ = extended_dir
    _, base_dir = exported("bpe")
    result = run_cli("report", "--tokenizer", base_dir, out, "--text", files / "zh.txt", files / "en.txt", "--json")
    assert result.returncode == 0, result.stderr
    rows = {(r["tokenizer"], os.path.basename(r["text"])): r for r in json.loads(result.stdout)}
    assert len(rows) == 4
    base, ext = str(base_dir), str(out)
    assert rows[ext, "zh.txt"]["tokens_per_char"] < 0.5 * rows[base, "zh.txt"]["tokens_per_char"]
    assert rows[ext, "en.txt"]["n_tokens"] == rows[base, "en.txt"]["n_tokens"]
    assert rows[base, "zh.txt"]["byte_fallback_share"] > 0.9 > rows[ext, "zh.txt"]["byte_fallback_share"]
    assert rows[base, "zh.txt"]["extension"] is None
    assert rows[ext, "zh.txt"]["extension"] == extension_stats(out)
    main(["report", "--tokenizer", str(out), "--text", str(files / "en.txt")])
    table = capsys.readouterr().out
    assert "tokens/char" in table and "byte-fallback share" in table and "en.txt" in table
    stats = extension_stats(out)
    assert f"{out}: built by extend: {stats['added']} pieces added" in table and "special or byte" in table


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    result = run_cli("report", "--tokenizer", tmp_path / "missing", "--text", tmp_path / "missing.txt")
    assert result.returncode == 2
    assert result.stderr.startswith("cptlab-tokenizer: error: ") and len(result.stderr.strip().splitlines()) == 1
    for argv in (["extend", "--base", "x"], ["nope"], []):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("cptlab-tokenizer: error: ") and len(err.strip().splitlines()) == 1, err
