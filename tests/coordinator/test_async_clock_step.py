"""A coordinator whose wall clock stepped back while it was down (a board without a real-time
clock restarts on fake-hwclock's last saved time, before NTP; a VM restored from a snapshot)
restores each task in flight at its stored wall deadline minus the wall time now, so every
second the clock stepped back was added to the task's life. A task on an older model version
is never resent (its params are gone), so a device that lost one held its concurrency slot
for the whole step, not for round_deadline_s. No task can have more than round_deadline_s
left: it had that much when it left."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.clock import ManualClock
from tests.coordinator.fleet import ManualDevice, make_fleet, random_delta
from tests.coordinator.test_async_server import _fleet, _send
from tests.tiny_model import build_tiny_model

DAY = 86_400.0


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


class SteppedClock(ManualClock):
    """The same monotonic time; the wall clock `step` seconds off (negative: stepped back)."""

    def __init__(self, clock: ManualClock, step: float):
        super().__init__(clock.t)
        self.step = step

    def wall(self) -> float:
        return super().wall() + self.step


@pytest.mark.parametrize("step", [-DAY, -1.0])
def test_a_wall_clock_stepped_back_over_a_restart_does_not_lengthen_the_tasks_in_flight(model, tmp_path, step):
    db = tmp_path / "state.db"
    fleet, (lost, answers) = _fleet(model, tmp_path, 2, store=RoundStore(db), buffer_size=1, max_staleness=5)
    c = fleet.coordinator
    deadline_s = c.config.round_deadline_s
    _send(fleet, answers, random_delta(c.shapes, np.random.default_rng(0)))  # K = 1: v1; `lost` holds a v0 task
    assert c.state.version == 1 and c.machine.flight(lost.id).base_version == 0
    fleet.clock.advance(10.0)
    fleet.clock = SteppedClock(fleet.clock, step)
    again = fleet.restart(store=RoundStore(db))
    left = again.machine.flight(lost.id).deadline - fleet.clock.now()
    # a step smaller than the time the task had used still leaves it its own deadline, no more
    assert left == pytest.approx(min(deadline_s, deadline_s - 10.0 - step))
    assert left <= deadline_s
    assert again.round.started <= fleet.clock.now()  # the open buffer did not start in the future either
    fleet.clock.advance(deadline_s)  # one deadline later the slot is free for `lost` again, as without the step
    again.tick()
    assert again.machine.flight(lost.id) is None


def test_a_sync_round_resumed_after_the_wall_clock_stepped_back_keeps_its_own_deadline(model, tmp_path):
    """The sync round's resume (restart.py) did the same: its deadline moved a day out, so a round
    short of its quorum waited a day to be abandoned, not round_deadline_s."""
    db = tmp_path / "state.db"
    fleet = make_fleet(model, tmp_path, clients_per_round=2, store=RoundStore(db))
    for i in range(2):
        ManualDevice(fleet, f"m{i}", 10)
    fleet.drain()
    assert fleet.coordinator.begin_round()
    deadline_s = fleet.coordinator.config.round_deadline_s
    fleet.clock.advance(10.0)
    fleet.clock = SteppedClock(fleet.clock, -DAY)
    again = fleet.restart(store=RoundStore(db))
    assert again.round.machine.deadline - fleet.clock.now() == pytest.approx(deadline_s)
    assert fleet.clock.now() - again.round.started == pytest.approx(0.0)  # not started a day from now
