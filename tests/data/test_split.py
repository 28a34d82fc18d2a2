"""The held-out split: deterministic, stable under corpus changes, duplicate-safe, share and count modes; keyed by
data.split_seed only (never `seed`), recorded, and checked against the split a cptlab-built base model was trained on."""

from __future__ import annotations

import json

import pytest

from cptlab.data.split import documents_sha256, leaks_from_base, split_documents
from cptlab.errors import CptlabError

DOCS = [f"document number {i} about topic {i % 7}" for i in range(2000)]


def test_deterministic_and_order_preserving():
    train, val = split_documents(DOCS, 0.1, seed=3)
    assert (train, val) == split_documents(list(DOCS), 0.1, seed=3)
    assert sorted(train + val) == sorted(DOCS)
    assert train == [d for d in DOCS if d in set(train)]
    assert val == [d for d in DOCS if d in set(val)]
    assert 150 <= len(val) <= 250  # ~10% of 2000
    assert split_documents(DOCS, 0.1, seed=4)[1] != val


def test_assignment_is_stable_when_documents_are_added_or_removed():
    _, val = split_documents(DOCS, 0.05, seed=0)
    extra = [f"unrelated new text {i}" for i in range(500)]
    train2, val2 = split_documents(extra[:250] + DOCS[::2] + extra[250:], 0.05, seed=0)
    kept = set(DOCS[::2])
    assert {d for d in val2 if d in kept} == {d for d in val if d in kept}
    assert not set(val) & set(d for d in train2 if d in kept)


def test_duplicates_land_on_one_side():
    docs = [f"doc {i % 50}" for i in range(1000)]  # every text 20 times, interleaved
    for heldout in (0.2, 7):
        train, val = split_documents(docs, heldout, seed=1)
        assert not set(train) & set(val)
        assert all(val.count(d) == 20 for d in set(val))


def test_count_mode_takes_the_smallest_hashes():
    train, val = split_documents(DOCS, 5, seed=0)
    assert len(val) == 5 and len(train) == len(DOCS) - 5
    # the 5 held out with 5 are among the 10 held out with 10 (smallest hashes first)
    assert set(val) <= set(split_documents(DOCS, 10, seed=0)[1])
    assert split_documents(DOCS, 5.0, seed=0)[1] == val  # an integral float from a config is a count


def test_share_mode_holds_out_at_least_one_document():
    train, val = split_documents(["a b c", "d e f"], 0.01)
    assert len(val) == 1 and len(train) == 1


@pytest.mark.parametrize("heldout", [0, 0.0, -1, 1.5, 1.0 + 1e-9, float("nan"), True, "0.1", None])
def test_invalid_heldout(heldout):
    with pytest.raises(CptlabError, match="heldout must be a share in \\(0, 1\\) or a document count >= 1"):
        split_documents(DOCS, heldout)


def test_a_side_would_be_empty():
    with pytest.raises(CptlabError, match="cannot hold out 3 documents from 3 documents \\(3 distinct\\)"):
        split_documents(["a", "b", "c"], 3)
    with pytest.raises(CptlabError, match="cannot hold out 1 documents from 4 documents \\(1 distinct\\)"):
        split_documents(["same"] * 4, 1)
    with pytest.raises(CptlabError, match="training side would be empty"):
        split_documents(["only one"], 0.5)


def test_documents_hash_tells_held_out_sets_apart():
    _, val = split_documents(DOCS, 0.1, seed=0)
    assert documents_sha256(val) == documents_sha256(list(val))
    assert documents_sha256(val) != documents_sha256(split_documents(DOCS, 0.1, seed=1)[1])
    assert documents_sha256(["ab", "c"]) != documents_sha256(["a", "bc"])  # length-prefixed: no ambiguity


def split(seed, heldout, sources=("demo:en",), max_docs=None, name="en"):
    return {"split_seed": seed, "domains": {name: {"sources": list(sources), "heldout": heldout, "max_docs": max_docs}}}


def test_a_run_may_hold_out_what_the_base_held_out_or_less():
    base = split(0, 0.03)
    assert leaks_from_base(base, split(0, 0.03)) is None
    assert leaks_from_base(base, split(0, 0.02)) is None  # same seed, smaller share: a subset of the base's
    assert leaks_from_base(base, split(0, 0.05, sources=("other.txt",))) is None  # no shared source
    assert leaks_from_base(split(0, 20), split(0, 10)) is None  # counts on the same documents


def test_the_nesting_the_rule_relies_on():
    # Same seed: a smaller share holds out a subset of a larger one, also when the corpus is capped differently.
    small = set(split_documents(DOCS[:1500], 0.05, seed=2)[1])
    large = set(split_documents(DOCS, 0.1, seed=2)[1])
    assert small and small <= large


def test_a_run_that_would_score_documents_the_base_trained_on_is_refused():
    base = split(0, 0.03)
    reason = leaks_from_base(base, split(1, 0.03), base_dir="/cache/demo_base")
    assert reason == ("data.domains.en shares demo:en with domain 'en' of /cache/demo_base, which was split with "
                      "data.split_seed=0, this run with data.split_seed=1: its held-out documents would include ones "
                      "the base trained on; set data.split_seed=0")
    assert "\n" not in reason
    assert "set data.domains.en.heldout <= 0.03" in leaks_from_base(base, split(0, 0.05))
    # Another domain name and extra sources: still the shared source that counts.
    assert leaks_from_base(base, split(1, 0.03, sources=("demo:en", "mine.txt"), name="old")) is not None
    assert leaks_from_base(split(0, 10), split(0, 20)) is not None


def test_split_seed_keys_the_split_and_seed_does_not(compose_cfg):
    from cptlab.run import pipeline
    from cptlab.run.plan_values import data_plan_of

    base = ["model=tiny", "tokenizer=train", "data=demo_zh"]
    cfg0, cfg1 = compose_cfg(base + ["seed=0"]), compose_cfg(base + ["seed=1"])
    assert cfg0.data.split_seed == 0
    data0, data1 = data_plan_of(cfg0), data_plan_of(cfg1)
    assert pipeline._train_docs_key(data0) == pipeline._train_docs_key(data1)  # tokenizer and token caches shared
    assert pipeline.split_record(data0) == pipeline.split_record(data1)
    other = data_plan_of(compose_cfg(base + ["data.split_seed=5"]))
    assert pipeline._train_docs_key(other) != pipeline._train_docs_key(data0)
    assert pipeline.split_record(other)["split_seed"] == 5
    assert pipeline.split_record(other)["domains"]["en"] == {"sources": ["demo:en"], "heldout": 0.03, "max_docs": None}


def test_continuing_from_a_cptlab_base_checks_its_split(compose_cfg, tmp_path):
    from cptlab.errors import CptlabError
    from cptlab.model.save import SPLIT_FILE
    from cptlab.run import pipeline
    from cptlab.run.plan_values import parts_of

    base_dir = tmp_path / "base"
    base_dir.mkdir()
    overrides = ["model=hf", f"model.name_or_path={base_dir}", "data=demo_zh"]
    pipeline.check_base_split(parts_of(compose_cfg(overrides + ["data.split_seed=3"])))  # no record: nothing to check
    (base_dir / SPLIT_FILE).write_text(json.dumps(split(0, 0.03)))
    pipeline.check_base_split(parts_of(compose_cfg(overrides)))
    with pytest.raises(CptlabError, match=r"^data.domains.en shares demo:en .* set data.split_seed=0$"):
        pipeline.check_base_split(parts_of(compose_cfg(overrides + ["data.split_seed=3"])))
    with pytest.raises(CptlabError, match="set data.domains.en.heldout <= 0.03"):
        pipeline.check_base_split(parts_of(compose_cfg(overrides + ["data.domains.en.heldout=0.1"])))
    (base_dir / SPLIT_FILE).write_text("{not json")
    with pytest.raises(CptlabError, match="unreadable"):
        pipeline.check_base_split(parts_of(compose_cfg(overrides)))


def test_a_published_model_carries_its_split(tmp_path):
    from cptlab.model.load import load_model
    from cptlab.model.save import SPLIT_FILE, publish_model

    model = load_model(None, config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                     "num_attention_heads": 2, "num_key_value_heads": 1}, dtype="float32",
                       vocab_size=64)
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_text("{}")
    record = split(0, 0.03)
    out = publish_model(model, tokenizer, tmp_path / "published", record)
    assert json.loads((out / SPLIT_FILE).read_text()) == record
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()


# -- evaluation-only domains (role eval) -------------------------------------------------------------------------


def _eval_domains(tmp_path, tokenizer_dir, train_lines, eval_lines, *, seed=0):
    from cptlab.data.tokens import DomainSpec, prepare_domain

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "train.txt").write_text("\n".join(train_lines) + "\n", encoding="utf-8")
    (tmp_path / "probe.txt").write_text("\n".join(eval_lines) + "\n", encoding="utf-8")
    specs = [DomainSpec("zh", "new", (str(tmp_path / "train.txt"),), heldout=0.1),
             DomainSpec("probe", "eval", (str(tmp_path / "probe.txt"),), heldout=0.1)]
    return [prepare_domain(s, tokenizer_dir, tmp_path / "cache", seed=seed) for s in specs]


def test_an_eval_domain_holds_out_every_document_in_order(tmp_path, tokenizer_dir):
    from cptlab.data.split import check_eval_overlap
    from cptlab.data.tokens import DomainSpec, train_documents

    lines = [f"the cat sat on the mat {i}." for i in range(50)]
    zh, probe = _eval_domains(tmp_path, tokenizer_dir, DOCS[:300], lines)
    assert probe.role == "eval" and probe.n_train_tokens == 0 and probe.n_train_docs == 0
    assert probe.n_val_docs == 50 and probe.heldout_texts() == lines  # every document, in corpus order
    assert zh.n_train_docs > 0 and zh.n_val_docs > 0  # a training domain is split as before
    check_eval_overlap([zh, probe], seed=0)  # disjoint: passes
    # nothing of it trains a tokenizer either
    assert list(train_documents(DomainSpec("probe", "eval", (str(tmp_path / "probe.txt"),)))) == []


def test_an_eval_domain_sharing_documents_with_a_training_domain_is_refused(tmp_path, tokenizer_dir):
    from cptlab.data.split import check_eval_overlap, doc_hash, share_threshold

    trained = [d for d in DOCS[:300] if doc_hash(d, 0) >= share_threshold(0.1)]  # on the training side of zh
    zh, probe = _eval_domains(tmp_path, tokenizer_dir, DOCS[:300], [f"unseen line {i}." for i in range(20)]
                              + trained[:3])
    with pytest.raises(CptlabError, match=r"data.domains.probe: 3 of its 23 documents are training documents "
                                          r"of domain 'zh' \(role new\), e\.g\. \"document number"):
        check_eval_overlap([zh, probe], seed=0)
    held = [d for d in DOCS[:300] if doc_hash(d, 0) < share_threshold(0.1)]  # zh's held-out side: not trained on
    zh, probe = _eval_domains(tmp_path / "b", tokenizer_dir, DOCS[:300], held[:3] + ["another line."])
    check_eval_overlap([zh, probe], seed=0)


def test_an_eval_domain_reading_a_training_source_is_refused_before_any_reading(tmp_path):
    from cptlab.data.split import check_eval_sources

    (tmp_path / "d").mkdir()
    text = tmp_path / "d" / "a.txt"
    text.write_text("x\n", encoding="utf-8")
    check_eval_sources({"zh": ("new", ["demo:zh"]), "en": ("replay", ["demo:en"]), "probe": ("eval", ["demo:en_eval"])})
    with pytest.raises(CptlabError, match=r"data.domains.probe.sources: demo:en is also read by domain 'en' "
                                          r"\(role replay; demo:en\)"):
        check_eval_sources({"en": ("replay", ["demo:en"]), "probe": ("eval", ["demo:en"])})
    for alias in (str(tmp_path / "d" / ".." / "d" / "a.txt"), str(tmp_path / "d" / "*.txt")):  # the same file
        with pytest.raises(CptlabError, match="also read by domain 'zh' .role new"):
            check_eval_sources({"zh": ("new", [str(tmp_path / "d")]), "probe": ("eval", [alias])})
