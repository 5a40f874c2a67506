"""clip_scale (coordinator/robust/clipping.py), min(1, tau / norm) with 1 at norm 0, against
values worked by hand, with numpy's warnings raised as errors: tau = inf over a norm of inf
once computed an unused inf / inf (its result discarded, its RuntimeWarning printed)."""

import math
import warnings

import numpy as np

from fedge.coordinator.robust.clipping import clip_scale


def test_clip_scale_by_hand_without_a_numpy_warning():
    norms = np.array([math.inf, 0.0, 2.0, 5.0, 4.0])
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        assert clip_scale(norms, math.inf).tolist() == [1.0, 1.0, 1.0, 1.0, 1.0]
        assert clip_scale(norms, 4.0).tolist() == [0.0, 1.0, 1.0, 0.8, 1.0]  # 4 / 5; a norm at tau is kept
