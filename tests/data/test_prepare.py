"""cptlab-prepare: the tokenizer and token caches only, in shard groups (a job array) or whole; a training
job's build_data afterwards encodes nothing."""

from __future__ import annotations

import gzip
import subprocess
import sys

import numpy as np

from cptlab.cli.prepare import prepare
from cptlab.data import tokens
from cptlab.run import pipeline
from cptlab.run.plan_values import data_plan_of, parts_of


def corpus(tmp_path):
    rng = np.random.default_rng(0)
    words = "alpha beta gamma delta 数据 模型 return def x = 1".split()
    new = tmp_path / "new"
    new.mkdir()
    for f in range(4):
        docs = [f"shard {f} doc {i} " + " ".join(rng.choice(words, size=12)) for i in range(80)]
        with gzip.open(new / f"part-{f}.jsonl.gz", "wt", encoding="utf-8") as out:
            out.write("".join('{"text": "%s"}\n' % d for d in docs))
    old = tmp_path / "old.txt"
    old.write_text("\n".join(f"old document {i} " + " ".join(rng.choice(words, size=9)) for i in range(200)) + "\n")
    return new, old


def overrides(tmp_path, new, old) -> list[str]:
    return ["data=files", f"data.domains.new.sources=[{new}]", f"data.domains.old.sources=[{old}]",
            "tokenizer=train", "tokenizer.vocab_size=400", f"paths.cache_dir={tmp_path / 'cache'}"]


def test_shard_groups_fill_the_cache_and_training_encodes_nothing(tmp_path, compose_cfg, monkeypatch):
    new, old = corpus(tmp_path)
    base = overrides(tmp_path, new, old)
    lines = []
    assert prepare(compose_cfg([*base, "prepare.tokenizer_only=true"]), tmp_path / "t", log=lines.append) == {}
    assert lines[0].startswith("tokenizer: ") and not (tmp_path / "cache" / "tokens").exists()
    for group in (0, 1):
        built = prepare(compose_cfg([*base, "prepare.groups=2", f"prepare.group={group}"]), tmp_path / f"p{group}",
                        log=lines.append)
        assert built["new"] == {"group": group, "groups": 2, "shards": 2}
    assert any(line.startswith("new: shard group 1 of 2 ready") for line in lines)
    shards = list((tmp_path / "cache" / tokens.SHARDS_DIR).glob("*/meta.json"))
    assert len(shards) == 5  # 4 files of `new`, 1 of `old`

    encoded = []
    real = tokens.encode_documents
    monkeypatch.setattr(tokens, "encode_documents", lambda *a, **k: encoded.append(1) or real(*a, **k))
    cfg = compose_cfg(base)
    domains = pipeline.build_data(data_plan_of(cfg), pipeline.build_tokenizer(parts_of(cfg), tmp_path / "run"))
    assert encoded == [] and [len(d.train_files) for d in domains] == [4, 1]

    whole = prepare(compose_cfg([*base, f"paths.cache_dir={tmp_path / 'fresh'}"]), tmp_path / "p", log=lines.append)
    assert whole["new"]["shards"] == 4 and whole["new"]["train_tokens"] == domains[0].n_train_tokens


def test_console_script_refuses_a_bad_group_in_one_line(tmp_path):
    new, old = corpus(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "cptlab.cli.prepare", *overrides(tmp_path, new, old),
                           "prepare.groups=2", "prepare.group=2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "cptlab-prepare: error: prepare.group=2 of prepare.groups=2: need groups >= 1 and 0 <= group < groups")
