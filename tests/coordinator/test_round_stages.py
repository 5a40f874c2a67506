"""The round table's seam is real: a second, two-stage protocol driven through the same
machine by a toy shell (commit-then-reveal: stage 1 asks every selected device for a hash
commitment, stage 2 asks only those who committed to reveal their value). Each stage has
its own deadline and quorum; devices drop out between them."""

from __future__ import annotations

import hashlib

import pytest

from fedge.coordinator.rounds import (
    Abandon,
    Aggregate,
    Commit,
    Committed,
    Declined,
    Limits,
    Phase,
    Replied,
    Send,
    Stage,
    Tick,
    on_event,
    start,
)

COMMIT_REVEAL = (Stage("commit", request="CommitRequest", reply="Commitment"),
                 Stage("reveal", request="RevealRequest", reply="Reveal"))
DEVICES = ("d0", "d1", "d2", "d3", "d4")
VALUES = {"d0": 3, "d1": 5, "d2": 7, "d3": 11, "d4": 13}


def _digest(value: int) -> str:
    return hashlib.sha256(str(value).encode()).hexdigest()


class ToyShell:
    """Executes the machine's actions the way the coordinator does, for this protocol: it
    records what it sends, keeps commitments and reveals, and sums the honest reveals."""

    def __init__(self, limits: tuple[Limits, ...], now: float = 0.0):
        self.machine, actions = start(1, COMMIT_REVEAL, limits, DEVICES, now)
        self.sent: list[Send] = []
        self.commitments: dict[str, str] = {}
        self.reveals: dict[str, int] = {}
        self.total: int | None = None
        self.abandoned = ""
        self.run(actions)

    def run(self, actions) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.sent.append(action)
            elif isinstance(action, Aggregate):
                self.total = sum(v for d, v in self.reveals.items() if _digest(v) == self.commitments[d])
            elif isinstance(action, Commit):
                self.machine, _ = on_event(self.machine, Committed())
            elif isinstance(action, Abandon):
                self.abandoned = action.why

    def reply(self, device: str) -> bool:
        """A device answers the current stage; False when the machine does not expect it."""
        if not self.machine.expects(device):
            return False
        if self.machine.stages[self.machine.stage].name == "commit":
            self.commitments[device] = _digest(VALUES[device])
        else:
            self.reveals[device] = VALUES[device]
        self.machine, actions = on_event(self.machine, Replied(device))
        self.run(actions)
        return True

    def decline(self, device: str, why: str = "battery_low") -> None:
        self.machine, actions = on_event(self.machine, Declined(device, why))
        self.run(actions)

    def tick(self, now: float) -> None:
        self.machine, actions = on_event(self.machine, Tick(now))
        self.run(actions)


def test_a_round_survives_dropouts_between_stages_and_each_stage_keeps_its_own_deadline():
    shell = ToyShell((Limits(target=5, quorum=3, window_s=10.0), Limits(target=5, quorum=2, window_s=5.0)))
    assert shell.sent == [Send("commit", DEVICES)]
    for d in ("d0", "d1", "d2", "d3"):  # d4 stays silent
        assert shell.reply(d)
    shell.tick(9.99)
    assert shell.machine.stage == 0 and len(shell.sent) == 1  # stage 1 waits for its own deadline
    shell.tick(10.0)
    # Stage 2 asks only those who answered stage 1, with a deadline counted from now.
    assert shell.sent[-1] == Send("reveal", ("d0", "d1", "d2", "d3"))
    assert shell.machine.stage == 1 and shell.machine.deadline == 15.0 and shell.machine.quorum == 2
    assert not shell.reply("d4")  # a late commitment is not a reveal, and d4 was never asked
    assert shell.reply("d0") and shell.reply("d2")
    shell.decline("d3")  # dropped out between the stages
    # d1 drops out silently: the stage is still open, 3 of 4 could still be reached
    assert shell.machine.phase == Phase.TRAINING and shell.machine.outstanding == 1
    shell.tick(14.99)
    assert shell.total is None
    shell.tick(15.0)
    assert shell.machine.phase == Phase.COMMITTED and shell.machine.why == "deadline with 2 reports"
    assert shell.total == VALUES["d0"] + VALUES["d2"]
    assert shell.machine.reported == ["d0", "d2"] and shell.machine.declined == {"d3": "battery_low"}


def test_a_full_stage_advances_at_the_next_tick_without_waiting_for_its_deadline():
    shell = ToyShell((Limits(target=3, quorum=3, window_s=10.0), Limits(target=3, quorum=3, window_s=4.0)),
                     now=100.0)
    assert shell.machine.deadline == 110.0
    for d in ("d4", "d1", "d0"):
        assert shell.reply(d)
    assert not shell.reply("d2")  # the stage is full: no more commitments
    shell.tick(101.0)
    assert shell.sent[-1] == Send("reveal", ("d4", "d1", "d0")) and shell.machine.deadline == 105.0
    for d in ("d4", "d1", "d0"):
        assert shell.reply(d)
    assert shell.machine.phase == Phase.AGGREGATING  # the last stage is full: the round is done
    shell.tick(101.5)
    assert shell.total == VALUES["d4"] + VALUES["d1"] + VALUES["d0"] and shell.machine.phase == Phase.COMMITTED


def test_dropouts_that_leave_the_next_stage_short_of_its_quorum_abandon_the_round():
    # Stage 1 commits at its deadline with 2 (its quorum), but stage 2 needs 3.
    shell = ToyShell((Limits(target=5, quorum=2, window_s=10.0), Limits(target=5, quorum=3, window_s=5.0)))
    shell.reply("d0")
    shell.reply("d1")
    shell.tick(10.0)
    assert shell.machine.phase == Phase.ABANDONED and "out of reach" in shell.abandoned
    assert shell.sent == [Send("commit", DEVICES)]  # nobody was asked to reveal
    assert shell.total is None


def test_declines_in_the_second_stage_abandon_it_before_its_deadline():
    shell = ToyShell((Limits(target=5, quorum=3, window_s=10.0), Limits(target=4, quorum=3, window_s=5.0)))
    for d in ("d0", "d1", "d2", "d3"):
        shell.reply(d)
    shell.tick(10.0)
    shell.reply("d0")
    shell.decline("d1")
    assert shell.machine.phase == Phase.TRAINING
    shell.decline("d2")  # 1 reveal + 1 outstanding < 3
    assert shell.machine.phase == Phase.ABANDONED
    shell.tick(11.0)  # the shell closes it at its next tick, well before 15 s
    assert "quorum 3 out of reach" in shell.abandoned and shell.total is None
    assert shell.abandoned.endswith("at the reveal stage")  # which stage's quorum: a secure round has four


def test_stage_limits_are_checked():
    with pytest.raises(ValueError):  # one Limits per Stage
        start(1, COMMIT_REVEAL, (Limits(2, 1, 1.0),), DEVICES, 0.0)
    with pytest.raises(ValueError):  # stage 2 quorum above its target
        start(1, COMMIT_REVEAL, (Limits(2, 1, 1.0), Limits(1, 2, 1.0)), DEVICES, 0.0)
    with pytest.raises(ValueError):  # a later stage without a window
        start(1, COMMIT_REVEAL, (Limits(2, 1, 1.0), Limits(2, 1, 0.0)), DEVICES, 0.0)


def test_a_later_stage_quorum_set_once_known_decides_that_stage():
    from fedge.coordinator.rounds import with_quorum

    m, _ = start(1, COMMIT_REVEAL, (Limits(5, 2, 10.0), Limits(5, 2, 10.0)), DEVICES, 0.0)
    with pytest.raises(ValueError):
        with_quorum(m, 0, 3)  # the open stage keeps its own
    m = with_quorum(m, 1, 4)
    for d in DEVICES[:3]:
        m, _ = on_event(m, Replied(d))
    m, actions = on_event(m, Tick(11.0))  # 3 committed: the reveal stage cannot reach 4
    assert m.phase == Phase.ABANDONED and "quorum 4 out of reach" in m.why
    assert isinstance(actions[0], Abandon)
