"""A round as a transition table: (machine, event) -> (machine, actions). No I/O, no clock.

A round is a sequence of stages. Each stage sends one request to a set of devices and
counts one kind of reply, with its own target (replies that end the stage early), quorum
(replies it needs at its deadline) and window (its deadline, counted from its start). The
first stage asks every selected device; each later stage asks only the devices that
answered the one before, so a device that drops out between stages is simply not asked
again, and the next stage's quorum decides whether the round survives it.

Today's synchronous round is the one-stage case (SYNC); secure aggregation is four stages
(advertise keys, share keys, masked input, unmask: coordinator/secagg/stages.py's SECAGG).
A later stage's target is capped at the devices it asks, so it ends as soon as all answered.

    phase      event                            next                        actions
    training   Replied (target reached)         stage full / aggregating    -
    training   Replied (all answered, quorum)   stage full / aggregating    -
    training   Declined (quorum out of reach)   abandoned                   Pace
    training   Declined (all answered)          stage full / aggregating    Pace
    training   Declined (otherwise)             training                    Pace
    training   Tick, stage full or deadline     next stage                  Send(next stage, answered)
               with replies >= quorum           (last stage: aggregating)   (Aggregate, Commit)
    training   Tick, deadline, < quorum         abandoned                   Abandon(why)
    aggregating Tick                            aggregating                 Aggregate, Commit
    aggregating Committed                       committed                   -
    abandoned  Tick                             abandoned                   Abandon(why)
    any open   Stopped(why)                     abandoned                   Abandon(why)

Replies and declines only count; only a Tick moves a round to its next stage or closes it.
So the loop that owns the clock decides when, and a reply's Ack leaves before its round
closes. Aggregate and Commit are repeated on every Tick until the shell reports Committed,
so a commit that failed (a full disk) is retried, never half-done. "Stage full" for the last
stage is the phase `aggregating`: a reply after it is not expected, as in any closed stage.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

DECLINED = "declined"  # the pace reason after a decline (pace.py imports it from here)


class Phase(str, Enum):
    TRAINING = "training"  # collecting the current stage's replies (sync rounds: training)
    AGGREGATING = "aggregating"
    COMMITTED = "committed"
    ABANDONED = "abandoned"


@dataclass(frozen=True)
class Stage:
    """One exchange of a round: `request` goes out, `reply` is counted. The names say which
    config field sets its limits; the coordinator resolves them into Limits when it opens
    a round (the machine sees only numbers)."""

    name: str
    request: str = ""  # message type sent to the devices (e.g. "TrainTask")
    reply: str = ""  # message type counted as a reply (e.g. "Update")
    target: str = ""  # config field giving the target
    quorum: str = ""  # config field giving the quorum


@dataclass(frozen=True)
class Limits:
    target: int  # replies that end the stage before its deadline
    quorum: int  # replies the stage needs at its deadline
    window_s: float  # seconds from the stage's start to its deadline


SYNC = (Stage("train", request="TrainTask", reply="Update", target="clients_per_round", quorum="min_reports"),)


# ------------------------------------------------------------------ events and actions

@dataclass(frozen=True)
class Replied:
    device_id: str


@dataclass(frozen=True)
class Declined:
    device_id: str
    reason: str


@dataclass(frozen=True)
class Tick:
    now: float  # clock seconds


@dataclass(frozen=True)
class Stopped:
    why: str


@dataclass(frozen=True)
class Committed:
    pass


Event = Replied | Declined | Tick | Stopped | Committed


@dataclass(frozen=True)
class Send:
    stage: str
    devices: tuple[str, ...]


@dataclass(frozen=True)
class Aggregate:
    pass


@dataclass(frozen=True)
class Commit:
    pass


@dataclass(frozen=True)
class Abandon:
    why: str


@dataclass(frozen=True)
class Pace:
    device_id: str
    reason: str
    cause: str = ""  # the device's own reason (a decline's), which sets how soon it may retry (pace.py)


Action = Send | Aggregate | Commit | Abandon | Pace


# ------------------------------------------------------------------ the machine

@dataclass(frozen=True)
class RoundMachine:
    """A round's state. Build it with `start`; advance it only with `on_event`."""

    round_id: int
    stages: tuple[Stage, ...]
    limits: tuple[Limits, ...]
    selected: tuple[str, ...]
    deadline: float  # clock seconds: the current stage's deadline
    stage: int = 0  # index into stages
    asked: tuple[str, ...] = ()  # devices the current stage asked
    replies: tuple[tuple[str, ...], ...] = ((),)  # per stage so far, in arrival order
    declines: tuple[tuple[str, str], ...] = ()  # (device, reason) over the whole round
    stage_full: bool = False  # the current (not last) stage may advance at the next Tick
    phase: Phase = Phase.TRAINING
    why: str = ""

    @property
    def reported(self) -> list[str]:
        """Replies to the current stage (the last stage's are the ones aggregated)."""
        return list(self.replies[self.stage])

    @property
    def declined(self) -> dict[str, str]:
        return dict(self.declines)

    @property
    def target(self) -> int:
        return self.limits[self.stage].target

    @property
    def quorum(self) -> int:
        return self.limits[self.stage].quorum

    @property
    def outstanding(self) -> int:
        """Devices of the current stage that have neither replied nor declined."""
        declined = self.declined
        return sum(1 for d in self.asked if d not in declined) - len(self.replies[self.stage])

    def expects(self, device_id: str) -> bool:
        return (self.phase == Phase.TRAINING and not self.stage_full and device_id in self.asked
                and device_id not in self.replies[self.stage] and device_id not in self.declined)


def start(round_id: int, stages: tuple[Stage, ...], limits: tuple[Limits, ...], selected: tuple[str, ...],
          now: float, deadline: float | None = None) -> tuple[RoundMachine, list[Action]]:
    """A round in its first stage, asking every selected device. `deadline` overrides
    now + window (a round resumed after a restart keeps its wall-clock deadline)."""
    if not stages or len(stages) != len(limits):
        raise ValueError(f"need one Limits per Stage, got {len(stages)} stages and {len(limits)} limits")
    first = limits[0]
    if not 1 <= first.quorum <= first.target <= len(selected):
        raise ValueError(f"need 1 <= quorum ({first.quorum}) <= target ({first.target}) <= selected ({len(selected)})")
    for stage, lim in zip(stages[1:], limits[1:]):
        if not 1 <= lim.quorum <= lim.target:
            raise ValueError(f"stage {stage.name}: need 1 <= quorum ({lim.quorum}) <= target ({lim.target})")
    if any(not lim.window_s > 0 for lim in limits[1:]):
        raise ValueError("every later stage needs a window_s > 0")
    selected = tuple(selected)
    m = RoundMachine(round_id, tuple(stages), tuple(limits), selected,
                     now + first.window_s if deadline is None else deadline, asked=selected)
    return m, [Send(stages[0].name, selected)]


def sync_round(round_id: int, selected: tuple[str, ...], target: int, quorum: int, deadline: float) -> RoundMachine:
    """The one-stage round the coordinator runs today, with its deadline given in clock seconds."""
    machine, _ = start(round_id, SYNC, (Limits(target, quorum, 0.0),), tuple(selected), 0.0, deadline=deadline)
    return machine


def with_quorum(m: RoundMachine, stage: int, quorum: int) -> RoundMachine:
    """The machine with a later stage's quorum set: a threshold known only once an earlier stage
    has run (a secure round's unmask stage needs t responders, and t follows the cohort that
    advertised keys). A stage already open keeps its own."""
    if not m.stage < stage < len(m.stages):
        raise ValueError(f"stage {stage} is not a later stage of round {m.round_id} (now at {m.stage})")
    if quorum < 1:
        raise ValueError(f"a quorum is at least 1, got {quorum}")
    lim = replace(m.limits[stage], quorum=quorum)
    return replace(m, limits=m.limits[:stage] + (lim,) + m.limits[stage + 1:])


def on_event(m: RoundMachine, event: Event) -> tuple[RoundMachine, list[Action]]:
    """The transition table (module docstring). Raises ValueError on a Replied the round
    does not expect and on Committed outside `aggregating`: the shell checks first."""
    if isinstance(event, Replied):
        if not m.expects(event.device_id):
            raise ValueError(f"round {m.round_id} does not expect a reply from {event.device_id}")
        replies = m.replies[:m.stage] + (m.replies[m.stage] + (event.device_id,),)
        m = replace(m, replies=replies)
        if len(replies[m.stage]) >= m.target:
            m = _stage_done(m, f"{len(replies[m.stage])} reports")
        else:  # a decline before the last reply: every asked device may have answered now
            m = _check_reachable(m)
        return m, []
    if isinstance(event, Declined):
        if m.expects(event.device_id):
            m = _check_reachable(replace(m, declines=m.declines + ((event.device_id, event.reason),)))
        return m, [Pace(event.device_id, DECLINED, event.reason)]
    if isinstance(event, Tick):
        return _on_tick(m, event.now)
    if isinstance(event, Stopped):
        if m.phase in (Phase.COMMITTED, Phase.ABANDONED):
            return m, []
        m = _to(m, Phase.ABANDONED, event.why)
        return m, [Abandon(m.why)]
    if isinstance(event, Committed):
        if m.phase != Phase.AGGREGATING:
            raise ValueError(f"cannot commit a round in phase {m.phase.value}")
        return replace(m, phase=Phase.COMMITTED), []
    raise TypeError(f"not a round event: {event!r}")


def _on_tick(m: RoundMachine, now: float) -> tuple[RoundMachine, list[Action]]:
    if m.phase == Phase.TRAINING and not m.stage_full and now >= m.deadline:
        n = len(m.replies[m.stage])
        if n >= m.quorum:
            m = _stage_done(m, f"deadline with {n} reports")
        else:
            m = _to(m, Phase.ABANDONED, f"deadline with {n} < quorum {m.quorum} reports{_in_stage(m)}")
    if m.phase == Phase.TRAINING and m.stage_full:
        m = _advance(m, now)
        if m.phase == Phase.TRAINING:
            return m, [Send(m.stages[m.stage].name, m.asked)]
    if m.phase == Phase.AGGREGATING:
        return m, [Aggregate(), Commit()]
    if m.phase == Phase.ABANDONED:
        return m, [Abandon(m.why)]
    return m, []


def _advance(m: RoundMachine, now: float) -> RoundMachine:
    """The next stage asks those who answered this one; it may be out of reach already."""
    asked, nxt = m.replies[m.stage], m.stage + 1
    # A stage cannot wait for more replies than devices it asks: capped, it ends when all answered.
    lim = replace(m.limits[nxt], target=min(m.limits[nxt].target, max(1, len(asked))))
    m = replace(m, stage=nxt, asked=asked, replies=m.replies + ((),), stage_full=False, deadline=now + lim.window_s,
                limits=m.limits[:nxt] + (lim,) + m.limits[nxt + 1:])
    if len(asked) < lim.quorum:
        return _to(m, Phase.ABANDONED, f"stage {m.stages[nxt].name}: quorum {lim.quorum} out of reach "
                                       f"({len(asked)} answered stage {m.stages[nxt - 1].name})")
    return m


def _stage_done(m: RoundMachine, why: str) -> RoundMachine:
    if m.stage == len(m.stages) - 1:
        return _to(m, Phase.AGGREGATING, why)
    return replace(m, stage_full=True, why=why)


def _check_reachable(m: RoundMachine) -> RoundMachine:
    if m.phase != Phase.TRAINING or m.stage_full:
        return m
    n = len(m.replies[m.stage])
    if n + m.outstanding < m.quorum:
        return _to(m, Phase.ABANDONED, f"quorum {m.quorum} out of reach ({len(m.declines)} declined){_in_stage(m)}")
    if m.outstanding == 0 and n >= m.quorum:
        return _stage_done(m, f"all answered, {n} reports")
    return m


def _in_stage(m: RoundMachine) -> str:
    """Where a multi-stage round (secure aggregation) stopped; nothing for a one-stage round."""
    return f" at the {m.stages[m.stage].name} stage" if len(m.stages) > 1 else ""


def _to(m: RoundMachine, phase: Phase, why: str) -> RoundMachine:
    return replace(m, phase=phase, why=why)
