"""The default defence (norm_bound) in async mode clips each update's raw delta by the raw-norm
history, then weights it by staleness: clip(Δ) x (1 + s)^-a, as FedBuff does. It used to clip
the staleness-scaled delta against a history of scaled norms, so when most updates were stale
the median was small and a fresh honest update looked large: with 40 updates at staleness
0-39 and K = 1 a fresh update of norm 0.01 moved the model only 0.0044, and with K = 2 and
staleness around 15-19 a fresh one was left out of its buffer as an outlier. Checked through
the real AsyncCoordinator against a plain numpy loop of clip-then-weight over each buffer."""

from __future__ import annotations

import numpy as np
import pytest

import fedge.coordinator.robust.aggregators as robust
from fedge.coordinator.aggregate import UpdateMeta
from fedge.coordinator.async_mode.config import AsyncConfig
from fedge.coordinator.async_mode.staleness import staleness_weight
from fedge.coordinator.robust.norm_bound import NormBoundConfig, NormHistory
from fedge.coordinator.robust.screened import ScreenedAggregator
from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.codec import encode_message
from tests.coordinator.fleet import ManualDevice, copy_params, make_fleet
from tests.tiny_model import build_tiny_model

EXPONENT = 0.5  # AsyncConfig's default staleness exponent
BIG = {6: 0.03, 8: 0.05}  # buffer -> the norm of its first update: clipped (2x), left out (> 4x the median)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _norm(delta) -> float:
    return float(np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in delta.values())))


def clip_then_weight(buffers, cfg: NormBoundConfig, a: float = EXPONENT, history=()):
    """Each buffer's step by a plain loop: bound and exclusion from the raw norms of earlier
    buffers (the buffer's own before min_history of them), each delta clipped to the bound,
    then weighted by w (1 + s)^-a; an update over the exclusion bound is left out unless all
    of its buffer are. `buffers`: lists of (delta, weight, staleness)."""
    history, steps = list(history), []
    for buf in buffers:
        norms = [_norm(d) for d, _, _ in buf]
        median = float(np.median(history[-cfg.window:] if len(history) >= cfg.min_history else norms))
        bound, exclusion = cfg.multiplier * median, cfg.exclude_multiplier * median
        keep = [n <= exclusion for n in norms]
        if not any(keep):
            keep = [True] * len(buf)
        step = {k: np.zeros(np.shape(v)) for k, v in buf[0][0].items()}
        total = 0.0
        for (delta, w, s), n, kept in zip(buf, norms, keep):
            if not kept:
                continue
            for k in step:
                step[k] += w * (1.0 + s) ** -a * min(1.0, bound / n) * np.asarray(delta[k], np.float64)
            total += w
        steps.append({k: v / total for k, v in step.items()})
        history += norms
    return steps


def _delta(shapes, rng, norm: float):
    raw = {k: rng.normal(size=s) for k, s in shapes.items()}
    scale = norm / _norm(raw)
    return {k: (v * scale).astype(np.float32) for k, v in raw.items()}


@pytest.mark.parametrize("k, stale_buffers, window", [(1, 40, 200), (2, 20, 10)])
def test_a_fresh_update_is_not_clipped_or_left_out_because_the_others_were_stale(model, tmp_path, k, stale_buffers,
                                                                                   window):
    norm_cfg = NormBoundConfig(window=window)
    n = k * stale_buffers + (k - 1)  # all on v0: buffer j gets K of them at staleness j; K - 1 kept for the last
    fleet = make_fleet(model, tmp_path, mode="async", aggregator="norm_bound",
                       robust=robust.RobustConfig(norm=norm_cfg),
                       async_=AsyncConfig(concurrency=n, buffer_size=k, max_staleness=stale_buffers))
    devs = [ManualDevice(fleet, f"d{i}", 10) for i in range(n)]
    fleet.drain()
    c = fleet.coordinator
    assert c.begin_round()
    c.tick()
    fleet.drain()
    rng = np.random.default_rng(11)
    buffers, steps, buf = [], [], []

    def send(dev, norm):
        delta, stale, before = _delta(c.shapes, rng, norm), c.state.version - dev.task().model_version, c.state.params
        dev.send(encode_message(dev.update(delta, update_id=f"u{len(buffers)}")))
        fleet.drain()
        assert dev.acks()[-1] == (True, ""), dev.acks()
        buf.append((delta, 10, stale))
        if len(buf) == k:
            assert c.state.version == len(buffers) + 1
            buffers.append(list(buf))
            buf.clear()
            steps.append({name: c.state.params[name].astype(np.float64) - before[name].astype(np.float64)
                          for name in before})

    for j in range(stale_buffers):
        for i, dev in enumerate(devs[j * k:(j + 1) * k]):
            send(dev, BIG.get(j, 0.01) if i == 0 else 0.01)
    assert [s for _, _, s in buffers[-1]] == [stale_buffers - 1] * k
    before = copy_params(c.state.params)
    c.tick()  # fresh tasks on the current version for the devices that answered
    fleet.drain()
    assert devs[0].task().model_version == c.state.version
    send(devs[0], 0.01)  # fresh, as large as every other honest update
    for dev in devs[k * stale_buffers:]:
        send(dev, 0.01)  # still on v0
    assert [s for _, _, s in buffers[-1]] == [0] + [stale_buffers] * (k - 1)

    want = clip_then_weight(buffers, norm_cfg)
    moved = _norm({name: c.state.params[name].astype(np.float64) - before[name] for name in before})
    # The fresh update counts in full: with K = 1 the model moves by its whole norm (0.0044 when
    # it was clipped to the stale ones' scaled median), with K = 2 it is in the mean (not left out).
    assert moved == pytest.approx(_norm(want[-1]), rel=1e-4)
    if k == 1:
        assert moved == pytest.approx(0.01, rel=1e-4)
    for j, (got, expected) in enumerate(zip(steps, want)):
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=2e-7, err_msg=f"buffer {j} {name}")


@pytest.mark.parametrize("history, guard, kind", [
    ((), None, robust.ColdStartAggregator), ((0.01,) * 8, None, robust.StreamingAggregator),
    ((), lambda _p: 0.0, ScreenedAggregator), ((0.01,) * 8, lambda _p: 0.0, ScreenedAggregator)])
def test_every_norm_bound_path_clips_the_raw_delta_then_weights_it(history, guard, kind):
    """The cold start (the buffer's own median), the streaming bound, and the guard-set screen
    (a guard that finds no harm keeps all) against the same loop: raw norms 0.01 at staleness
    0-8, one of 0.03 at staleness 8 (clipped, then weighted) and one of 0.05 (left out)."""
    cfg = robust.RobustConfig()
    rng = np.random.default_rng(4)
    shapes = {"w": (5, 3), "b": (3,)}
    buf = [(_delta(shapes, rng, 0.01), 10.0, s) for s in range(9)]
    buf += [(_delta(shapes, rng, 0.03), 10.0, 8), (_delta(shapes, rng, 0.05), 10.0, 3)]
    state = robust.RobustState(NormHistory(history))
    agg = robust.make_aggregator("norm_bound", cfg, state, np.random.default_rng(0), guard)
    assert isinstance(agg, kind)
    for delta, w, s in buf:
        agg.add(delta, UpdateMeta("d", w, s, staleness_weight=staleness_weight(s, EXPONENT)))
    (want,) = clip_then_weight([buf], cfg.norm, history=history)
    got = agg.result()
    for name in shapes:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-9, err_msg=name)
    assert agg.norms == pytest.approx([_norm(d) for d, _, _ in buf], rel=1e-12)  # the history gets raw norms


def _restart_script(model, tmp_path, restart: bool):
    """norm_bound from the first buffer's history (min_history 1); buffer 2 holds a stale update
    clipped then weighted; with `restart`, the coordinator dies with buffer 2 half full.
    Returns the first and the last params, and the buffers as clip_then_weight takes them."""
    tmp_path.mkdir(parents=True)
    db = tmp_path / "state.db"
    fleet = make_fleet(model, tmp_path, store=RoundStore(db), mode="async", aggregator="norm_bound",
                       robust=robust.RobustConfig(norm=NormBoundConfig(min_history=1)),
                       async_=AsyncConfig(concurrency=4, buffer_size=2, max_staleness=3))
    devs = [ManualDevice(fleet, f"d{i}", 10) for i in range(4)]
    fleet.drain()
    first = copy_params(fleet.coordinator.state.params)
    assert fleet.coordinator.begin_round()
    fleet.coordinator.tick()
    fleet.drain()
    rng = np.random.default_rng(9)
    sent = []
    for i, norm in enumerate((0.01, 0.012, 0.03, 0.011)):  # 0.03: over 2 x the median of buffer 1's raw norms
        if restart and i == 3:
            fleet.restart(store=RoundStore(db))
            fleet.drain()
        delta = _delta(fleet.coordinator.shapes, rng, norm)
        sent.append((delta, 10, i // 2))  # buffer 2's tasks left on v0: staleness 1
        devs[i].send(encode_message(devs[i].update(delta)))
        fleet.drain()
    c = fleet.coordinator
    assert c.state.version == 2 and c.rejections.get("duplicate", 0) == 0
    return first, c.state.params, [sent[:2], sent[2:]]


def test_a_restart_replays_a_stale_clipped_buffer_to_the_same_bits(model, tmp_path):
    first, ref, buffers = _restart_script(model, tmp_path / "ref", restart=False)
    _, got, _ = _restart_script(model, tmp_path / "restart", restart=True)
    for name, value in ref.items():
        assert got[name].tobytes() == value.tobytes(), name
    steps = clip_then_weight(buffers, NormBoundConfig(min_history=1))
    for name, value in first.items():
        want = value.astype(np.float64) + steps[0][name] + steps[1][name]
        np.testing.assert_allclose(ref[name], want, rtol=0, atol=2e-7, err_msg=name)


@pytest.mark.parametrize("factor", [0.0, -0.5, 1.5, float("nan"), float("inf")])
def test_a_staleness_weight_outside_0_1_is_refused_by_name(factor):
    agg = robust.make_aggregator("norm_bound", robust.RobustConfig(), robust.RobustState(), np.random.default_rng(0))
    with pytest.raises(robust.RobustError, match="staleness weight"):
        agg.add({"w": np.ones(3, np.float32)}, UpdateMeta("d", 1.0, 2, staleness_weight=factor))
    assert agg.count == 0
