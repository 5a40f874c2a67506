"""Which Python allocations grow with the rounds: a coordinator (MemoryStore, as state_db = "")
and three real device agents on the in-memory broker (tests/coordinator/fleet.py), 20 rounds
of warm-up, then a tracemalloc snapshot diff over 120 more. Run from the repository root:

    .venv-test/bin/python benchmarks/results/2026-12-06-soak/tracemalloc_probe.py
"""

import gc
import pathlib
import sys
import tempfile
import tracemalloc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))

from tests.coordinator.fleet import make_fleet  # noqa: E402
from tests.tiny_model import build_tiny_model  # noqa: E402


def main() -> None:
    d = pathlib.Path(tempfile.mkdtemp())
    fleet = make_fleet(build_tiny_model(d / "art"), d, sizes=(6, 9, 7))
    c = fleet.coordinator

    def rounds(n: int) -> None:
        for _ in range(n):
            assert c.begin_round()
            fleet.drain()
            c.tick()
            fleet.drain()
            fleet.wire.clear()

    rounds(20)
    gc.collect()
    tracemalloc.start(25)
    before = tracemalloc.take_snapshot()
    rounds(120)
    gc.collect()
    after = tracemalloc.take_snapshot()
    print("model version", c.state.version, "records in Coordinator.history", len(c.history))
    for stat in after.compare_to(before, "traceback")[:8]:
        print(stat.size_diff, "bytes in", stat.count_diff, "blocks")
        print("\n".join(stat.traceback.format()[-6:]))


if __name__ == "__main__":
    main()
