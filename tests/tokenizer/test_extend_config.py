"""tokenizer.admit / tokenizer.add_pieces: validated by name before any work, and carried by the pipeline into
the extension (and its cache key)."""

from __future__ import annotations

import random

import pytest

import cptlab.run.pipeline as pipeline
import cptlab.tokenizer.prepare as prepare
from cptlab.errors import CptlabError
from cptlab.run.plan_values import parts_of
from cptlab.run.validate import validate
from cptlab.tokenizer.hf import load_tokenizer
from cptlab.tokenizer.prepare import extension_stats

CHARS = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定"


@pytest.mark.parametrize("overrides, message", [
    (["tokenizer.admit=loose"], r"tokenizer\.admit='loose' must be one of auto, script, strict, all"),
    (["tokenizer.add_pieces=0"], r"tokenizer\.add_pieces=0 must be >= 1 \(new pieces"),
    (["tokenizer=train", "tokenizer.add_pieces=100"], r"tokenizer\.add_pieces=100 only applies to tokenizer=extend"),
])  # fmt: skip
def test_bad_extension_options_are_named(compose_cfg, overrides, message):
    with pytest.raises(CptlabError, match=message):
        validate(compose_cfg(["experiment=demo_zh", "debug=smoke", *overrides]))


def test_extend_defaults(compose_cfg):
    tok = compose_cfg(["experiment=demo_zh"]).tokenizer
    assert (tok.kind, tok.admit, tok.add_pieces) == ("extend", "auto", None)


def test_pipeline_passes_admit_and_add_pieces(tmp_path, compose_cfg, exported, make_docs, spy):
    rnd = random.Random(0)
    zh = ["".join(rnd.choices(CHARS, k=rnd.randint(20, 60))) + "。" for _ in range(400)]
    (tmp_path / "zh.txt").write_text("\n".join(zh) + "\n", encoding="utf-8")
    (tmp_path / "en.txt").write_text("\n".join(d.replace("\n", " ") for d in make_docs(200)) + "\n")
    base_model, _ = exported("bpe")
    overrides = ["debug=smoke", "data=files", f"data.domains.new.sources=[{tmp_path / 'zh.txt'}]",
                 f"data.domains.old.sources=[{tmp_path / 'en.txt'}]", f"paths.cache_dir={tmp_path / 'cache'}",
                 "tokenizer=extend", f"tokenizer.path={base_model}", "tokenizer.add_pieces=150"]  # fmt: skip
    calls = spy(prepare, "extend_spm")
    out = pipeline.build_tokenizer(parts_of(compose_cfg([*overrides, "tokenizer.admit=script"])), tmp_path / "run1")
    assert calls[-1]["admit"] == "script" and calls[-1]["add_pieces"] == 150
    stats = extension_stats(out)
    assert stats["added"] == 150 and len(load_tokenizer(out)) == stats["final_pieces"] == 400 + 150
    assert stats["check_texts"] > 0 and stats["check_texts_changed"] == 0  # the replay domain's train split
    pipeline.build_tokenizer(parts_of(compose_cfg(overrides)), tmp_path / "run2")  # admit=auto: another key
    assert len(calls) == 2 and calls[-1]["admit"] == "auto"
