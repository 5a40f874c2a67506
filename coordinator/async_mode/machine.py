"""The async buffer as a transition table: `on_event(machine, event) -> (machine, actions)`.

No I/O and no clock: the shell (server.py) feeds events and executes the actions, as the
sync round machine (coordinator/rounds.py) is run.

    event                        actions                          state change
    Tick(now)                    Expire(d) per flight past its    flights past deadline leave;
                                 deadline; Dispatch(n) for the    n = min(concurrency - flights
                                 free slots                       holding a slot, 2 x concurrency
                                                                  - flights) (OUT_PER_SLOT)
    Dispatched(d, flight)        -                                d in flight (its task is durable)
    Arrived(d, task_id, now)     Reject(stale_round) no such      s = version - flight.base_version;
                                 flight, or past its deadline;    a late or stale update's flight
                                 Reject(stale_update)             leaves
                                 s > max_staleness; else Admit(s)
    Buffered(d)                  Flush when buffered reaches K    d's flight leaves; buffered + 1
    Dropped(d)                   -                                d's flight leaves (declined,
                                                                  or its update was refused)
    Flushed()                    -                                version + 1; buffered = 0
    CheckedIn(d, eligible)       Resend(d, flight) when d has a   d's flight holds a slot when
                                 flight and is eligible; else -   eligible, none when not

Staleness is measured from the base version of the task the coordinator sent (the flight),
never from what the update claims; admission separately checks that the claim matches.

A check-in from a device with a flight means it probably lost its task: it gets it again, but
only when it says it can train. Ineligible, it would only decline the copy at once (a whole
model sent for nothing); its task stays in flight until its deadline (Tick) or its decline
(Dropped), and the shell paces the device as ineligible. Its flight gives up its concurrency
slot meanwhile (holds_slot False), so the next Tick dispatches to another device: it held the
slot for the whole deadline (600 s by default) before. Dropping the flight instead would refuse
its answer when one still comes: an agent checks in while its task's inputs are on the way, or
while its update waits for an Ack (a broker that lost it: the device resends), so a released
flight is still admitted by Arrived until its deadline, and the device's training is never
thrown away by the release. Eligible again, its flight takes a slot back with the Resend, even
past concurrency (for a moment, until flights end: Tick dispatches none meanwhile), since the
device is about to train it. Tasks out, held or released, never pass 2 x concurrency: Tick
dispatches none past that (OUT_PER_SLOT says why 2). The journal does not keep the release: a
restart (server.py) gives a rebuilt flight its slot only when the registry says its device is
eligible and not parked, so a restart neither stalls dispatch behind released flights nor lets
tasks out past the bound. A Last Will (the device went offline) releases like an ineligible
check-in.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .staleness import is_too_stale

# A released flight (holds_slot False) stays out until its deadline or answer, and each costs what
# a task out costs: a task's bytes down, and room for its update in the chunk-reassembly budget
# (service.coordinator_link). Without a bound, devices that check in ineligible right after each
# task (flaky, or hostile) release slot after slot, and tasks out grow to the fleet's size. Twice
# concurrency: concurrency tasks holding a slot, and up to as many released ones still allowed to
# answer. 1x would be the behaviour before the release (an ineligible device's slot unusable until
# its deadline); 2x keeps the release's gain, every slot handed on once per deadline, at a fixed,
# configured cost (what the reassembly budget and the docs count), whatever the fleet's size.
OUT_PER_SLOT = 2


@dataclass(frozen=True)
class Flight:
    task_id: str
    round_id: int  # the buffer open when the task left: the device echoes it as Update.round_id
    base_version: int  # the model version the task carries
    deadline: float  # clock seconds
    holds_slot: bool = True  # False: its device checked in ineligible since (module docstring)


@dataclass(frozen=True)
class AsyncMachine:
    version: int  # the current model version
    buffer_size: int  # K
    concurrency: int
    max_staleness: int
    flights: tuple[tuple[str, Flight], ...] = ()  # (device, flight), in dispatch order
    buffered: int = 0  # accepted updates in the open buffer
    _index: dict = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", dict(self.flights))

    def flight(self, device_id: str) -> Flight | None:
        return self._index.get(device_id)

    @property
    def in_flight(self) -> int:
        return len(self.flights)

    @property
    def holding(self) -> int:
        """Flights that hold a concurrency slot: all but those of devices that checked in ineligible."""
        return sum(1 for _, f in self.flights if f.holds_slot)

    @property
    def max_out(self) -> int:
        """Tasks out, slot or not, past which nothing is dispatched: OUT_PER_SLOT x concurrency."""
        return OUT_PER_SLOT * self.concurrency

    def free_slots(self) -> int:
        """How many tasks a Tick may dispatch now: free slots, within max_out."""
        return min(self.concurrency - self.holding, self.max_out - self.in_flight)

    def has_free_slot(self) -> bool:
        """free_slots() > 0, without counting the slots held while fewer than `concurrency` tasks are
        out (then one is free): asked at every eligible check-in, and concurrency may be large."""
        return self.in_flight < self.concurrency or self.free_slots() > 0

    def staleness(self, flight: Flight) -> int:
        return self.version - flight.base_version

    def _without(self, device_id: str) -> tuple[tuple[str, Flight], ...]:
        return tuple((d, f) for d, f in self.flights if d != device_id)


@dataclass(frozen=True)
class Tick:
    now: float


@dataclass(frozen=True)
class Dispatched:
    device_id: str
    flight: Flight


@dataclass(frozen=True)
class Arrived:
    device_id: str
    task_id: str
    # Clock seconds. An answer past its flight's deadline is refused whether or not a Tick has
    # expired the flight yet: the shell ticks only between bursts of messages, and a restart
    # rebuilds flights whose deadline passed while it was down (one was accepted 400 s late).
    # None: no deadline check (sequences that do not model time).
    now: float | None = None


@dataclass(frozen=True)
class Buffered:
    device_id: str


@dataclass(frozen=True)
class Dropped:
    device_id: str


@dataclass(frozen=True)
class Flushed:
    pass


@dataclass(frozen=True)
class CheckedIn:
    device_id: str
    eligible: bool  # what its check-in said, and not parked (a parked device is paced as ineligible)


@dataclass(frozen=True)
class Dispatch:
    count: int  # free slots: the shell picks up to this many idle eligible devices


@dataclass(frozen=True)
class Expire:
    device_id: str
    task_id: str


@dataclass(frozen=True)
class Admit:
    device_id: str
    staleness: int


@dataclass(frozen=True)
class Reject:
    device_id: str
    reason: str  # "stale_round" or "stale_update": the metric label
    detail: str
    retired: str = ""  # the task whose flight this answer ended (too stale or too late): the shell drops it too


@dataclass(frozen=True)
class Flush:
    pass


@dataclass(frozen=True)
class Resend:
    device_id: str
    flight: Flight  # the task to send again (the shell's task_resend_s throttle still applies)


Event = Tick | Dispatched | Arrived | Buffered | Dropped | Flushed | CheckedIn
Action = Dispatch | Expire | Admit | Reject | Flush | Resend


def on_event(m: AsyncMachine, event: Event) -> tuple[AsyncMachine, list[Action]]:
    """The transition table (module docstring). Raises ValueError for a Dispatched to a device
    already in flight and a Buffered from one that is not: the shell checks first."""
    if isinstance(event, Tick):
        expired = [(d, f) for d, f in m.flights if f.deadline <= event.now]
        kept = tuple((d, f) for d, f in m.flights if f.deadline > event.now)
        actions: list[Action] = [Expire(d, f.task_id) for d, f in expired]
        m = replace(m, flights=kept)
        if (free := m.free_slots()) > 0:
            actions.append(Dispatch(free))
        return m, actions
    if isinstance(event, Dispatched):
        if m.flight(event.device_id) is not None:
            raise ValueError(f"{event.device_id} already has a task in flight")
        return replace(m, flights=m.flights + ((event.device_id, event.flight),)), []
    if isinstance(event, Arrived):
        flight = m.flight(event.device_id)
        if flight is None or flight.task_id != event.task_id:
            return m, [Reject(event.device_id, "stale_round", f"task {event.task_id} is not in flight")]
        if event.now is not None and flight.deadline <= event.now:  # as Tick would have expired it
            return replace(m, flights=m._without(event.device_id)), [
                Reject(event.device_id, "stale_round", f"task {event.task_id} answered "
                       f"{event.now - flight.deadline:.3g} s past its deadline", flight.task_id)]
        s = m.staleness(flight)
        if is_too_stale(s, m.max_staleness):  # the one rule, oracle-tested in test_async.py
            return replace(m, flights=m._without(event.device_id)), [
                Reject(event.device_id, "stale_update", f"trained on v{flight.base_version}, {s} versions behind "
                                                         f"v{m.version} > max_staleness {m.max_staleness}",
                                                         flight.task_id)]
        return m, [Admit(event.device_id, s)]
    if isinstance(event, Buffered):
        if m.flight(event.device_id) is None:
            raise ValueError(f"{event.device_id} has no task in flight")
        buffered = m.buffered + 1
        return (replace(m, flights=m._without(event.device_id), buffered=buffered),
                [Flush()] if buffered >= m.buffer_size else [])
    if isinstance(event, Dropped):
        return replace(m, flights=m._without(event.device_id)), []
    if isinstance(event, Flushed):
        return replace(m, version=m.version + 1, buffered=0), []
    if isinstance(event, CheckedIn):
        flight = m.flight(event.device_id)
        if flight is None:
            return m, []
        held = replace(flight, holds_slot=event.eligible)
        if held != flight:
            m = replace(m, flights=tuple((d, held if d == event.device_id else f) for d, f in m.flights))
        return m, [Resend(event.device_id, held)] if event.eligible else []
    raise TypeError(f"unknown event {event!r}")
