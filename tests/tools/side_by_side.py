"""Independent simulations side by side, for the slow end-to-end tests.

A simulation is single-threaded (ONNX Runtime sessions get one intra-op thread:
edge_runtime/trainer/portable.py), so on CI's 2 cores a test that runs several of them one
after another leaves a core idle. SideBySide runs them in spawned worker processes, two at a
time, as `fedge bench` runs its jobs (spawn: a worker starts clean, with no ONNX Runtime state
copied from the parent). Each run is the same call with the same config: its results do not
depend on where it ran. The workers are kept between calls (each costs about 2 s of imports to
start) and terminated as soon as a call fails or is interrupted (an assertion in a worker, a
pytest-timeout), so a hung run cannot hold the next test's workers.
"""

from __future__ import annotations

import multiprocessing

WORKERS = 2  # CI's cores


class SideBySide:
    """run(fn, [args, ...]) -> [fn(*args), ...], in the order given; fn must be importable (a
    module-level function). Calls are handed out in order: put the long ones first."""

    def __init__(self) -> None:
        self._pool = None

    def __call__(self, fn, calls: list[tuple]) -> list:
        if self._pool is None:
            self._pool = multiprocessing.get_context("spawn").Pool(WORKERS)
        try:
            return self._pool.starmap(fn, calls, chunksize=1)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
