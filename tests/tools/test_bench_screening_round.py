"""`fedge bench screening`'s synthetic round: a share `flipped` of k updates, rounded to the
nearest count, are sign-flipped copies of the honest direction, and they come first."""

from __future__ import annotations

import numpy as np

from fedge.tools.bench.screening import _round


def _flipped(rows: list[dict]) -> list[bool]:
    """Which rows point against the last one (always honest here): the noise is as large as the
    direction per entry, but over 2,000 entries the sign of the dot product is clear."""
    honest = np.concatenate([v.ravel() for v in rows[-1].values()])
    return [float(np.concatenate([v.ravel() for v in r.values()]) @ honest) < 0 for r in rows]


def test_the_first_round_of_share_times_k_updates_are_flipped():
    shapes = {"w": (40, 25), "b": (1000,)}
    for k, share in ((10, 0.28), (5, 0.2), (4, 0.0), (7, 0.43)):
        want = int(np.rint(share * k))  # 2.8 -> 3, 1.0 -> 1, 0 -> 0, 3.01 -> 3
        rows = _round(k, share, shapes, np.random.default_rng(k))
        assert len(rows) == k and all(r["w"].shape == (40, 25) and r["w"].dtype == np.float32 for r in rows)
        assert _flipped(rows) == [i < want for i in range(k)], (k, share)
