"""Strategies against independent references, and every strategy end to end.

* Server optimizers: FedAvgM / FedAdagrad / FedAdam / FedYogi over several rounds against a
  scalar Python loop of Reddi et al. 2021, Algorithm 2 (and Hsu et al. 2019 for momentum).
* SCAFFOLD's server step against numbers worked out by hand; its control upload validated
  like the delta; the invariant c = mean_i c_i over a real fleet.
* Config: the strategy_from_config contract for every name.
* End to end over the in-memory broker, for every strategy: partial participation,
  over-selection, declines, and 8-bit top-k compression; rounds commit and the global model
  learns a separable toy task.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.errors import BadShape, NonFinite, NormBound
from fedge.coordinator.server import Coordinator
from fedge.coordinator.strategies import STRATEGIES, AggregateInput, make_strategy, strategy_from_config
from fedge.coordinator.validation import RoundContext, check_control, payload_digest
from fedge.edge_runtime.agent import DeviceAgent
from fedge.edge_runtime.device import DeviceRuntime, LocalData
from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.kernel.compress import compress_update, decompress_update
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import CompressionSpec, TaskHyper, Update, all_devices_topic
from fedge.edge_runtime.kernel.transport.memory import InMemoryBroker
from fedge.edge_runtime.kernel.update_codec import decode_tensors, encode_dense, encode_tensors
from fedge.edge_runtime.store import DeviceStore
from tests.coordinator.fleet import Fleet, nan_payload
from tests.tiny_model import CLASSES, FEATURES, build_tiny_model

NAMES = ("fedavg", "fedprox", "scaffold", "fedavgm", "fedadagrad", "fedadam", "fedyogi")
SHAPES = {"a": (3, 2), "b": (4,)}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _agg(delta, participants=3, population=10, control=None):
    return AggregateInput(delta, participants, population, control)


def _rounds(seed=0, rounds=6):
    """Mean deltas of mixed magnitudes (so Yogi's sign(v - Δ²) takes both signs)."""
    rng = np.random.default_rng(seed)
    return [{k: (rng.normal(size=s) * 10.0 ** rng.uniform(-4, -1, size=s)).astype(np.float32)
             for k, s in SHAPES.items()} for _ in range(rounds)]


def _init(seed=1):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


# ------------------------------------------------------------------ server optimizers


def _naive(name, x0, deltas, lr, beta=0.9, beta1=0.9, beta2=0.99, tau=1e-3):
    """The papers' formulas, one Python float at a time."""
    out = {}
    for k, x_arr in x0.items():
        xs = []
        for i in range(x_arr.size):
            x, m, v = float(x_arr.flat[i]), 0.0, tau * tau  # m_{-1} = 0, v_{-1} = τ²
            for delta in deltas:
                d = float(delta[k].flat[i])
                if name == "fedavgm":
                    m = beta * m + d
                    x = x + lr * m
                    continue
                m = beta1 * m + (1 - beta1) * d
                if name == "fedadagrad":
                    v = v + d * d
                elif name == "fedadam":
                    v = beta2 * v + (1 - beta2) * d * d
                else:  # fedyogi
                    s = v - d * d
                    v = v - (1 - beta2) * d * d * (1 if s > 0 else -1 if s < 0 else 0)
                x = x + lr * m / (math.sqrt(v) + tau)
            xs.append(x)
        out[k] = np.array(xs).reshape(x_arr.shape)
    return out


@pytest.mark.parametrize("name", ["fedavgm", "fedadagrad", "fedadam", "fedyogi"])
def test_server_optimizer_matches_the_papers_formulas(name):
    options = {"fedavgm": dict(momentum=0.8)}.get(name, dict(beta1=0.85, beta2=0.95, tau=1e-3))
    strategy = make_strategy(name, TaskHyper(), server_lr=0.05, **options)
    deltas = _rounds()
    state = strategy.init(_init())
    for delta in deltas:
        state = strategy.apply(state, _agg(delta))
    kwargs = {"beta": 0.8} if name == "fedavgm" else {"beta1": 0.85, "beta2": 0.95, "tau": 1e-3}
    want = _naive(name, _init(), deltas, 0.05, **kwargs)
    assert state.version == len(deltas)
    for k in SHAPES:
        assert state.params[k].dtype == np.float32
        np.testing.assert_allclose(state.params[k], want[k], rtol=2e-6, atol=2e-6, err_msg=k)


def test_yogi_and_adam_differ_where_the_paper_says():
    """One step from v = τ² with Δ² > τ²: Adam shrinks v toward Δ², Yogi grows it additively."""
    d = {"a": np.full((3, 2), 0.1, np.float32), "b": np.full(4, 0.1, np.float32)}
    adam = make_strategy("fedadam", TaskHyper(), beta2=0.9, tau=1e-3)
    yogi = make_strategy("fedyogi", TaskHyper(), beta2=0.9, tau=1e-3)
    va = adam.apply(adam.init(_init()), _agg(d)).extra["v"]["b"][0]
    vy = yogi.apply(yogi.init(_init()), _agg(d)).extra["v"]["b"][0]
    assert va == pytest.approx(0.9 * 1e-6 + 0.1 * 0.01, rel=1e-6)
    assert vy == pytest.approx(1e-6 + 0.1 * 0.01, rel=1e-6)


def test_fedavg_and_fedprox_add_the_mean_delta():
    delta = _rounds(rounds=1)[0]
    for name in ("fedavg", "fedprox"):
        strategy = make_strategy(name, TaskHyper(), server_lr=0.5)
        state = strategy.apply(strategy.init(_init()), _agg(delta))
        for k in SHAPES:
            np.testing.assert_allclose(state.params[k], _init()[k] + 0.5 * delta[k].astype(np.float64), rtol=1e-6)
        assert state.extra == {}


# ------------------------------------------------------------------ SCAFFOLD, server side


def test_scaffold_server_step_by_hand():
    """c <- c + (|S|/N) mean(Δc_i);  x <- x + η mean(Δy): |S| = 2, N = 5, η = 1."""
    strategy = make_strategy("scaffold", TaskHyper())
    state = strategy.init({"w": np.array([1.0, -1.0], np.float32)})
    state = dataclasses.replace(state, extra={"control": {"w": np.array([0.5, 0.25], np.float32)}})
    plan = strategy.configure(state)
    assert plan.correction["w"].tolist() == [0.5, 0.25]  # the task carries c itself
    new = strategy.apply(state, _agg({"w": np.array([0.2, 0.4], np.float32)}, participants=2, population=5,
                                     control={"w": np.array([1.0, -2.0], np.float32)}))
    np.testing.assert_allclose(new.extra["control"]["w"], [0.5 + 0.4, 0.25 - 0.8], rtol=1e-6)
    np.testing.assert_allclose(new.params["w"], [1.2, -0.6], rtol=1e-6)
    with pytest.raises(ValueError, match="control"):
        strategy.apply(state, _agg({"w": np.zeros(2, np.float32)}))


def _ctx(control=True, bound=0.0):
    return RoundContext(1, "m", 0, {"d": "t"}, SHAPES, 0.0, control, bound)


def _update(control: bytes = b"", payload: bytes | None = None) -> Update:
    return Update("d", 1, "t", "u", "m", 0, 5, payload or encode_dense(_init()), control=control)


def test_control_upload_is_validated_like_the_delta():
    good = _init(3)
    assert check_control(_update(encode_dense(good)), _ctx())["a"].tolist() == good["a"].tolist()
    with pytest.raises(BadShape, match="needs the control"):
        check_control(_update(), _ctx())
    with pytest.raises(BadShape, match="uses none"):
        check_control(_update(encode_dense(good)), _ctx(control=False))
    assert check_control(_update(), _ctx(control=False)) is None
    with pytest.raises(NonFinite):
        check_control(_update(nan_payload(good)), _ctx())
    with pytest.raises(NonFinite):
        check_control(_update(nan_payload(good, float("inf"))), _ctx())
    with pytest.raises(BadShape):
        check_control(_update(encode_dense({"a": np.zeros((2, 3), np.float32), "b": good["b"]})), _ctx())
    with pytest.raises(BadShape):
        check_control(_update(encode_dense({"a": good["a"]})), _ctx())
    with pytest.raises(BadShape):
        check_control(_update(b"garbage"), _ctx())
    with pytest.raises(NormBound):
        check_control(_update(encode_dense(good)), _ctx(bound=0.1))
    # compressed (sparse, 4-bit) uploads decode to dense arrays
    sent, _, _ = compress_update(good, None, CompressionSpec(quant_bits=4, topk_fraction=0.5), np.random.default_rng(0))
    dense = check_control(_update(encode_tensors(sent)), _ctx())
    assert {k: v.shape for k, v in dense.items()} == SHAPES
    # the duplicate check sees the control too
    assert payload_digest(_update()) != payload_digest(_update(encode_dense(good)))
    assert payload_digest(_update(encode_dense(good))) != payload_digest(_update(encode_dense(_init(4))))


# ------------------------------------------------------------------ config


@pytest.mark.parametrize("name", NAMES)
def test_strategy_from_config_builds_every_name(name):
    cfg = CoordinatorConfig(strategy=name, server_lr=0.2, server_momentum=0.7, server_beta1=0.8, server_beta2=0.95,
                            server_tau=1e-4, prox_mu=0.3)
    strategy = strategy_from_config(cfg)
    assert strategy.name == name and strategy.server_lr == 0.2
    assert strategy.uses_control == (name == "scaffold")
    if name == "fedprox":
        assert strategy.mu == 0.3
    if name == "fedavgm":
        assert strategy.momentum == 0.7
    if name in ("fedadagrad", "fedadam", "fedyogi"):
        assert (strategy.beta1, strategy.beta2, strategy.tau) == (0.8, 0.95, 1e-4)
    default = strategy_from_config(CoordinatorConfig(strategy=name))
    assert default.server_lr == pytest.approx({"fedavgm": 0.1, "fedadagrad": 0.1, "fedadam": 0.03,
                                               "fedyogi": 0.03}.get(name, 1.0))
    assert set(STRATEGIES) == set(NAMES)


@pytest.mark.parametrize("changes", [dict(strategy="fedsgd"), dict(server_lr=-1.0), dict(server_momentum=1.0),
                                     dict(server_beta1=-0.1), dict(server_beta2=1.5), dict(server_tau=0.0),
                                     dict(prox_mu=-0.1), dict(prox_mu=float("nan")), dict(control_norm_bound=-1.0),
                                     dict(strategy="scaffold", hyper=TaskHyper(optimizer="adamw"))])
def test_bad_strategy_config_is_refused(changes):
    with pytest.raises(ConfigError):
        CoordinatorConfig(**changes)


def test_make_strategy_keeps_its_old_callers_and_names_bad_options():
    assert make_strategy("fedavg", TaskHyper()).server_lr == 1.0
    with pytest.raises(ConfigError, match="unknown strategy"):
        make_strategy("nope", TaskHyper())
    with pytest.raises(ConfigError, match="fedavg"):
        make_strategy("fedavg", TaskHyper(), momentum=0.9)
    with pytest.raises(ConfigError):
        make_strategy("fedadam", TaskHyper(), beta2=1.0)


# ------------------------------------------------------------------ end to end


def separable_data(rng, label_mix, n=40, n_test=20):
    """Three Gaussian classes 2.5 sigma apart along fixed directions; labels drawn from `label_mix`."""
    means = 2.5 * np.eye(FEATURES, dtype=np.float32)[:CLASSES]
    y = rng.choice(CLASSES, size=n + n_test, p=label_mix)
    x = (means[y] + rng.normal(size=(n + n_test, FEATURES))).astype(np.float32)
    return LocalData(x[:n], y[:n], x[n:], y[n:])


def toy_sizes(devices: int) -> list[int]:
    """Local examples per device: unequal (16 to 72), so a formula that weighs by example count
    where the paper takes a plain mean, or the reverse, changes the numbers the tests check."""
    return [16 + 8 * ((3 * i) % 8) for i in range(devices)]


def toy_fleet(model, tmp_path, cfg: CoordinatorConfig, devices=8, decline_p=0.0, seed=0, store=None) -> Fleet:
    """A Coordinator with `strategy_from_config(cfg)` and `devices` real agents on non-IID
    separable data (each device mostly sees two of the three classes) of unequal sizes."""
    art, manifest, runtime = model
    broker, clock = InMemoryBroker(), ManualClock()
    coordinator = Coordinator(broker.connect("coordinator"), strategy_from_config(cfg), manifest,
                              runtime.initial("shared"), cfg, clock=clock, store=store)
    coordinator.start()
    spy = broker.connect("spy")
    spy.subscribe(all_devices_topic("update"))
    rng = np.random.default_rng(seed)
    agents = []
    for i in range(devices):
        mix = np.full(CLASSES, 0.05)
        mix[i % CLASSES] += 0.6
        mix[(i + 1) % CLASSES] += 0.3
        coin = np.random.default_rng([seed, i])
        eligibility = (lambda c=coin: "battery_low" if c.random() < decline_p else None) if decline_p else None
        data = separable_data(rng, mix / mix.sum(), n=toy_sizes(devices)[i])
        device = DeviceRuntime(f"dev{i}", data, {manifest.model_id: art},
                               tmp_path / "devices", eligibility=eligibility, abort_check=lambda: None, seed=i)
        agents.append(DeviceAgent(device, broker.connect(f"dev{i}"), clock=clock))
    for agent in agents:
        agent.start()
    fleet = Fleet(broker, coordinator, clock, agents, spy, model)
    fleet.drain()
    return fleet


def run_rounds(fleet: Fleet, rounds: int) -> list:
    records = []
    c = fleet.coordinator
    for _ in range(rounds):
        if c.round is None and not c.begin_round():
            fleet.clock.advance(c.config.pace_idle_s)
        fleet.drain()
        record = c.tick()
        if record is None:  # too few reports: wait for the deadline
            fleet.clock.advance(c.config.round_deadline_s + 1)
            record = c.tick()
        records.append(record)
        fleet.clock.advance(c.config.pace_declined_s + c.config.pace_jitter_s)  # everyone checks in again
        for agent in fleet.agents:
            agent.tick()  # check in again (a device that declined may be eligible now)
        fleet.drain()
    return records


def global_metrics(fleet: Fleet) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the global head over every device's test split."""
    _, manifest, runtime = fleet.model
    hits, losses = [], []
    for agent in fleet.agents:
        device = agent.runtime
        logits = device._backend(device.model(manifest.model_id), "sgd").predict(
            {**fleet.coordinator.state.params, **runtime.initial("personal")},
            runtime.embed(device.data.x_test))["global"]
        y = device.data.y_test
        shifted = logits - logits.max(axis=1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        hits.extend(np.argmax(logits, axis=1) == y)
        losses.extend(-logp[np.arange(len(y)), y])
    return float(np.mean(hits)), float(np.mean(losses))


E2E = dict(clients_per_round=4, over_selection=1.5, min_reports=2, round_deadline_s=60.0,
           hyper=TaskHyper(epochs=1, batch_size=10, lr=0.1),
           compression=CompressionSpec(quant_bits=8, topk_fraction=0.5))


@pytest.mark.parametrize("name", NAMES)
def test_every_strategy_learns_with_partial_participation_declines_and_compression(model, tmp_path, name):
    fleet = toy_fleet(model, tmp_path, CoordinatorConfig(strategy=name, **E2E), decline_p=0.15)
    acc0, loss0 = global_metrics(fleet)
    records = run_rounds(fleet, 16)
    acc, loss = global_metrics(fleet)
    committed = [r for r in records if r.committed]
    assert len(committed) >= 12, [r.why for r in records]
    assert all(r.reports <= 4 for r in committed)  # partial participation: 4 of 8 at most
    assert sum(sum(1 for v in r.declines.values()) for r in records) > 0  # some declined
    assert sum(r.bytes_up for r in committed) < sum(r.bytes_up_dense for r in committed)  # compressed
    # Default server learning rates throughout; ~0.28 / 1.43 at the start.
    assert loss < 0.5 * loss0 and acc >= 0.8, (name, acc0, acc, loss0, loss)
    if name == "scaffold":
        assert any(u.control for u in fleet.updates()) and all(u.control for u in fleet.updates())
        assert np.any(fleet.coordinator.state.extra["control"]["head_global.weight"] != 0)


def test_scaffold_keeps_c_the_mean_of_the_devices_ci(model, tmp_path):
    """c = (1/N) sum_i c_i, with N every known device, through over-selection (late uploads are
    rejected as stale and undone on the device), declines, and lossy compression."""
    # DeviceAgent passes every Ack to DeviceRuntime.on_ack, which undoes a rejected upload's c_i move.
    fleet = toy_fleet(model, tmp_path, CoordinatorConfig(strategy="scaffold", **E2E), decline_p=0.15)
    records = run_rounds(fleet, 8)
    assert fleet.coordinator.rejections.get("stale_round", 0) > 0  # some uploads did come late
    assert sum(r.committed for r in records) >= 6
    _, manifest, runtime = fleet.model
    c = fleet.coordinator.state.extra["control"]
    total = {k: np.zeros(v.shape, np.float64) for k, v in c.items()}
    for agent in fleet.agents:
        c_i = DeviceStore(agent.runtime.state_root / agent.device_id, manifest.model_id).load_control()
        for k in total:
            total[k] += 0 if c_i is None else c_i[k]
    assert np.any(c["head_global.weight"] != 0)
    for k in c:
        np.testing.assert_allclose(c[k], total[k] / len(fleet.agents), atol=1e-6, err_msg=k)


@pytest.mark.parametrize("name", ["fedavg", "fedprox"])
def test_fedavg_weighs_each_update_by_its_examples_on_an_unequal_fleet(model, tmp_path, name):
    """One round of real devices holding 16 to 72 examples: the new model is the old one plus
    sum_i n_i delta_i / sum_i n_i over the accepted updates (McMahan et al.), from the wire bytes."""
    from tests.coordinator.fleet import assert_params, copy_params, fedavg_oracle

    fleet = toy_fleet(model, tmp_path, CoordinatorConfig(strategy=name, aggregator="mean", **E2E))  # the oracle's mean
    c = fleet.coordinator
    old = copy_params(c.state.params)
    assert c.begin_round()
    fleet.drain()
    reported = list(c.round.machine.reported)
    record = c.tick()
    assert record is not None and record.committed and record.reports == len(reported) >= 2
    accepted = [u for u in fleet.updates() if u.round_id == record.round_id and u.device_id in reported]
    assert len(accepted) == len(reported)
    assert len({u.num_examples for u in accepted}) > 1  # unequal, or the weights would not matter
    assert_params(c.state.params, fedavg_oracle(old, accepted))


def test_scaffold_takes_the_plain_mean_of_the_deltas_on_an_unequal_fleet(model, tmp_path):
    """SCAFFOLD's server step as the paper writes it, from the wire bytes of two rounds of real
    devices holding 16 to 72 examples (weighting left at its default, "examples"):
    x <- x + mean_i Δy_i and c <- c + (|S| / N) mean_i Δc_i, both plain means. The deltas were
    weighted by examples once, while c stays the plain mean of the c_i: the corrections c - c_i
    then no longer cancel in the server step, and a pretrained fleet on Dirichlet 0.1 collapsed."""
    from tests.coordinator.fleet import assert_params, copy_params

    cfg = CoordinatorConfig(strategy="scaffold", aggregator="mean", **{**E2E, "over_selection": 1.0})
    assert cfg.weighting == "examples"
    fleet = toy_fleet(model, tmp_path, cfg)
    c = fleet.coordinator
    for _ in range(2):  # the second round trains with c != 0
        x, control = copy_params(c.state.params), copy_params(c.state.extra["control"])
        assert c.begin_round()
        fleet.drain()
        record = c.tick()
        assert record is not None and record.committed
        accepted = [u for u in fleet.updates() if u.round_id == record.round_id]
        assert len(accepted) == record.reports >= 2 and len({u.num_examples for u in accepted}) > 1
        deltas = [decompress_update(decode_tensors(u.payload)) for u in accepted]
        dcs = [decompress_update(decode_tensors(u.control)) for u in accepted]
        assert_params(c.state.params, {k: x[k] + np.mean([d[k] for d in deltas], axis=0, dtype=np.float64)
                                       for k in x})
        share = len(accepted) / len(fleet.agents)
        assert_params(c.state.extra["control"],
                      {k: control[k] + share * np.mean([d[k] for d in dcs], axis=0, dtype=np.float64)
                       for k in control})
        fleet.clock.advance(c.config.pace_declined_s + c.config.pace_jitter_s)  # everyone checks in again
        for agent in fleet.agents:
            agent.tick()
        fleet.drain()
