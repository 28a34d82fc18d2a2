"""lm-evaluation-harness during training (cptlab.evaluation.harness): bad input refused before any heavy work, the LM wrapper
scores as the model does (new vocabulary rows included), the built-in probes, RNG and train mode left untouched,
bits-per-byte parity with cptlab's own evaluation, and exact resume with the harness on."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cptlab.errors import CptlabError
from cptlab.evaluation import harness, probes

pytest.importorskip("lm_eval")

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = [f"the model reads {w} text and writes {v} tokens." for w in ("short", "long", "plain", "odd")
             for v in ("few", "many", "new", "old")]


def config(**kw):
    base = {"tasks": [], "every_n_steps": None, "limit": None, "num_fewshot": None, "include_path": None,
            "batch_size": 4}
    return SimpleNamespace(**{**base, **kw})


# -- bad input, before any heavy work -------------------------------------------------------------------------------


def test_no_tasks_is_off_and_needs_nothing(monkeypatch):
    monkeypatch.setattr(harness, "lm_eval_installed", lambda: False)
    harness.check_harness(config())  # eval.harness.tasks=[] (the default): lm-eval not even looked for


def test_lm_eval_not_installed_is_one_line(monkeypatch):
    monkeypatch.setattr(harness, "lm_eval_installed", lambda: False)
    with pytest.raises(CptlabError, match=r"^eval.harness.tasks=\['cptlab_zh_polarity'\] needs lm-evaluation-harness, "
                                          r"which is not installed: pip install 'cptlab\[eval\]'") as err:
        harness.check_harness(config(tasks=["cptlab_zh_polarity"]))
    assert "\n" not in str(err.value)


def test_unknown_task_is_one_line(monkeypatch):
    monkeypatch.setattr(harness, "lm_eval_index", lambda: {"hellaswag"})  # lm-eval's own index, read for non-locals
    harness.check_harness(config(tasks=["cptlab_en_next_sentence", "hellaswag"]))
    with pytest.raises(CptlabError, match=r"eval.harness.tasks: unknown task 'helaswag' \(not an lm-eval task.*built "
                                          r"in: cptlab_en_next_sentence, cptlab_en_word_order, cptlab_zh_char_order, "
                                          r"cptlab_zh_polarity\)"):
        harness.check_harness(config(tasks=["cptlab_en_next_sentence", "helaswag"]))


def test_a_task_yaml_that_does_not_parse_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "lm_eval_index", lambda: set())
    (tmp_path / "good.yaml").write_text("task: mine\ncustom_dataset: !function utils.load\n", encoding="utf-8")
    harness.check_harness(config(tasks=["mine"], include_path=str(tmp_path)))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "bad.yaml").write_text("task: broken\ndoc_to_text: [unclosed\n", encoding="utf-8")
    with pytest.raises(CptlabError, match=r"the task YAML .*sub/bad.yaml does not parse \(.* at line \d+\)"):
        harness.check_harness(config(tasks=["mine"], include_path=str(tmp_path)))
    with pytest.raises(CptlabError, match="eval.harness.include_path=.*nowhere: not a directory"):
        harness.check_harness(config(tasks=["mine"], include_path=str(tmp_path / "nowhere")))


def test_validate_refuses_an_unknown_task_before_any_tokenizer(compose_cfg, monkeypatch, spy, tmp_path):
    from cptlab.run import pipeline
    from cptlab.run.validate import validate

    monkeypatch.setattr(harness, "lm_eval_index", lambda: set())
    builds = spy(pipeline, "build_tokenizer")
    cfg = compose_cfg(["experiment=demo_zh", "debug=smoke", "eval.harness.tasks=[cptlab_zh_polarity,nope]"], tmp_path)
    with pytest.raises(CptlabError, match="unknown task 'nope'"):
        validate(cfg)
    assert builds == []
    validate(compose_cfg(["experiment=demo_zh", "debug=smoke"], tmp_path))  # the shipped experiment passes


# -- the pieces ----------------------------------------------------------------------------------------------------


def test_flatten_names_metrics_and_their_stderr():
    results = {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.25,
                     "acc_norm_stderr,none": "N/A", "exact_match,strict-match": 1.0,
                     "exact_match_stderr,strict-match": 0.0}}
    assert harness.flatten(results) == {"val/harness/t/acc": 0.5, "val/harness/t/acc_stderr": 0.1,
                                        "val/harness/t/acc_norm": 0.25, "val/harness/t/exact_match_strict-match": 1.0,
                                        "val/harness/t/exact_match_strict-match_stderr": 0.0}


def test_rng_states_are_restored():
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    with harness.preserved_rng():
        torch.manual_seed(99), np.random.seed(99), random.seed(99)
        torch.rand(10), np.random.rand(10), random.random()
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def _tokenizer(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(SENTENCES * 5, trainers.BpeTrainer(vocab_size=300, special_tokens=["</s>"],
                                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                               show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")


def _model(vocab: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128))


def _logp(model, ids: list[int], start: int) -> float:
    """sum log p(ids[t] | ids[:t]) for t >= start, from the model's full logits."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    return float(sum(logp[t - 1, ids[t]] for t in range(start, len(ids))))


def _requests(*args):
    return [SimpleNamespace(args=a) for a in args]


def test_the_lm_scores_as_the_model_does_new_rows_included(tmp_path):
    from cptlab.evaluation.harness_lm import CptlabLM

    tok = _tokenizer(tmp_path)
    tok.add_tokens(["zzqqx"])  # an added token: len(tok) counts it, tok.vocab_size (what HFLM sizes by) does not
    assert len(tok) == tok.vocab_size + 1
    new_id = tok.convert_tokens_to_ids("zzqqx")
    model = _model(len(tok) + 3)  # padded rows beyond the tokenizer, as tokenizer.pad_to_multiple_of leaves them
    with torch.no_grad():  # make the new row matter: the model predicts it strongly after "reads"
        model.lm_head.weight[new_id] = 5 * model.lm_head.weight[new_id].sign()
    model.train()
    lm = CptlabLM(model, tok, batch_size=2)
    eos = tok.eos_token_id
    ctx, cont = "the model reads", " zzqqx text"
    (ll, greedy), (ll2, _) = lm.loglikelihood(_requests((ctx, cont), ("", "plain text")))
    ids_ctx, ids_all = lm.tok_encode(ctx), lm.tok_encode(ctx + cont)
    assert new_id in ids_all[len(ids_ctx):]
    assert ll == pytest.approx(_logp(model.eval(), ids_all, len(ids_ctx)), abs=1e-4)
    assert ll2 == pytest.approx(_logp(model, [eos] + lm.tok_encode("plain text"), 1), abs=1e-4)
    text = " ".join(SENTENCES[:6]) + " zzqqx"
    rolling = CptlabLM(model, tok, batch_size=3, max_length=16).loglikelihood_rolling(_requests((text,)))[0]
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    ids = lm.tok_encode(text)
    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(ids, eos, 16, 1)]
    assert len(windows) >= 3 and windows[0][0] == [eos]  # the first token is conditioned on EOS
    assert rolling == pytest.approx(sum(_logp(model, c + t, len(c)) for c, t in windows), abs=1e-3)
    with pytest.raises(CptlabError, match="has 4 rows"):  # more tokens than the model has rows: refused
        CptlabLM(_model(4), tok)


def test_the_lm_leaves_train_mode_and_grad_state():
    from cptlab.evaluation.harness_lm import CptlabLM

    tok = _tokenizer(None)
    model = _model(len(tok)).train()
    CptlabLM(model, tok).loglikelihood(_requests(("the model", " reads")))
    assert model.training and all(p.grad is None for p in model.parameters())


def test_the_probes_are_balanced_and_leave_out_trained_text():
    paragraphs = [f"Paragraph {i} opens here. It goes on about topic {i % 5}. Its end is number {i}." for i in range(40)]
    trained_zh = set()

    def trained(source, text):
        if source == "demo:zh" and len(trained_zh) < 50:
            trained_zh.add(text)
        return text in trained_zh

    probes.use_run(trained, {"demo:en_eval": paragraphs})
    try:
        items = probes.en_next_sentence()
        assert len(items) == 40 and probes.CHANCE["cptlab_en_next_sentence"] == 0.25
        for item in items:
            assert len(set(item["choices"])) == 4 and 0 <= item["label"] < 4
            number = item["context"].split()[1]
            assert item["choices"][item["label"]] == f"Its end is number {number}."
        assert sorted(i["label"] for i in items) != [0] * 40  # the true ending is not always first
        order = probes.en_word_order()
        assert len(order) == 40 and probes.CHANCE["cptlab_en_word_order"] == 0.25
        for item in order:
            true = item["choices"][item["label"]]
            assert true.startswith("Its end is number ") and len(set(item["choices"])) == 4
            # the same words, the first one first, the full stop last
            assert all(sorted(c[:-1].split()) == sorted(true[:-1].split()) and c.startswith("Its ") and c[-1] == "."
                       for c in item["choices"])
        zh = probes.zh_polarity()
        labels = [row["label"] for row in zh]
        assert labels[:4] == [0, 1, 0, 1] and labels.count(0) == labels.count(1) > 100
        assert not trained_zh & {row["review"] for row in zh}
        assert probes.dataset("cptlab_zh_polarity")["test"].num_rows == len(zh)
    finally:
        probes.use_run(lambda source, text: False)


def test_the_zh_char_order_probe_swaps_two_neighbouring_characters_and_leaves_out_trained_text():
    paragraphs = [f"第{i}段新闻开始。人民群众积极参加植树活动。今天的天气非常晴朗温暖第{i}号。" for i in range(30)]
    paragraphs.append("只有一句话没有句号")  # one sentence: no item
    trained = {paragraphs[0]}
    probes.use_run(lambda source, text: source == "demo:zh" and text in trained, {"demo:zh": paragraphs})
    try:
        items = probes.zh_char_order()
        assert len(items) == 29 and probes.CHANCE["cptlab_zh_char_order"] == 0.25
        assert not any(item["context"].startswith("第0段") for item in items)
        for item in items:
            true = item["choices"][item["label"]]
            assert true.startswith("今天的天气") and item["context"].endswith("植树活动。")
            assert len(set(item["choices"])) == 4
            for choice in item["choices"]:
                if choice == true:
                    continue
                # the same characters, first and last in place, exactly two neighbours swapped
                diff = [i for i, (a, b) in enumerate(zip(choice, true)) if a != b]
                assert len(choice) == len(true) and len(diff) == 2 and diff[1] == diff[0] + 1
                assert choice[diff[0]] == true[diff[1]] and choice[diff[1]] == true[diff[0]]
                assert 0 < diff[0] and diff[1] < len(true) - 1
        assert len({item["label"] for item in items}) > 1
    finally:
        probes.use_run(lambda source, text: False)


# -- parity with cptlab's bits per byte ----------------------------------------------------------------------------

PARITY_YAML = """task: parity_rolling
custom_dataset: !function utils.docs
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
process_results: !function utils.process
metric_list:
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
"""
PARITY_UTILS = """import json
from pathlib import Path

import datasets


def docs(**kwargs):
    rows = [json.loads(line) for line in (Path(__file__).parent / "docs.jsonl").read_text().splitlines()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def process(doc, results):
    # cptlab's stream: a document then EOS, which stands for one byte (the boundary, as a newline would)
    return {"bits_per_byte": (results[0], doc["bytes"])}
"""


def _exact(encode, text: str, n: int) -> str | None:
    """The longest prefix of `text` (ending in a non-space) that encodes to exactly n tokens, if one does."""
    best = None
    for end in range(1, len(text) + 1):
        if text[end - 1].isspace():
            continue
        count = len(encode(text[:end]))
        if count == n:
            best = text[:end]
        elif count > n + 3:
            break
    return best


@pytest.mark.parametrize("tokenizer", ["base", "extend"])
def test_bits_per_byte_parity_with_cptlab(tokenizer, compose_cfg, tmp_path):
    """lm-eval's bits_per_byte of a loglikelihood_rolling task (CptlabLM) over the very documents cptlab scores equals
    cptlab's val/D/bpb of that eval-only domain to 1e-3, on the demo-like tiny base and on its extended vocabulary.

    cptlab scores windows of the held-out stream (each document followed by EOS), lm-eval each document alone after
    an EOS. The documents are cut so that the two coincide: the first has data.seq_len tokens, the others one fewer,
    so every window cptlab scores starts at an EOS and holds one document and its EOS; with eval.max_blocks = m and
    2m windows in all, cptlab scores windows 1, 3, ..., 2m-1, and the harness those documents (text + "</s>", the
    EOS counted as one byte, as cptlab's byte lengths count it)."""
    from omegaconf import open_dict

    from cptlab.config import DomainConfig
    from cptlab.data.demo import demo_documents
    from cptlab.data.mixture import eval_blocks
    from cptlab.evaluation.bpb import eval_sums, metrics_from_sums
    from cptlab.run import pipeline
    from cptlab.run.build import build_run
    from cptlab.run.plan_values import parts_of
    from cptlab.run.validate import RunPlan
    from cptlab.tokenizer.byte_lengths import token_byte_lengths
    from cptlab.tokenizer.hf import load_tokenizer

    overrides = ["experiment=demo_zh", "debug=smoke", "data.replay_ratio=0", "~data.domains.en",
                 "~data.domains.en_eval", "eval.harness.tasks=[]", "data.max_docs=300"]
    overrides += ["tokenizer=base"] if tokenizer == "base" else []
    run_dir = tmp_path / "run"
    cfg = compose_cfg(overrides, run_dir)
    seq_len, blocks = cfg.data.seq_len, cfg.eval.max_blocks
    tok = load_tokenizer(pipeline.build_tokenizer(parts_of(cfg), run_dir))

    def encode(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    english = [d for d in demo_documents("en_eval") if len(d) > 400]
    chinese = [d for d in demo_documents("zh") if len(d) > 200][-50:]
    sources = [x for pair in zip(english, chinese) for x in pair]
    docs = []
    for text in sources:  # English and Chinese by turns, as far as a prefix of the right length exists
        doc = _exact(encode, text, seq_len if not docs else seq_len - 1)
        docs += [doc] if doc else []
        if len(docs) == 2 * blocks:
            break
    assert len(docs) == 2 * blocks and any("的" in d for d in docs)
    data = tmp_path / "parity.jsonl"
    data.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    with open_dict(cfg):
        cfg.data.domains["parity"] = DomainConfig(role="eval", sources=[str(data)])
    run = build_run(RunPlan.from_config(cfg), run_dir)
    domain = next(d for d in run.domains if d.name == "parity")
    scored = torch.from_numpy(eval_blocks(domain, seq_len, blocks))
    eos = run.tokenizer.eos_token_id
    assert scored.shape == (blocks, seq_len + 1) and (scored[:, 0] == eos).all()  # each window: EOS, a document
    if tokenizer == "extend":
        assert int(scored.max()) >= run.base_rows  # new rows are scored
    token_bytes = torch.from_numpy(token_byte_lengths(run.tokenizer))
    cptlab_bpb = metrics_from_sums(eval_sums(run.model, scored, token_bytes, batch_size=4))["bpb"]

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "parity.yaml").write_text(PARITY_YAML, encoding="utf-8")
    (tasks / "utils.py").write_text(PARITY_UTILS, encoding="utf-8")
    (tasks / "docs.jsonl").write_text("".join(
        json.dumps({"text": docs[k] + run.tokenizer.eos_token, "bytes": len(docs[k].encode("utf-8")) + 1},
                   ensure_ascii=False) + "\n" for k in range(1, 2 * blocks, 2)), encoding="utf-8")
    runner = harness.HarnessRunner(["parity_rolling"], run.tokenizer, include_path=str(tasks), batch_size=3)
    metrics = runner.run(run.model)
    lm_eval_bpb = metrics["val/harness/parity_rolling/bits_per_byte"]
    print(f"parity ({tokenizer} vocabulary): lm-eval bits_per_byte {lm_eval_bpb:.6f}, cptlab bpb {cptlab_bpb:.6f}")
    assert math.isfinite(cptlab_bpb) and cptlab_bpb > 1.0
    assert lm_eval_bpb == pytest.approx(cptlab_bpb, abs=1e-3), (lm_eval_bpb, cptlab_bpb)


# -- in a run --------------------------------------------------------------------------------------------------------


RESUME_ARGS = ["experiment=demo_zh", "debug=smoke", "trainer.max_steps=12", "checkpoint.every_n_steps=4",
               "eval.every_n_steps=4", "trainer.log_every_n_steps=2", "retention=ema", "eval.harness.every_n_steps=3",
               "eval.harness.limit=4"]


def _train(run_dir, wait=True):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "cptlab.cli.train_app", *RESUME_ARGS, f"hydra.run.dir={run_dir}"]
    if wait:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _series(run_dir) -> dict:
    import csv

    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {(int(row["step"]), k): float(v) for row in rows for k, v in row.items()
            if v and k not in ("train/tokens_per_sec", "val/harness/seconds")}


@pytest.mark.slow
def test_kill_and_resume_with_the_harness_on_matches_an_uninterrupted_run(tmp_path, sigkill_at_first_checkpoint):
    """tests/e2e/test_resume.py's check with the probes scored every 3 steps (not with the bpb evaluation, every 4)
    on the raw and the EMA weights: killed after its first checkpoint (step 4, the harness last ran at step 3), the
    resumed run ends with the very metrics of an uninterrupted one: the harness drew no training randomness, and
    no step is scored twice or skipped."""

    reference = tmp_path / "reference"
    done = _train(reference)
    assert done.returncode == 0, done.stderr[-2000:]
    killed = tmp_path / "killed"
    sigkill_at_first_checkpoint(_train(killed, wait=False), killed, timeout=900)
    resumed = _train(killed)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ref, got = _series(reference), _series(killed)
    assert set(ref) == set(got)
    assert {k: (ref[k], got[k]) for k in ref if ref[k] != got[k]} == {}
    for step in (0, 3, 6, 9, 12):
        assert (step, "val/harness/cptlab_zh_polarity/acc") in got
        assert (step, "val_ema/harness/cptlab_en_word_order/acc_norm") in got
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["harness"]["evaluations"] >= 3
    assert set(summary["harness"]["metrics"]) >= {"cptlab_zh_polarity/acc", "cptlab_en_word_order/acc"}
    assert summary["domains"]["en_eval"]["role"] == "eval" and summary["domains"]["en_eval"]["unigram_bpb"] is None
