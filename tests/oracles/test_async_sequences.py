"""Async mode's transition table driven by random event sequences, against a plain loop of the
documented rules (machine.py, staleness.py): staleness s = current version - the flight's base
version, an update rejected as stale_update exactly when s > max_staleness, weighted
(1 + s)^-a otherwise, a flush after every K buffered updates moving the version by one, and a
machine started at a restored version (a restart) counting from it, and a flight whose device
checked in ineligible holding no concurrency slot until it checks in eligible, its answer still
admitted. Each sequence is made
to reach s == max_staleness and s == max_staleness + 1 (asserted), and each flush's
buffered mean is compared with Σ w_i (1 + s_i)^-a Δ_i / Σ w_i by hand."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.async_mode.machine import (
    Admit,
    Arrived,
    AsyncMachine,
    Buffered,
    CheckedIn,
    Dispatch,
    Dispatched,
    Dropped,
    Flight,
    Flush,
    Flushed,
    Reject,
    Resend,
    Tick,
    on_event,
)
from fedge.coordinator.async_mode.staleness import buffered_mean, staleness_weight


@pytest.mark.parametrize("seed", range(12))
def test_random_sequences_follow_the_plain_rules(seed):
    rng = np.random.default_rng(seed)
    max_s, k = int(rng.integers(0, 4)), int(rng.integers(1, 4))
    exponent = float(rng.choice([0.0, 0.5, 1.0, 2.0]))
    start = int(rng.choice([0, 37]))  # 37: a machine rebuilt from a restored ServerState
    devices = [f"d{i}" for i in range(8)]
    m = AsyncMachine(start, k, len(devices), max_s)
    version, buffered, base, task = start, 0, {}, 0  # the plain loop's state
    slotless: set[str] = set()  # devices in flight whose last check-in said ineligible
    buffer: list[tuple[np.ndarray, float, int]] = []
    seen_s, flushes = set(), 0
    for _ in range(600):
        idle = [d for d in devices if d not in base]
        if idle and rng.random() < 0.5:
            d = idle[int(rng.integers(len(idle)))]
            task += 1
            m, actions = on_event(m, Dispatched(d, Flight(f"t{task}", 1, version, 1e9)))
            assert actions == []
            base[d] = (f"t{task}", version)
            continue
        if not base:
            continue
        d = sorted(base)[int(rng.integers(len(base)))]
        task_id, b = base[d]
        if rng.random() < 0.15:  # a check-in while its task is out: ineligible frees its slot, eligible takes it
            eligible = bool(rng.random() < 0.5)
            m, actions = on_event(m, CheckedIn(d, eligible))
            (slotless.discard if eligible else slotless.add)(d)
            assert [(type(a), a.flight.task_id) for a in actions] == ([(Resend, task_id)] if eligible else [])
            assert m.holding == len(base) - len(slotless)
            continue
        if rng.random() < 0.1:
            m, _ = on_event(m, Dropped(d))
            del base[d]
            slotless.discard(d)
            continue
        if rng.random() < 0.05:  # an answer to a task that is not the one in flight
            m, actions = on_event(m, Arrived(d, task_id + "x"))
            assert [(type(a), a.reason) for a in actions] == [(Reject, "stale_round")]
            continue
        s = version - b
        seen_s.add(s)
        m, actions = on_event(m, Arrived(d, task_id))
        if s > max_s:
            assert [(type(a), a.reason) for a in actions] == [(Reject, "stale_update")]
            assert m.flight(d) is None
            del base[d]
            slotless.discard(d)
            continue
        assert actions == [Admit(d, s)]
        assert staleness_weight(s, exponent) == pytest.approx(1.0 / (1.0 + s) ** exponent, rel=1e-15)
        buffer.append((rng.standard_normal(5), float(rng.integers(1, 50)), s))
        m, actions = on_event(m, Buffered(d))
        del base[d]
        slotless.discard(d)
        buffered += 1
        assert actions == ([Flush()] if buffered == k else [])
        if actions:
            deltas, weights, stale = zip(*buffer)
            got = buffered_mean([{"w": x} for x in deltas], list(weights), list(stale), exponent)["w"]
            want = sum(w * (1.0 + s) ** -exponent * x for x, w, s in buffer) / sum(weights)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
            m, _ = on_event(m, Flushed())
            version, buffered, buffer, flushes = version + 1, 0, [], flushes + 1
        assert (m.version, m.buffered, m.in_flight) == (version, buffered, len(base))
        assert m.holding == len(base) - len(slotless)  # an admitted answer counts whether or not it held a slot
    assert {max_s, max_s + 1} <= seen_s, f"sequence never reached the bound: {sorted(seen_s)}"
    assert m.version == start + flushes and flushes > 3


@pytest.mark.parametrize("seed", range(8))
def test_ticks_dispatch_the_free_slots_but_never_past_twice_concurrency_out(seed):
    """Tick-driven sequences (the shell dispatches what Tick offers to idle devices) with devices
    that often check in ineligible while their task is out, against a plain model: Tick offers
    min(concurrency - tasks holding a slot, 2 x concurrency - tasks out), and tasks out never pass
    2 x concurrency. Before the bound, released tasks did not count and tasks out reached the fleet."""
    rng = np.random.default_rng(100 + seed)
    slots, devices = int(rng.integers(1, 4)), [f"d{i}" for i in range(12)]
    m, out, slotless, task, binds = AsyncMachine(0, 100, slots, 5), set(), set(), 0, 0
    for _ in range(400):
        m, actions = on_event(m, Tick(0.0))
        want = min(slots - (len(out) - len(slotless)), 2 * slots - len(out))
        binds += 2 * slots - len(out) < slots - (len(out) - len(slotless))
        assert actions == ([Dispatch(want)] if want > 0 else [])
        idle = [d for d in devices if d not in out]
        for d in idle[:max(want, 0)]:
            task += 1
            m, _ = on_event(m, Dispatched(d, Flight(f"t{task}", 1, 0, 1e9)))
            out.add(d)
        for d in sorted(out):
            r = rng.random()
            if r < 0.3:  # checks in ineligible: its slot goes, its task stays out
                m, _ = on_event(m, CheckedIn(d, False))
                slotless.add(d)
            elif r < 0.4:  # eligible again: resent, takes a slot back (past concurrency, for a while)
                m, _ = on_event(m, CheckedIn(d, True))
                slotless.discard(d)
            elif r < 0.5:  # answered or declined: its task ends
                m, _ = on_event(m, Dropped(d))
                out.discard(d)
                slotless.discard(d)
        assert (m.in_flight, m.holding) == (len(out), len(out) - len(slotless))
        assert m.in_flight <= 2 * slots
    assert binds > 20  # the 2 x concurrency bound, not the free slots, decided often
