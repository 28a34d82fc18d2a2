"""The keyed block order (cptlab.data.bijection): every block exactly once per epoch, a new order per key,
a pure function of (n, key), O(1) state."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from cptlab.data.bijection import KeyedPermutation


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 16, 17, 100, 1000, 4097, 65_537, 1_000_003])
def test_every_block_exactly_once_per_epoch(n):
    perm = KeyedPermutation(n, (0, 1, 2))
    image = perm(np.arange(n))
    assert image.dtype == np.int64 and image.min() >= 0 and image.max() < n
    assert np.array_equal(np.sort(image), np.arange(n))  # a bijection on [0, n)


def test_a_new_order_per_key_and_the_same_for_the_same_key():
    n = 10_000
    a = KeyedPermutation(n, (0, 0, 0))(np.arange(n))
    assert np.array_equal(a, KeyedPermutation(n, (0, 0, 0))(np.arange(n)))  # pure function of (n, key)
    for key in [(0, 0, 1), (1, 0, 0), (0, 1, 0)]:  # another epoch, seed or domain
        b = KeyedPermutation(n, key)(np.arange(n))
        assert np.mean(a == b) < 0.01
    # Shuffled, not a near-identity: positions and blocks are uncorrelated.
    assert abs(np.corrcoef(np.arange(n), a)[0, 1]) < 0.05


def test_per_index_calls_agree_with_the_whole_epoch_and_hold_no_table():
    n = 50_000
    perm = KeyedPermutation(n, (3, 1, 4))
    whole = perm(np.arange(n))
    picks = np.array([0, 1, 17, n // 2, n - 1])
    assert np.array_equal(perm(picks), whole[picks])
    assert perm(17) == whole[17] and isinstance(perm(17), int)
    # every scalar, those whose first pass falls outside [0, n) (cycle walking) included
    small = KeyedPermutation(5, (2, 7, 1))
    assert [small(i) for i in range(5)] == list(small(np.arange(5)))
    assert small(np.arange(4).reshape(2, 2)).shape == (2, 2)
    # O(1) memory: the object holds its round keys and a few numbers, whatever n.
    huge = KeyedPermutation(10**13, (0, 0, 0))
    assert huge.keys.nbytes == KeyedPermutation(10, (0, 0, 0)).keys.nbytes
    assert sys.getsizeof(huge.__dict__) < 1000 and 0 <= huge(10**13 - 1) < 10**13


def test_positions_outside_the_epoch_are_refused():
    perm = KeyedPermutation(10, (0,))
    with pytest.raises(IndexError):
        perm(np.array([10]))
    with pytest.raises(ValueError):
        KeyedPermutation(0, (0,))
