"""Every experiment composes and trains under debug=smoke (in-process, to share the corpus cache), through
its own tokenizer path: the experiment's base tokenizer, extended when it says tokenizer=extend."""

import json
from pathlib import Path

import pytest

from cptlab.errors import CptlabError
from cptlab.rundir.summary import read_summary

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def skip_without_base(cfg) -> None:
    """A GGUF base (model=smollm2) needs the `real` extra: without it the experiment is skipped, saying why."""
    if cfg.model.gguf:
        from cptlab.model.gguf import check_gguf

        try:
            check_gguf(str(cfg.model.gguf))
        except CptlabError as err:
            pytest.skip(f"{cfg.name} needs its GGUF base: {err}")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_smoke_runs(compose_cfg, tmp_path, experiment):
    from cptlab.cli.train_app import train

    run_dir = tmp_path / experiment
    cfg = compose_cfg([f"experiment={experiment}", "debug=smoke"], output_dir=run_dir)
    skip_without_base(cfg)
    assert cfg.model.random_init and cfg.model.config.hidden_size <= 64
    summary, reporter = train(cfg, run_dir)
    assert reporter and summary["status"] == "completed"
    assert summary["steps"] == cfg.trainer.max_steps
    for name, d in summary["domains"].items():
        assert d["bpb_start"] > 0 and d["bpb_end"] > 0, name
    new = [n for n, d in summary["domains"].items() if d["role"] == "new"]
    assert new and all(summary["domains"][n]["delta_bpb"] < 0 for n in new)  # a few steps already learn
    json.dumps(summary)  # serialisable as summary.json
    assert (run_dir / "metrics.csv").exists() and (run_dir / "checkpoints" / "last.ckpt").exists()
    assert read_summary(run_dir) == summary
    assert (run_dir / "report.md").exists() and (run_dir / "forgetting_curve.png").exists()
    vocab = summary["vocabulary"]
    if cfg.tokenizer.kind == "extend":  # the real extension ran on the experiment's own base tokenizer
        assert vocab["extension"]["added"] > 0
        assert vocab["final_tokens"] == vocab["base_rows"] + vocab["extension"]["added"]
        for name in new:
            tpc = summary["tokens_per_char"][name]
            assert tpc["final"] < tpc["base"], name
    if cfg.tokenizer.kind != "train":  # the base's vocabulary, not a freshly trained one
        from cptlab.tokenizer.hf import load_tokenizer

        assert vocab["base_rows"] == len(load_tokenizer(run_dir / ("tokenizer_base" if cfg.tokenizer.kind == "extend"
                                                                   else "tokenizer")))


def test_smoke_stands_in_for_a_missing_demo_base_with_its_own_tokenizer(compose_cfg, tmp_path):
    """Without the built demo base, debug=smoke (stand_in=demo_base) runs a random model of the demo base's
    architecture on the tokenizer experiment=demo_base trains, from the same cache entry the real build uses."""
    from cptlab.run import pipeline
    from cptlab.run.plan_values import model_plan_of, parts_of, stand_in_of
    from cptlab.tokenizer.hf import load_tokenizer
    from cptlab.utils.hashing import hash_file

    cfg = compose_cfg(["experiment=demo_zh", "debug=smoke"], output_dir=tmp_path)
    assert stand_in_of(cfg) is not None  # the test cache never holds a built demo base
    assert stand_in_of(compose_cfg(["experiment=demo_zh"], output_dir=tmp_path)) is None  # no stand_in: no stand-in
    elsewhere = compose_cfg(["experiment=demo_zh", "debug=smoke", f"model.name_or_path={tmp_path / 'nowhere'}"])
    assert stand_in_of(elsewhere) is None  # it stands in for the demo base only: a missing base of one's own fails
    source = Path(pipeline.base_tokenizer_source(parts_of(cfg), tmp_path))
    recipe = compose_cfg(["experiment=demo_base"])
    real = pipeline.build_tokenizer(parts_of(recipe), tmp_path / "real_build")
    assert hash_file(source / "tokenizer.model") == hash_file(real / "tokenizer.model")
    assert len(load_tokenizer(source)) == recipe.tokenizer.vocab_size
    name_or_path, fields = pipeline.model_source(model_plan_of(cfg))
    assert name_or_path is None
    arch = recipe.model.config
    assert fields["hidden_size"] == cfg.model.config.hidden_size != arch.hidden_size  # smoke sizes win
    assert fields["tie_word_embeddings"] == arch.tie_word_embeddings  # the rest is the demo base's
