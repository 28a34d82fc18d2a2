"""The vocabulary-extension flow end to end: a tiny base model is built and published like the demo
base, then continued on Chinese with tokenizer=extend (the demo_zh recipe at smoke size)."""

import pytest
import torch
from transformers import AutoModelForCausalLM


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, compose_cfg):
    from omegaconf import open_dict

    from cptlab.cli.train_app import train

    root = tmp_path_factory.mktemp("base")
    cfg = compose_cfg(["experiment=demo_base", "debug=smoke"], output_dir=root / "run")
    with open_dict(cfg):
        cfg.publish_dir = str(root / "published")
    summary, _ = train(cfg, root / "run")
    assert summary["paths"]["export"] == str(root / "published")
    return root / "published"


def test_demo_zh_with_extension_on_a_published_base(compose_cfg, tmp_path, tiny_base):
    from cptlab.cli.train_app import train

    run_dir = tmp_path / "zh"
    cfg = compose_cfg(["experiment=demo_zh", "debug=smoke", "tokenizer=extend", f"model.name_or_path={tiny_base}",
                       "model.config=null", "model.random_init=false", "tokenizer.vocab_size=2000"], output_dir=run_dir)
    summary, _ = train(cfg, run_dir)
    assert summary["status"] == "completed"
    vocab = summary["vocabulary"]
    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    assert vocab["base_rows"] == base.get_input_embeddings().weight.shape[0]
    assert vocab["extension"]["added"] > 0
    assert vocab["final_tokens"] == vocab["base_rows"] + vocab["extension"]["added"]
    tpc = summary["tokens_per_char"]
    assert tpc["zh"]["final"] < tpc["zh"]["base"] / 1.5  # Chinese needs far fewer tokens
    assert tpc["en"]["final"] == pytest.approx(tpc["en"]["base"])  # English segmentation unchanged
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    rows = state["model.model.embed_tokens.weight"].shape[0]
    assert rows % 64 == 0 and rows >= vocab["final_tokens"]
    # Step 0 also scores the unextended base on the same English blocks (its rows alone): exactly the base.
    from cptlab.data.mixture import eval_blocks
    from cptlab.evaluation.bpb import eval_sums, metrics_from_sums
    from cptlab.run import pipeline
    from cptlab.run.plan_values import data_plan_of
    from cptlab.tokenizer.byte_lengths import token_byte_lengths
    from cptlab.tokenizer.hf import load_tokenizer

    en = summary["domains"]["en"]
    [domain] = [d for d in pipeline.build_data(data_plan_of(cfg), run_dir / "tokenizer") if d.name == "en"]
    blocks = torch.from_numpy(eval_blocks(domain, cfg.data.seq_len, cfg.eval.max_blocks))
    assert int(blocks.max()) < vocab["base_rows"]
    token_bytes = torch.from_numpy(token_byte_lengths(load_tokenizer(run_dir / "tokenizer")))
    expected = metrics_from_sums(eval_sums(base, blocks, token_bytes, batch_size=cfg.eval.batch_size))["bpb"]
    assert en["bpb_base_model"] == pytest.approx(expected, abs=1e-5)
    # The new rows take probability mass from every base token: the cost is >= 0, and it is what step 0 shows.
    assert en["init_cost_bpb"] == pytest.approx(en["bpb_start"] - expected, abs=1e-5) and en["init_cost_bpb"] >= 0
    assert "bpb_base_model" not in summary["domains"]["zh"]  # Chinese blocks hold new tokens
    assert "base model bpb" in (run_dir / "report.md").read_text()
