"""Bad input stops before any heavy work with one clear line naming the culprit, and corrupts nothing.

Every case runs `python -m cptlab.cli.train_app debug=smoke ...` in a subprocess with HYDRA_FULL_ERROR unset and a fresh
cache: the command must exit non-zero with exactly one stderr line `cptlab-train: error: ...` that names the file
(and line) or the config key at fault, print no traceback, and leave no tokenizer or token cache, no checkpoint
and no metrics behind.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

WORDS = "the a cat dog sat on mat runs fast slow model data token train test value return def class".split()
# A valid two-domain run on the user's own files; the held-out shares leave several eval blocks per domain.
FILES = ["data=files", "data.domains.new.sources=[{new}]", "data.domains.old.sources=[{old}]",
         "data.domains.new.heldout=0.2", "data.domains.old.heldout=0.2"]
# Few steps: the valid runs here only need a checkpoint, metrics and a summary.
SHORT = ["trainer.max_steps=2", "eval.every_n_steps=2", "checkpoint.every_n_steps=2", "trainer.log_every_n_steps=1"]
# Generous: a bad command costs one interpreter start; a run that trained would show up in the artefact checks.
QUICK_S = 60


def lines_of(n: int, seed: int, tag: str = "") -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 15)))) + f"{tag} {i}." for i in range(n)]


def llama_config(max_positions: int) -> dict:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
            "intermediate_size": 176, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": max_positions, "vocab_size": 300}


@pytest.fixture(scope="session")
def inputs(tmp_path_factory, bpe_tokenizer_dir) -> dict[str, str]:
    """Tiny input files and model directories, good and bad; the keys are the placeholders of the cases."""
    d = tmp_path_factory.mktemp("inputs")
    new, old = lines_of(300, 0), lines_of(300, 1, " old")
    (d / "new.txt").write_text("\n".join(new) + "\n", encoding="utf-8")
    (d / "old.txt").write_text("\n".join(old) + "\n", encoding="utf-8")
    (d / "empty.txt").write_bytes(b"")
    (d / "blank.txt").write_text("   \n\t\n \r\n\n  \t \n", encoding="utf-8")
    (d / "malformed.jsonl").write_text(
        json.dumps({"text": new[0]}) + "\n" + json.dumps({"text": new[1]}) + "\n" + '{"text": "unterminated\n'
        + json.dumps({"text": new[2]}) + "\n", encoding="utf-8")
    (d / "no_field.jsonl").write_text(
        json.dumps({"text": new[0]}) + "\n" + json.dumps({"body": new[1]}) + "\n", encoding="utf-8")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": new[:20]}), d / "no_column.parquet")
    # Invalid UTF-8 on lines 4 and 8 (and nowhere else).
    (d / "bad_utf8.txt").write_bytes(b"".join(
        line.encode() + (b" \xff\xfe broken" if i in (3, 7) else b"") + b"\n" for i, line in enumerate(new)))

    (d / "broken_model").mkdir()
    (d / "broken_model" / "config.json").write_text('{"model_type": "llama", "hidden_size": ', encoding="utf-8")
    (d / "short_model").mkdir()
    (d / "short_model" / "config.json").write_text(json.dumps(llama_config(32)), encoding="utf-8")
    (d / "bare_model").mkdir()  # a config and no tokenizer at all
    (d / "bare_model" / "config.json").write_text(json.dumps(llama_config(512)), encoding="utf-8")
    # A model directory whose tokenizer is a WordLevel tokenizer.json: neither SentencePiece nor byte-level BPE.
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    (d / "wordlevel_model").mkdir()
    (d / "wordlevel_model" / "config.json").write_text(json.dumps(llama_config(512)), encoding="utf-8")
    PreTrainedTokenizerFast(tokenizer_object=word_level, eos_token="</s>", unk_token="[UNK]").save_pretrained(
        str(d / "wordlevel_model"))
    # A SentencePiece base (the demo's kind).
    from cptlab.tokenizer.spm import train_spm

    spm_model = train_spm(new + old, d / "spm", vocab_size=300, character_coverage=1.0)

    paths = {p.stem: p for p in d.iterdir()}
    paths.update({"dir": d, "bpe": bpe_tokenizer_dir, "spm_model": spm_model})
    return {k: str(v) for k, v in paths.items()}


def fill(items, inputs) -> list[str]:
    return [item.format(**inputs) for item in items]


def smoke(*overrides: str) -> list[str]:
    """`debug=smoke` keeps the configured tokenizer; a random-init model on the user's files trains its own."""
    own = [] if any(o.startswith("tokenizer=") for o in overrides) else ["tokenizer=train"]
    return ["debug=smoke", *own, *overrides]


def one_error_line(proc) -> str:
    """The single stderr line of a failed command (and no traceback)."""
    assert proc.returncode != 0, f"exit 0 for bad input; stdout: {proc.stdout[-1500:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("cptlab-train: error:"), lines[0]
    return lines[0]


def heavy_artefacts(cache_dir: Path, run_dir: Path) -> list[str]:
    """What only heavy work writes: trained/extended tokenizers, token caches (or their temp dirs), training output."""
    found = [str(p) for sub in ("tokenizers", "tokens") if (cache_dir / sub).is_dir()
             for p in (cache_dir / sub).iterdir() if p.is_dir()]
    found += [str(p) for p in (run_dir / "checkpoints", run_dir / "metrics.csv") if p.exists()]
    return found


def digests(run_dir: Path, names) -> dict[str, str]:
    return {n: hashlib.sha256((run_dir / n).read_bytes()).hexdigest() for n in names}


C = pytest.param
# (overrides, fragments the error line must contain, whether token caches may exist afterwards)
CASES = [
    # --- data sources ---
    C(["data=files", "data.domains.new.sources=[{dir}/no_such_file.txt]", "data.domains.old.sources=[{old}]"],
      ["{dir}/no_such_file.txt", "data.domains.new.sources"], False, id="missing_source"),
    C(["data=files", "data.domains.new.sources=[{empty}]", "data.domains.old.sources=[{old}]"],
      ["{empty}", "no documents"], False, id="empty_source"),
    C(["data=files", "data.domains.new.sources=[{new}]", "data.domains.old.sources=[{blank}]"],
      ["{blank}", "no documents", "empty or whitespace"], False, id="whitespace_only_documents"),
    C(["data=files", "data.domains.new.sources=[{malformed}]", "data.domains.old.sources=[{old}]"],
      ["{malformed}:3:", "malformed JSON"], False, id="malformed_jsonl_line"),
    C(["data=files", "data.domains.new.sources=[{no_field}]", "data.domains.old.sources=[{old}]"],
      ["{no_field}:2:", "'text'"], False, id="jsonl_record_without_text_field"),
    C(["data=files", "data.domains.new.sources=[{no_column}]", "data.domains.old.sources=[{old}]"],
      ["{no_column}", "'text'"], False, id="parquet_without_text_column"),
    C(["data=files", "data.domains.new.sources=[{bad_utf8}]", "data.domains.old.sources=[{old}]",
       "data.on_bad_text=error"],
      ["{bad_utf8}:4:", "invalid UTF-8", "data.on_bad_text"], False, id="invalid_utf8_with_on_bad_text_error"),
    # data=files asks for a replay corpus too: its unset sources were OmegaConf's traceback (issue #26, 11)
    C(["data=files", "data.domains.new.sources=[{new}]"],
      ["data.domains.old.sources is not set", "~data.domains.old and data.replay_ratio=0"], False,
      id="files_without_replay_sources"),
    # Two held-out documents (of one tiny corpus) hold fewer tokens than one eval block of seq_len+1: only
    # known once the held-out split is tokenized, so a (valid, reusable) token cache may exist afterwards.
    C(["data=files", "data.domains.new.sources=[{new}]", "data.domains.old.sources=[{old}]", "data.seq_len=64",
       "data.domains.new.heldout=2"],
      ["data.domains.new.heldout", "data.seq_len"], True, id="heldout_smaller_than_one_eval_block"),
    # --- data config ---
    C([*FILES, "data.replay_ratio=1.0"], ["data.replay_ratio=1.0"], False, id="replay_ratio_1"),
    C([*FILES, "data.replay_ratio=-0.1"], ["data.replay_ratio=-0.1"], False, id="replay_ratio_negative"),
    C([*FILES, "data.replay_ratio=0.5", "~data.domains.old"], ["data.replay_ratio=0.5", "replay"], False,
      id="replay_share_without_replay_domain"),
    C([*FILES, "data.batch_size=0"], ["data.batch_size=0"], False, id="batch_size_0"),
    C([*FILES, "trainer.max_steps=0"], ["trainer.max_steps=0"], False, id="max_steps_0"),
    C([*FILES, "eval.every_n_steps=-1"], ["eval.every_n_steps=-1"], False, id="eval_every_negative"),
    # --- compose time ---
    C([*FILES, "no_such_key=1"], ["no_such_key"], False, id="unknown_key"),
    C([*FILES, "data.batch_size=abc"], ["data.batch_size", "abc"], False, id="wrong_type"),
    C([*FILES, "data=nope"], ["data/nope"], False, id="unknown_group_option"),
    # --- model ---
    C([*FILES, "data.seq_len=1024"], ["data.seq_len=1024", "512"], False, id="seq_len_over_tiny_model_positions"),
    C([*FILES, "model=hf", "model.name_or_path={short_model}"], ["data.seq_len=64", "32"], False,
      id="seq_len_over_model_dir_positions"),
    C([*FILES, "model=hf", "model.name_or_path={dir}/no_such_model"], ["{dir}/no_such_model", "model.name_or_path"],
      False, id="missing_model_dir"),
    C([*FILES, "model=hf", "model.name_or_path={broken_model}"], ["{broken_model}/config.json"], False,
      id="malformed_model_config"),
    C([*FILES, "adapter=lora", "adapter.target_modules=[q_proj,no_such_proj]"],
      ["adapter.target_modules", "no_such_proj"], False, id="lora_unknown_target_module"),
    # --- strategies ---
    C([*FILES, "trainer=fsdp", "trainer.accelerator=cpu", "retention=ema"], ["retention=ema", "trainer=ddp"], False,
      id="fsdp_with_weight_averaging"),
    C([*FILES, "trainer=fsdp", "trainer.accelerator=cpu", "trainer.fsdp_sharding=HYBRID_SHARD"],
      ["trainer.fsdp_sharding='HYBRID_SHARD'", "FULL_SHARD"], False, id="fsdp_unknown_sharding"),
    # --- tokenizer ---
    C([*FILES, "model=hf", "model.name_or_path={wordlevel_model}", "tokenizer=extend"],
      ["tokenizer=extend", "{wordlevel_model}"], False, id="extend_base_with_wordlevel_tokenizer"),
    C([*FILES, "model=hf", "model.name_or_path={bare_model}", "tokenizer=extend"],
      ["tokenizer=extend", "{bare_model}"], False, id="extend_base_without_tokenizer"),
    C([*FILES, "tokenizer=extend", "tokenizer.path={dir}/no_such_tokenizer"], ["{dir}/no_such_tokenizer"], False,
      id="extend_missing_tokenizer_path"),
    C([*FILES, "tokenizer=extend", "tokenizer.path={bpe}", "tokenizer.vocab_size=10"], ["tokenizer.vocab_size=10"],
      False, id="extend_bpe_vocab_too_small"),
    C([*FILES, "tokenizer=extend", "tokenizer.path={spm_model}", "tokenizer.vocab_size=10"], ["tokenizer.vocab_size=10"],
      False, id="extend_spm_vocab_too_small"),
]


@pytest.mark.parametrize("overrides, fragments, caches_allowed", CASES)
def test_bad_input_fails_early_with_one_line(cptlab_train, tmp_path, inputs, overrides, fragments, caches_allowed):
    run_dir = tmp_path / "run"
    proc = cptlab_train(*smoke(*fill(overrides, inputs)), f"hydra.run.dir={run_dir}", timeout=180)
    line = one_error_line(proc)
    for fragment in fill(fragments, inputs):
        assert fragment in line, (fragment, line)
    assert proc.elapsed < QUICK_S, f"took {proc.elapsed:.0f} s"
    heavy = heavy_artefacts(cptlab_train.cache_dir, run_dir)
    if caches_allowed:
        heavy = [p for p in heavy if not p.startswith(str(cptlab_train.cache_dir))]
    assert not heavy, f"heavy work before the error: {heavy}"
    summary = run_dir / "summary.json"
    if summary.exists():  # errors past composition are recorded in the run dir
        record = json.loads(summary.read_text())
        assert record["status"] == "failed" and record["error"] in line


@pytest.mark.parametrize("policy, counted, docs_read", [("replace", "bad_text_replaced", 300),
                                                        ("skip", "bad_text_skipped", 298)])
def test_invalid_utf8_is_accepted_and_counted_with_replace_or_skip(cptlab_train, tmp_path, inputs, policy, counted,
                                                                  docs_read):
    run_dir = tmp_path / "run"
    overrides = ["data=files", "data.domains.new.sources=[{bad_utf8}]", "data.domains.old.sources=[{old}]",
                 "data.domains.new.heldout=0.2", "data.domains.old.heldout=0.2"]
    proc = cptlab_train(*smoke(*fill(overrides, inputs)), *SHORT, f"data.on_bad_text={policy}",
                        f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    stats = summary["data"]["new"]
    assert stats[counted] == 2 and stats["docs_read"] == docs_read, stats
    other = "bad_text_skipped" if counted == "bad_text_replaced" else "bad_text_replaced"
    assert stats[other] == 0 and summary["data"]["old"][counted] == 0


# --- nothing already written is corrupted ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def completed_run(tmp_path_factory, inputs, train_cli):
    """A completed short run, then the same command with one bad override, into the same run dir."""
    base = tmp_path_factory.mktemp("completed")
    train = train_cli(base / "cache")
    run_dir = base / "run"
    good = [*smoke(*fill(FILES, inputs)), *SHORT, f"hydra.run.dir={run_dir}"]
    proc = train(*good)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    before = digests(run_dir, ["metrics.csv", "checkpoints/last.ckpt", "summary.json"])
    bad = train(*good, "data.batch_size=0")
    return train, good, run_dir, before, bad


def test_bad_input_leaves_a_completed_run_untouched(completed_run):
    _, _, run_dir, before, _ = completed_run
    assert digests(run_dir, before) == before
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_bad_input_aimed_at_a_completed_run_dir_still_fails(completed_run):
    *_, bad = completed_run
    assert "data.batch_size=0" in one_error_line(bad)


@pytest.fixture(scope="module")
def interrupted_run(completed_run, tmp_path_factory):
    """The completed run's directory as a run killed after its last checkpoint leaves it (no summary.json yet),
    then a bad command into it."""
    train, good, run_dir, _, _ = completed_run
    killed = tmp_path_factory.mktemp("interrupted") / "run"
    shutil.copytree(run_dir, killed)
    (killed / "summary.json").unlink()
    good = [a for a in good if not a.startswith("hydra.run.dir=")] + [f"hydra.run.dir={killed}"]
    before = digests(killed, ["metrics.csv", "checkpoints/last.ckpt"])
    bad = train(*good, "data.batch_size=0")
    return train, good, killed, before, bad


def test_bad_input_leaves_an_interrupted_run_resumable(interrupted_run):
    train, good, killed, before, bad = interrupted_run
    assert "data.batch_size=0" in one_error_line(bad)
    assert digests(killed, before) == before
    # The failed attempt's record must not block or poison the resumed run: train on to step 4.
    rows_before = (killed / "metrics.csv").read_text()
    longer = [a if a != "trainer.max_steps=2" else "trainer.max_steps=4" for a in good]
    proc = train(*longer)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["error"] is None and summary["steps"] == 4
    assert (killed / "metrics.csv").read_text().startswith(rows_before)


def test_rerun_of_a_run_killed_after_its_final_checkpoint_completes(completed_run, tmp_path_factory):
    train, good, run_dir, _, _ = completed_run
    killed = tmp_path_factory.mktemp("killed_at_end") / "run"
    shutil.copytree(run_dir, killed)
    (killed / "summary.json").unlink()
    proc = train(*[a for a in good if not a.startswith("hydra.run.dir=")], f"hydra.run.dir={killed}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((killed / "summary.json").read_text())["status"] == "completed"
