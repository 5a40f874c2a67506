"""The loop's own decisions (coordinator/loop.py), on a stub coordinator and a manual clock: when
the next round may begin after a committed or an abandoned one (round_pause_s, and the
abandoned streak that a commit resets: backoff.abandoned_delay), min_devices exactly, a
LeadershipError that ends the loop instead of being dropped like one bad message, and a budget
refusal that ends the loop only with on_exhausted = "stop"."""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import nullcontext
from types import SimpleNamespace

import pytest

from fedge.coordinator.backoff import abandoned_delay
from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.dp.config import PrivacyConfig
from fedge.coordinator.leadership import FencedOut
from fedge.coordinator.loop import CoordinatorLoop
from fedge.edge_runtime.kernel.clock import ManualClock


class _Gauge:
    def set(self, value) -> None:
        self.value = value


class _Registry(list):
    def ineligible_reasons(self) -> Counter[str]:
        return Counter()

    def flush_refreshes(self, now: float) -> int:
        return 0


class Stub:
    """What CoordinatorLoop reads of a Coordinator; tick() hands out `records` one a tick."""

    def __init__(self, records=(), eligible=1, config=None, pump=None, refuse=None):
        self.clock, self.config = ManualClock(), config or CoordinatorConfig(abandon_backoff_s=1.0)
        self.transport, self.store = SimpleNamespace(connection_count=1), SimpleNamespace(burst=nullcontext)
        self.evaluations, self.round = SimpleNamespace(run=None), None
        self.shell = SimpleNamespace(unlisted=set())  # eligible devices selection leaves out (secagg/shell.py)
        self.privacy, self.registry = SimpleNamespace(exhausted=None), _Registry()
        self.metrics = SimpleNamespace(devices_needed=_Gauge(), rejected=lambda reason: None)
        self.rejections: Counter[str] = Counter()
        self.records, self.eligible, self.pumped, self.refuse = list(records), eligible, pump, refuse
        self.begun: list[float] = []

    def start(self) -> None:
        pass

    def eligible_devices(self) -> list[str]:
        return [f"d{i}" for i in range(self.eligible)]

    def begin_round(self) -> bool:
        if self.refuse is not None:
            self.privacy.exhausted = self.refuse
            return False
        self.begun.append(self.clock.now())
        self.round = "open"  # until a record closes it
        return True

    def pump(self, timeout) -> bool:
        if self.pumped is not None:
            self.pumped()
        self.clock.advance(timeout)
        return False

    def tick(self):
        if not self.records:
            return None
        self.closed_at, self.round = self.clock.now(), None  # when the loop saw the last record
        return self.records.pop(0)


def _record(committed: bool):
    return SimpleNamespace(committed=committed)


def _run(stub: Stub, ticks: int, **kwargs) -> CoordinatorLoop:
    """The loop over `ticks` polls of 0.05 s each, then stopped."""
    loop = CoordinatorLoop(stub, poll_s=0.05, **kwargs)
    polls = iter(range(ticks))
    loop.should_stop = lambda record: False
    stub.pumped = stub.pumped or (lambda: next(polls, None) is None and loop.stop())
    loop.run()
    return loop


def test_a_commit_resets_the_abandoned_streak():
    """abandoned, abandoned, committed, abandoned: the last waits abandoned_delay(1) = 1 s, not delay(3) = 4 s."""
    outcomes = [False, False, True, False]
    stub = Stub([_record(c) for c in outcomes])
    loop = _run(stub, 4)
    streak = 0
    for committed in outcomes:  # the rule as a plain loop
        streak = 0 if committed else streak + 1
    assert loop.abandoned_in_a_row == streak == 1
    assert loop.next_begin == pytest.approx(stub.closed_at + abandoned_delay(1, 1.0, 300.0)) == stub.closed_at + 1.0


def test_round_pause_spaces_out_a_committed_round():
    stub = Stub([_record(True)])
    loop = _run(stub, 1, round_pause_s=7.0)
    assert loop.next_begin == pytest.approx(stub.closed_at + 7.0)  # max(7.0, abandoned_delay(0) = 0)


def test_a_round_begins_at_exactly_min_devices_eligible():
    one_short, exactly = Stub(eligible=2), Stub(eligible=3)
    _run(one_short, 3, min_devices=3)
    _run(exactly, 3, min_devices=3)
    assert one_short.begun == [] and exactly.begun == [0.0]


def test_the_waiting_line_counts_devices_the_identity_directory_lacks(caplog):
    """Eligible devices missing from the coordinator's identity directory are never selected
    (secagg/shell.selectable): the line that says why no round begins counts them by reason."""
    caplog.set_level(logging.INFO, "fedge.coordinator")
    stub = Stub(eligible=1)
    stub.shell = SimpleNamespace(unlisted={"d7", "d8"})
    _run(stub, 2, min_devices=3)
    assert stub.begun == [] and stub.metrics.devices_needed.value == 2
    assert any("1 eligible (secagg_no_identity x2)" in r.getMessage() for r in caplog.records), caplog.text


def test_a_leader_fenced_out_while_handling_a_message_ends_the_loop():
    """A LeadershipError is not one message's fault: nothing this process does can be stored any more."""

    loop, pumps = None, []

    def fenced():
        pumps.append(1)
        if len(pumps) > 1:  # a loop that dropped it would go on: end it here, so the test ends too
            loop.stop()
            return
        raise FencedOut("a newer leader holds epoch 7")

    stub = Stub(pump=fenced)
    loop = CoordinatorLoop(stub, poll_s=0.05)
    with pytest.raises(FencedOut):
        loop.run()
    assert stub.rejections == Counter() and len(pumps) == 1


@pytest.mark.parametrize("on_exhausted, ends", [("stop", True), ("wait", False)])
def test_a_budget_refusal_ends_the_loop_only_when_on_exhausted_is_stop(on_exhausted, ends):
    privacy = PrivacyConfig(enabled=True, noise_multiplier=1.0, on_exhausted=on_exhausted)
    stub = Stub(config=CoordinatorConfig(privacy=privacy, aggregator="mean", weighting="equal"), refuse="spent")
    loop = _run(stub, 3)
    assert (loop.exhausted == "spent", loop.finishing) == (ends, ends)
