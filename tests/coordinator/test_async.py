"""Async mode's pure parts: staleness weights and rejections against a plain loop of the
formula, the buffered mean against a naive loop, the buffer's transition table, and the
config refusals by name."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedge.coordinator.async_mode.config import AsyncConfig, AsyncConflict
from fedge.coordinator.async_mode.machine import (
    Admit,
    Arrived,
    AsyncMachine,
    Buffered,
    CheckedIn,
    Dispatch,
    Dispatched,
    Dropped,
    Expire,
    Flight,
    Flush,
    Flushed,
    Reject,
    Resend,
    Tick,
    on_event,
)
from fedge.coordinator.async_mode.staleness import buffered_mean, is_too_stale, staleness_weight
from fedge.coordinator.config import CoordinatorConfig, load_coordinator_config
from fedge.coordinator.service import coordinator_link
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.transport.settings import MqttSettings


def plain_weight(s: int, a: float) -> float:
    """s(t) = 1 / (1 + t)^a, FedBuff's polynomial staleness function, written as the paper does."""
    return 1.0 / (1.0 + s) ** a


@pytest.mark.parametrize("a", [0.0, 0.5, 1.0, 2.0])
def test_staleness_weights_follow_the_formula(a):
    for s in range(0, 60):
        assert staleness_weight(s, a) == pytest.approx(plain_weight(s, a), rel=1e-12)
    assert staleness_weight(0, a) == 1.0  # a fresh update keeps its full weight
    # monotone: an older update never weighs more
    weights = [staleness_weight(s, a) for s in range(60)]
    assert all(x >= y for x, y in zip(weights, weights[1:]))
    with pytest.raises(ValueError):
        staleness_weight(-1, a)


def test_default_staleness_is_fedbuffs_inverse_square_root():
    cfg = AsyncConfig()
    assert (cfg.buffer_size, cfg.staleness, cfg.exponent) == (10, "polynomial", 0.5)
    assert staleness_weight(3, cfg.exponent) == pytest.approx(0.5)  # (1 + 3)^-1/2
    assert AsyncConfig(staleness="constant").exponent == 0.0


def test_rejections_follow_the_bound():
    for max_s in range(0, 8):
        for s in range(0, 12):
            assert is_too_stale(s, max_s) == (s > max_s)


def test_buffered_mean_matches_a_naive_loop():
    rng = np.random.default_rng(7)
    shapes = {"w": (3, 4), "b": (4,), "scalar": ()}
    for _trial in range(20):
        k = int(rng.integers(1, 12))
        deltas = [{n: rng.normal(size=s).astype(np.float32) for n, s in shapes.items()} for _ in range(k)]
        weights = [float(x) for x in rng.integers(1, 100, size=k)]
        stale = [int(x) for x in rng.integers(0, 9, size=k)]
        a = float(rng.choice([0.0, 0.5, 1.0]))
        got = buffered_mean(deltas, weights, stale, a)
        for name in shapes:
            num = np.zeros(shapes[name])
            den = 0.0
            for d, w, s in zip(deltas, weights, stale):
                num = num + w * (1.0 + s) ** -a * d[name].astype(np.float64)
                den += w
            np.testing.assert_allclose(got[name], num / den, rtol=1e-12, atol=1e-15)
    # Stale updates move the model less: the same deltas, older, give a shorter step.
    fresh = buffered_mean(deltas, weights, [0] * len(deltas), 0.5)
    old = buffered_mean(deltas, weights, [4] * len(deltas), 0.5)
    np.testing.assert_allclose(old["w"], fresh["w"] / np.sqrt(5.0), rtol=1e-12)


def _machine(**kw) -> AsyncMachine:
    return AsyncMachine(**{"version": 0, "buffer_size": 3, "concurrency": 2, "max_staleness": 1, **kw})


def _fly(m, device, task, base, deadline=100.0):
    m, actions = on_event(m, Dispatched(device, Flight(task, 1, base, deadline)))
    assert actions == []
    return m


def test_tick_dispatches_up_to_concurrency_and_expires_late_tasks():
    m, actions = on_event(_machine(), Tick(0.0))
    assert actions == [Dispatch(2)]
    m = _fly(m, "a", "ta", 0, deadline=10.0)
    m, actions = on_event(m, Tick(1.0))
    assert actions == [Dispatch(1)]
    m = _fly(m, "b", "tb", 0, deadline=50.0)
    assert on_event(m, Tick(2.0))[1] == []  # full
    m, actions = on_event(m, Tick(10.0))  # a's deadline
    assert actions == [Expire("a", "ta"), Dispatch(1)] and m.flight("a") is None
    with pytest.raises(ValueError):
        _fly(m, "b", "tb2", 0)


def test_staleness_is_versions_since_the_flights_base_and_the_bound_rejects_by_name():
    m = _fly(_fly(_machine(concurrency=5), "a", "ta", 0), "b", "tb", 0)
    m = _fly(m, "c", "tc", 0)
    assert on_event(m, Arrived("a", "wrong"))[1][0].reason == "stale_round"
    assert on_event(m, Arrived("zz", "tzz"))[1][0].reason == "stale_round"
    m, actions = on_event(m, Arrived("a", "ta"))
    assert actions == [Admit("a", 0)]
    m, _ = on_event(m, Buffered("a"))
    m, _ = on_event(m, Flushed())  # v1: b and c are now one version behind
    m, actions = on_event(m, Arrived("b", "tb"))
    assert actions == [Admit("b", 1)]
    m, _ = on_event(m, Flushed())  # v2: c is two behind, max_staleness 1
    m, actions = on_event(m, Arrived("c", "tc"))
    assert isinstance(actions[0], Reject) and actions[0].reason == "stale_update" and m.flight("c") is None


def test_the_kth_buffered_update_flushes_and_the_version_moves():
    m = _machine(concurrency=5)
    for d in "abc":
        m = _fly(m, d, "t" + d, 0)
    m, a1 = on_event(m, Buffered("a"))
    m, a2 = on_event(m, Buffered("b"))
    m, a3 = on_event(m, Buffered("c"))
    assert (a1, a2, a3) == ([], [], [Flush()]) and m.buffered == 3 and m.in_flight == 0
    m, _ = on_event(m, Flushed())
    assert (m.version, m.buffered) == (1, 0)
    m = _fly(m, "a", "t2", 1)
    m, _ = on_event(m, Dropped("a"))
    assert m.in_flight == 0
    with pytest.raises(ValueError):
        on_event(m, Buffered("a"))


def test_a_check_in_resends_a_task_in_flight_only_to_an_eligible_device():
    """An ineligible device with a task out was sent its task again and declined it at once (the
    whole model for nothing): its task now stays in flight until its deadline or its decline."""
    m = _fly(_machine(), "a", "ta", 0, deadline=10.0)
    flight = m.flight("a")
    assert on_event(m, CheckedIn("a", True)) == (m, [Resend("a", flight)])  # silent while it owes one: lost?
    released, actions = on_event(m, CheckedIn("a", False))
    assert actions == [] and released.flight("a") == replace(flight, holds_slot=False)  # nothing resent, kept
    assert on_event(m, CheckedIn("zz", True)) == (m, []) == on_event(m, CheckedIn("zz", False))  # none out
    late, actions = on_event(m, Tick(10.0))  # the ineligible device's task ends at its deadline ...
    assert actions == [Expire("a", "ta"), Dispatch(2)] and late.flight("a") is None
    assert on_event(m, Dropped("a"))[0].flight("a") is None  # ... or at its decline



def test_an_ineligible_check_in_frees_the_slot_and_the_answer_that_still_comes_is_admitted():
    """The slot went back only at the task's deadline (600 s by default) or its decline, though a
    device that checked in ineligible trains nothing; dropping the flight instead would refuse an
    update already on its way (or kept, and resent after a lost one). Concurrency 2, a and b out."""
    m = _fly(_fly(_machine(), "a", "ta", 0, deadline=100.0), "b", "tb", 0, deadline=100.0)
    assert on_event(m, Tick(1.0))[1] == []  # both slots held
    m, _ = on_event(m, CheckedIn("a", False))
    assert on_event(m, Tick(2.0))[1] == [Dispatch(1)]  # a's slot is free at once
    assert (m.in_flight, m.holding) == (2, 1)
    assert on_event(m, CheckedIn("a", False))[0] == m  # saying so again changes nothing
    admitted, actions = on_event(m, Arrived("a", "ta", 3.0))  # its update was on the way: still counted
    assert actions == [Admit("a", 0)]
    assert on_event(admitted, Buffered("a"))[0].flights == (("b", m.flight("b")),)
    late, actions = on_event(m, Tick(100.0))  # or it ends at its deadline, as before
    assert actions == [Expire("a", "ta"), Expire("b", "tb"), Dispatch(2)]
    back, actions = on_event(m, CheckedIn("a", True))  # eligible again: resent, and it takes a slot back
    assert actions == [Resend("a", back.flight("a"))] and back.flight("a") == replace(m.flight("a"), holds_slot=True)
    assert back.holding == 2 and on_event(back, Tick(2.0))[1] == []
    m = _fly(m, "c", "tc", 0)  # c took a's slot; a back past concurrency 2 ...
    over, _ = on_event(m, CheckedIn("a", True))
    assert (over.holding, on_event(over, Tick(2.0))[1]) == (3, [])  # ... and no dispatch until flights end


def test_tasks_out_never_pass_twice_concurrency_however_many_devices_give_their_slot_up():
    """A released flight stayed out but stopped counting: devices that check in ineligible right
    after each task (flaky, or hostile) drew a task per tick each, tasks out growing with the fleet
    (concurrency 2, 10 ticks: 20 out). Now Tick dispatches none past 2 x concurrency, held or not."""
    m, n = _machine(concurrency=2), 0
    for step in range(10):
        m, actions = on_event(m, Tick(float(step)))
        free = sum(a.count for a in actions if isinstance(a, Dispatch))
        assert free == max(0, min(2 - m.holding, 4 - m.in_flight))  # free slots, within 2 x concurrency out
        for _ in range(free):
            m = _fly(m, f"d{n}", f"t{n}", 0)
            m, _ = on_event(m, CheckedIn(f"d{n}", False))
            n += 1
        assert m.in_flight <= 4
    assert (m.in_flight, m.holding, n) == (4, 0, 4)
    assert on_event(m, Dropped("d0"))[0].free_slots() == 1  # one answered or declined: one more may go
    back, _ = on_event(m, CheckedIn("d1", True))  # one takes its slot back: still 4 out, one slot left
    assert (back.holding, back.free_slots()) == (1, 0)


def test_the_reassembly_budget_counts_every_task_an_async_coordinator_may_have_out():
    """coordinator_link sized the chunk-reassembly budget for concurrency senders; up to twice as
    many tasks are out (machine.OUT_PER_SLOT), and each may answer with an update."""
    cfg = CoordinatorConfig(mode="async", over_selection=1.0, max_update_bytes=1000,
                            async_=AsyncConfig(concurrency=10))
    assert coordinator_link(MqttSettings(), cfg).max_pending_bytes == 2 * 10 * 1000


@pytest.mark.parametrize("changes, reason", [
    ({"secure_aggregation": {"enabled": True}, "aggregator": "mean", "weighting": "equal",
      "compression": {"clip_norm": 1.0}}, "async_secure_aggregation"),
    # the async refusal comes first, not the secure aggregation's own (aggregator, clip range)
    ({"secure_aggregation": {"enabled": True}}, "async_secure_aggregation"),
    ({"strategy": "scaffold", "hyper": {"optimizer": "sgd"}}, "async_scaffold"),
    ({"model_part_bytes": 4096}, "async_model_parts"),
])
def test_async_refuses_settings_it_cannot_honour_by_name(tmp_path, changes, reason):
    lines = ['[coordinator]', 'mode = "async"']
    tables = {}
    for key, value in changes.items():
        if isinstance(value, dict):
            tables[key] = value
        else:
            lines.append(f"{key} = {value!r}".replace("'", '"'))
    for table, values in tables.items():
        lines.append(f"[coordinator.{table}]")
        lines += [f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}".replace("'", '"')
                  for k, v in values.items()]
    path = tmp_path / "c.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(AsyncConflict) as err:
        load_coordinator_config(path)
    assert err.value.reason == reason and f"({reason})" in str(err.value)  # the name is in the one line
    assert isinstance(err.value, ConfigError)


def test_async_table_loads_from_toml_and_validates(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[coordinator]\nmode = "async"\n[coordinator.async]\nconcurrency = 7\nbuffer_size = 3\n'
                    'max_staleness = 2\n')
    cfg = load_coordinator_config(path)
    assert (cfg.mode, cfg.async_.concurrency, cfg.async_.buffer_size, cfg.async_.max_staleness) == ("async", 7, 3, 2)
    with pytest.raises(ConfigError, match="mode"):
        CoordinatorConfig(mode="fast")
    for bad in ({"buffer_size": 0}, {"concurrency": 0}, {"max_staleness": -1}, {"staleness": "exp"},
                {"staleness_exponent": float("nan")}):
        with pytest.raises(ConfigError):
            AsyncConfig(**bad)
    path.write_text('[coordinator.async]\nbogus = 1\n')
    with pytest.raises(ConfigError, match="bogus"):
        load_coordinator_config(path)
    assert CoordinatorConfig().mode == "sync"  # the default is unchanged


def test_an_exponent_whose_weight_underflows_to_zero_within_max_staleness_is_refused_by_name():
    """f(s) = (1 + s)^-a is 0.0 in float64 for 2^-a below 5e-324: such an update, accepted, was
    refused by the robust rules (and DpMean) after its journal row was written, so it was in no
    buffer yet acked as a duplicate when re-sent, and every restart stopped on it. Oracle: the
    weight at max_staleness, computed here directly; the largest exponents it keeps are allowed."""
    for max_staleness, exponent in ((1, 1075.0), (20, 300.0), (5, 1e6)):
        assert (1.0 + max_staleness) ** -exponent == 0.0
        with pytest.raises(ConfigError, match="staleness_exponent") as err:
            AsyncConfig(max_staleness=max_staleness, staleness_exponent=exponent)
        assert f"max_staleness {max_staleness}" in str(err.value)
    for max_staleness, exponent in ((1, 1074.0), (20, 200.0), (0, 1e6)):
        assert AsyncConfig(max_staleness=max_staleness, staleness_exponent=exponent).exponent == exponent
        assert 0 < staleness_weight(max_staleness, exponent) <= 1
    assert AsyncConfig(max_staleness=20, staleness="constant", staleness_exponent=1e6).exponent == 0.0


def test_has_free_slot_is_free_slots_above_zero_in_every_state():
    """The check-in's shortcut (counting held slots only once `concurrency` tasks are out) against
    free_slots() itself, over every mix of held and released flights up to 2 x concurrency out."""
    for concurrency in (1, 2, 3, 5):
        for out in range(2 * concurrency + 2):
            for held in range(out + 1):
                flights = tuple((f"d{i}", Flight(f"t{i}", 1, 0, 100.0, holds_slot=i < held)) for i in range(out))
                m = AsyncMachine(version=0, buffer_size=2, concurrency=concurrency, max_staleness=3, flights=flights)
                assert m.has_free_slot() == (m.free_slots() > 0), (concurrency, out, held)
