"""The held-out split: deterministic, stable under corpus changes, duplicate-safe, share and count modes."""

from __future__ import annotations

import pytest

from cptlab.data.split import split_documents
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
