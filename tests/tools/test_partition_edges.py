"""Partitioners exactly at their documented limits (tools/partition.py): splits that fit with
nothing to spare are given, not refused; the Dirichlet's lowered min_size is the documented one."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fedge.tools.partition import dirichlet_label_skew, dirichlet_per_client, quantity_skew, shards

FALLBACK = "drawing each client's label mix"


def _labels(parts, y):
    return [sorted(set(y[p].tolist())) for p in parts]


def test_a_dirichlet_draw_with_every_client_at_exactly_min_size_is_taken(caplog):
    # 4 examples over 2 clients at min_size 2: only a 2 / 2 draw fits, and the per-class draw finds it
    y = np.array([0, 0, 1, 1])
    with caplog.at_level(logging.WARNING, logger="fedge.partition"):
        parts = dirichlet_label_skew(y, 2, 1.0, np.random.default_rng(0), min_size=2)
    assert [len(p) for p in parts] == [2, 2] and FALLBACK not in caplog.text


def test_dirichlet_lowers_min_size_to_a_tenth_of_the_average_share_and_says_so(caplog):
    # 2,000 examples over 100 clients: a tenth of the average share is 2000 // (10 x 100) = 2. At
    # alpha 0.01 no per-class draw fits, and the warning names the min_size it looked for.
    y = np.random.default_rng(123).permutation(np.repeat(np.arange(2), 1000))
    with caplog.at_level(logging.WARNING, logger="fedge.partition"):
        parts = dirichlet_label_skew(y, 100, 0.01, np.random.default_rng(0), min_size=10)
    assert "every one of 100 clients >= 2 examples" in caplog.text
    assert {len(p) for p in parts} == {20}


def test_per_client_dirichlet_gives_min_size_when_it_is_exactly_the_even_share():
    y = np.repeat(np.arange(4), 5)  # 20 examples, 10 clients: 2 each, the most any split can give
    parts = dirichlet_per_client(y, 10, 0.5, np.random.default_rng(0), min_size=2)
    assert [len(p) for p in parts] == [2] * 10
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(20))
    with pytest.raises(ValueError, match="cannot give each of 10 clients 3"):
        dirichlet_per_client(y, 10, 0.5, np.random.default_rng(0), min_size=3)


def test_shards_as_many_as_examples_give_one_example_each():
    y = np.repeat(np.arange(5), 2)  # 10 examples, 5 clients x 2 shards = 10 shards
    parts = shards(y, 5, 2, np.random.default_rng(0))
    assert [len(p) for p in parts] == [2] * 5 and all(len(labels) == 2 for labels in _labels(parts, y))
    with pytest.raises(ValueError, match="15 shards but only 10 examples"):
        shards(y, 5, 3, np.random.default_rng(0))


def test_shards_where_each_class_reaches_every_client_exactly():
    # 2 classes of 10 over 10 clients x 2 labels: each class gives one shard to each client, 20 in all
    y = np.repeat([0, 1], 10)
    parts = shards(y, 10, 2, np.random.default_rng(0))
    assert _labels(parts, y) == [[0, 1]] * 10


@pytest.mark.parametrize("seed", range(5))
def test_shards_as_many_as_classes_keep_whole_classes_on_unequal_sizes(seed):
    # 4 classes of 1, 5, 2 and 4 examples over 2 clients x 2 shards: a shard is a whole class.
    # Cut as the label-sorted array (for fewer shards than classes) the shards would straddle them.
    y = np.repeat(np.arange(4), [1, 5, 2, 4])
    parts = shards(y, 2, 2, np.random.default_rng(seed))
    assert [len(labels) for labels in _labels(parts, y)] == [2, 2]
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(12))


@pytest.mark.parametrize("seed", range(10))
def test_quantity_skew_with_exactly_min_size_each_gives_min_size_each(seed):
    parts = quantity_skew(30, 3, np.random.default_rng(seed), min_size=10)
    assert [len(p) for p in parts] == [10, 10, 10]
