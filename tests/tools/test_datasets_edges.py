"""tools/datasets.py at its documented limits: at most n // 2 devices, a held-out split of
round(test_fraction * n), shards that cover every label exactly, and a data file's package found
by importlib.util.find_spec that turns out to be a plain module (found by the mutation7-simfleet
audit)."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.edge_runtime.kernel.errors import DatasetError
from fedge.tools.datasets import _check_split_args, _shipped_file, build_federated, stratified_holdout


def test_at_most_half_as_many_devices_as_examples():
    _check_split_args("digits", 1797, 898, "iid", 0.1, 2)  # 1797 // 2: each device can hold 2
    with pytest.raises(DatasetError, match="at most 898 devices"):
        _check_split_args("digits", 1797, 899, "iid", 0.1, 2)


@pytest.mark.parametrize("n, fraction", [(10, 0.35), (5, 0.3), (20, 0.2), (9, 0.5)])
def test_the_held_out_split_is_the_rounded_share(n, fraction):
    """round(test_fraction * n) examples, here where rounding and truncation differ (3.5 -> 4, 1.5 -> 2)."""
    y = np.zeros(n, np.int64)  # one label: every example but one can be held out
    test, train = stratified_holdout(y, fraction, np.random.default_rng(0))
    assert len(test) == round(fraction * n) and len(train) == n - round(fraction * n)
    assert sorted([*test, *train]) == list(range(n))


def test_shards_that_cover_every_label_exactly_are_taken():
    data = build_federated("digits", 5, "shards", 0, classes_per_client=2)  # 5 x 2 = digits' 10 labels
    assert len(data.clients) == 5
    assert all(len(np.unique(c.y_train)) <= 2 for c in data.clients)
    with pytest.raises(DatasetError, match="cover 8 of"):
        build_federated("digits", 4, "shards", 0, classes_per_client=2)


def test_a_data_package_that_is_a_plain_module_is_a_named_error():
    with pytest.raises(DatasetError, match="not installed"):
        _shipped_file("string", "data/x.csv.gz", "string")  # a module, not a package: no folder to look in
