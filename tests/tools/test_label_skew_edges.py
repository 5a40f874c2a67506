"""label_skew()'s documented sizes: n_k clipped to [min_examples, max_examples] training examples,
and min_examples // 4 (at least 1) held out per device, as synthetic() holds out."""

from __future__ import annotations

import numpy as np

from fedge.tools.bench.label_skew import label_skew


def test_every_device_trains_on_min_to_max_examples_and_holds_out_a_quarter_of_min():
    for min_examples, max_examples in ((20, 200), (40, 60), (3, 50)):
        data = label_skew(300, 0.5, min_examples=min_examples, max_examples=max_examples, seed=1)
        train = np.array([len(c.y_train) for c in data.clients])
        assert train.min() == min_examples and train.max() <= max_examples  # LogNormal(3.5, 1) draws some below
        assert {len(c.y_test) for c in data.clients} == {max(1, min_examples // 4)}
