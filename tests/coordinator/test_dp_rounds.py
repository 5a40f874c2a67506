"""DP-FedAvg in the coordinator's rounds (coordinator/dp/round.py, budget.py), over the in-memory
broker: the config rules, the clip on both sides, the noised fixed-denominator mean against an
oracle built from the wire, the ledger committed with the round (and charged when the guard
abandons it), the same noise after a restart, and the budget's refusal at the round that
dp-accounting, called directly, says exceeds the target."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from fedge.coordinator import server as server_module
from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.dp.config import PrivacyConfig
from fedge.coordinator.dp.mechanism import clip_to_norm, global_norm
from fedge.coordinator.dp.report import privacy_report, read_ledger
from fedge.coordinator.sampling import poisson_sample, sample_devices
from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.tools.cli import main
from tests.coordinator.fleet import ManualDevice, copy_params, decoded, make_fleet, random_delta
from tests.coordinator.test_dp import _direct
from tests.tiny_model import build_tiny_model

S = 0.05  # small enough that the tiny model's real deltas are clipped


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _privacy(**kw) -> PrivacyConfig:
    return PrivacyConfig(**{"enabled": True, "noise_multiplier": 1.0, "clip_norm": S, "target_epsilon": 50.0,
                            "delta": 1e-5, **kw})


DP = {"aggregator": "mean", "weighting": "equal"}


@pytest.mark.parametrize("bad,named", [
    ({"aggregator": "norm_bound"}, "aggregator = 'mean'"), ({"aggregator": "median"}, "aggregator = 'mean'"),
    ({"weighting": "examples"}, "weighting = 'equal'"), ({"strategy": "scaffold"}, "scaffold"),
    ({"norm_bound": 2.0}, "norm_bound"),
    ({"compression": {"clip_norm": 1.0}}, "compression.clip_norm")])
def test_privacy_refuses_what_it_cannot_account_for_by_name(bad, named):
    from fedge.edge_runtime.kernel.protocol import CompressionSpec
    cfg = {**DP, "privacy": _privacy(), **bad}
    if isinstance(cfg.get("compression"), dict):
        cfg["compression"] = CompressionSpec(**cfg["compression"])
    with pytest.raises(ConfigError, match=named.replace("(", r"\(")):
        CoordinatorConfig(**cfg)


def test_privacy_sends_its_clip_bound_in_every_task():
    cfg = CoordinatorConfig(**DP, privacy=_privacy())
    assert cfg.compression.clip_norm == S
    assert CoordinatorConfig().compression.clip_norm == 0.0  # off: untouched


def _round(fleet) -> object:
    """Let every device answer, then tick until the round closes; the record."""
    c = fleet.coordinator
    for _ in range(50):
        fleet.drain()
        fleet.clock.advance(1.0)
        record = c.tick()
        if record is not None:
            return record
    raise AssertionError("the round did not close")


def test_real_devices_clip_and_the_coordinator_adds_the_keyed_noise_to_the_fixed_denominator_mean(model, tmp_path):
    fleet = make_fleet(model, tmp_path, sizes=(30, 40, 25, 35), **DP, privacy=_privacy())
    c = fleet.coordinator
    old = copy_params(c.state.params)
    assert c.begin_round()
    key = c.round.privacy.noise_key  # the open round's: its close forgets it (stored.closed_plan)
    record = _round(fleet)
    assert record.committed and record.reports == 4
    assert {t.compression.clip_norm for t in fleet.tasks()} == {S}
    deltas = [decoded(u) for u in fleet.updates()]
    norms = [global_norm(d) for d in deltas]
    assert all(n <= S * (1 + 1e-6) for n in norms), norms  # the device's clip: fp32 on the wire, exact
    # each device reports the norm it clipped from (adaptive clipping's input)
    assert all(u.metrics["norm"] >= n * (1 - 1e-6) for u, n in zip(fleet.updates(), norms))
    assert any(u.metrics["norm"] > S for u in fleet.updates())  # the clip was at work
    # Oracle from the wire: sum of clip(Δ_i), plus N(0, (zS)^2) drawn from (the round's noise key,
    # seed, round), over W = 4.
    [charge] = c.store.privacy_ledger()
    assert (charge["population"], charge["cohort"], charge["expected_cohort"]) == (4, 4, 4)
    total = {k: sum(clip_to_norm(d, S)[0][k] for d in deltas) for k in deltas[0]}

    def released(entropy):
        rng = np.random.default_rng(entropy)
        noise = {k: rng.normal(0.0, 1.0 * S, size=np.shape(v)) for k, v in total.items()}
        return {k: old[k] + ((total[k] + noise[k]) / 4).astype(np.float32) for k in old}
    assert "noise_key" not in charge
    want = released([int(key, 16), c.config.seed, record.round_id])
    for k in old:
        np.testing.assert_allclose(c.state.params[k], want[k], rtol=1e-6, atol=1e-7, err_msg=k)
    # Not from (seed, round) alone: the seed is in the config (0 by default), and whoever knows it
    # could draw that noise, subtract it from the released model and read the noiseless sum.
    guessed = released([c.config.seed, record.round_id])
    assert all(np.max(np.abs(c.state.params[k] - guessed[k])) > 10 * S / 4 * 1e-3 for k in old)


@pytest.mark.parametrize("sampling", ["fixed", "poisson"])
def test_a_dp_round_draws_its_cohort_with_its_noise_key_not_from_the_seed_alone(model, tmp_path, sampling):
    """Amplification by sampling (what the charge's SampledWithoutReplacement or PoissonSampled
    event claims) needs a sample the adversary does not know: from (seed, round, eligible
    devices) alone anyone who knows the config could name the cohort."""
    key = "ab" * 16
    fleet = make_fleet(model, tmp_path, clients_per_round=4, **DP, privacy=_privacy(sampling=sampling))
    ids = [ManualDevice(fleet, f"d{i:02d}", 10).id for i in range(40)]
    fleet.drain()
    c = fleet.coordinator
    c.privacy.noise_key = lambda round_id: key
    assert c.begin_round()
    selected, round_id = c.round.machine.selected, c.round.ctx.round_id
    assert c.round.privacy.noise_key == key
    if sampling == "fixed":  # oracle: numpy's choice without replacement, from (seed, round, key)
        pool = sorted(ids)
        rng = np.random.default_rng([c.config.seed, round_id, int(key, 16)])
        want = sorted(pool[i] for i in rng.choice(len(pool), size=4, replace=False))
        unkeyed = sample_devices(ids, 4, c.config.seed, round_id)
    else:  # oracle: each device by its own uniform against q = 4 / 40
        rng = np.random.default_rng([c.config.seed, round_id, 0x9015, 0, int(key, 16)])
        want = [d for d, u in zip(sorted(ids), rng.random(len(ids))) if u < 0.1]
        unkeyed = poisson_sample(ids, 0.1, c.config.seed, round_id)
    assert list(selected) == want and list(selected) != unkeyed


def test_each_round_has_a_fresh_noise_key_from_the_os(model, tmp_path):
    """Two coordinators with the same config (seed included) key their rounds differently, and a
    coordinator's next round gets another key: the noise cannot be drawn again from the config."""
    keys = []
    for run in range(2):
        (tmp_path / str(run)).mkdir()
        fleet = make_fleet(model, tmp_path / str(run), sizes=(30, 40), **DP, privacy=_privacy())
        for _ in range(2):
            assert fleet.coordinator.begin_round()
            keys.append(fleet.coordinator.round.privacy.noise_key)
            assert _round(fleet).committed
    assert len(set(keys)) == 4 and all(len(k) == 32 and int(k, 16) >= 0 for k in keys)


def test_the_coordinator_clips_every_accepted_update_and_never_rejects_one(model, tmp_path):
    fleet = make_fleet(model, tmp_path, clients_per_round=5, **DP, privacy=_privacy())
    devices = [ManualDevice(fleet, f"m{i}", 10) for i in range(5)]
    fleet.drain()
    shapes = fleet.coordinator.shapes
    rng = np.random.default_rng(3)
    assert fleet.coordinator.begin_round()
    fleet.drain()
    for i, m in enumerate(devices):  # norms from S / 10 to 100 S: a device that did not clip
        m.send(encode_message(m.update(random_delta(shapes, rng, scale=S * 10.0 ** (i - 2)))))
    fleet.drain()
    agg = fleet.coordinator.round.aggregator
    assert agg.count == 5 and agg.clipped >= 2 and agg.max_norm <= S * (1 + 1e-9)
    assert all(m.acks() == [(True, "")] for m in devices)
    assert _round(fleet).committed


def _manual_round(fleet, devices, rng) -> object:
    c = fleet.coordinator
    fleet.drain()
    chosen = set(c.round.machine.selected)
    for m in devices:
        if m.id in chosen:
            m.send(encode_message(m.update(random_delta(c.shapes, rng), update_id=f"r{c.round.ctx.round_id}")))
    return _round(fleet)


@pytest.mark.parametrize("over_selection", [1.0, 1.3])
@pytest.mark.parametrize("restart", [False, True])
def test_the_budget_refuses_the_first_round_dp_accounting_says_exceeds_it(model, tmp_path, over_selection, restart,
                                                                           capsys):
    """Must-show 2 in process: ε = 3, z = 2 (1.0 replace-one), δ = 1e-5, 100 wanted of 1,000 eligible; the devices
    asked (130 with over-selection) are the sampling event. With `restart`, a new Coordinator on
    the same SQLite file after every round."""
    population, wanted = 1000, 100
    asked = int(np.ceil(wanted * over_selection))
    # fedge's z is noise over the clip S; replacing one device moves the sum by 2S, so z = 2 is the issue's
    # "z = 1.0" in dp-accounting's replace-one terms (coordinator/dp/accountant.py), and refuses round 3.
    z = 2.0
    refused = 1
    while _direct("fixed", population, asked, z, refused, 1e-5) <= 3.0:
        refused += 1
    store = RoundStore(tmp_path / "state.db")
    cfg = dict(clients_per_round=wanted, over_selection=over_selection, min_reports=wanted, **DP,
               privacy=_privacy(target_epsilon=3.0, noise_multiplier=z))
    fleet = make_fleet(model, tmp_path, store=store, **cfg)
    devices = [ManualDevice(fleet, f"d{i:04d}", 10) for i in range(population)]
    rng = np.random.default_rng(0)
    fleet.drain()
    while fleet.coordinator.begin_round():
        assert _manual_round(fleet, devices, rng).committed
        if fleet.coordinator.state.version == 1:  # `fedge coordinator privacy` after the first round
            assert main(["coordinator", "privacy", "--state", str(tmp_path / "state.db"), "--json"]) == 0
            report = json.loads(capsys.readouterr().out)
            assert report["rounds_charged"] == 1 and report["rounds_left"] == refused - 2
        if restart:
            fleet.restart(store=RoundStore(tmp_path / "state.db"))
            fleet.drain()
    c = fleet.coordinator
    ledger = c.store.privacy_ledger()
    assert len(ledger) == refused - 1 == c.state.version
    assert c.privacy.exhausted is not None and c.privacy.exhausted.epsilon_after > 3.0
    assert ledger[-1]["epsilon_after"] == pytest.approx(_direct("fixed", population, asked, z, refused - 1, 1e-5),
                                                        abs=1e-6)
    assert c.privacy.exhausted.epsilon_after == pytest.approx(_direct("fixed", population, asked, z, refused, 1e-5),
                                                              abs=1e-6)
    assert all((e["population"], e["cohort"]) == (population, asked) for e in ledger)
    assert c.store.next_round_id() == refused and c.round is None  # the refused round never opened
    assert not c.begin_round()  # and stays refused
    report = privacy_report(read_ledger(tmp_path / "state.db"))
    assert report["rounds_left"] == 0 and report["rounds_charged"] == refused - 1
    assert report["epsilon_spent"] == pytest.approx(_direct("fixed", population, asked, z, refused - 1, 1e-5),
                                                    abs=1e-6)
    assert main(["coordinator", "privacy", "--state", str(tmp_path / "state.db")]) == 0
    assert f"over {refused - 1} rounds" in capsys.readouterr().out


def test_a_round_the_guard_abandons_after_noising_is_charged_and_one_without_reports_is_not(model, tmp_path,
                                                                                            monkeypatch):
    fleet = make_fleet(model, tmp_path, clients_per_round=2, min_reports=2, round_deadline_s=5.0,
                       store=RoundStore(tmp_path / "s.db"), **DP, privacy=_privacy())
    devices = [ManualDevice(fleet, f"m{i}", 10) for i in range(2)]
    fleet.drain()
    c = fleet.coordinator
    assert c.begin_round()
    record = _round(fleet)  # nobody answers: abandoned at the deadline, nothing computed
    assert not record.committed and c.store.privacy_ledger() == []
    monkeypatch.setattr(server_module, "commit_fault", lambda *_: "holdout_regressed: refused by the test")
    assert c.begin_round()
    record = _manual_round(fleet, devices, np.random.default_rng(1))
    assert not record.committed and c.state.version == 0
    assert [e["cohort"] for e in c.store.privacy_ledger()] == [2]
    assert c.privacy.metrics.charged._value.get() == 1


@pytest.mark.parametrize("quantile", [0.0, 0.5])
def test_a_restart_mid_round_releases_the_same_noised_model(model, tmp_path, quantile):
    """With adaptive clipping too: the next S (in ServerState.extra) comes out the same."""
    def run(crash: bool):
        path = tmp_path / f"{crash}.db"
        fleet = make_fleet(model, tmp_path / str(crash), clients_per_round=3, store=RoundStore(path), **DP,
                           privacy=_privacy(target_quantile=quantile))
        devices = [ManualDevice(fleet, f"m{i}", 10) for i in range(3)]
        fleet.drain()
        rng = np.random.default_rng(5)
        # One key for both runs (each would draw its own from the OS); the restarted coordinator's
        # own would be another: the round must keep the one its stored plan holds.
        fleet.coordinator.privacy.noise_key = lambda round_id: "5eed" * 8
        assert fleet.coordinator.begin_round()
        fleet.drain()
        updates = [m.update(random_delta(fleet.coordinator.shapes, rng, scale=0.1), metrics={"norm": 0.01 * i})
                   for i, m in enumerate(devices)]
        for m, u in zip(devices, updates):
            m.send(encode_message(u))
            fleet.drain()
            if crash and m.id == "m1":
                fleet.restart(store=RoundStore(path))
                assert fleet.coordinator.round.privacy is not None
        record = _round(fleet)
        assert record.committed
        state = fleet.coordinator.state
        return {**state.params, **state.extra.get("dp", {})}, fleet.coordinator.store.privacy_ledger()

    (a, ledger_a), (b, ledger_b) = run(False), run(True)
    assert ("clip_norm" in a) == bool(quantile)
    assert set(a) == set(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert ledger_a == ledger_b and len(ledger_a) == 1


def test_calibrated_z_is_kept_across_rounds(model, tmp_path):
    fleet = make_fleet(model, tmp_path, clients_per_round=2, **DP,
                       privacy=_privacy(noise_multiplier=0.0, rounds=20, target_epsilon=8.0))
    devices = [ManualDevice(fleet, f"m{i}", 10) for i in range(8)]
    rng = np.random.default_rng(2)
    zs = []
    for _ in range(2):
        fleet.drain()
        assert fleet.coordinator.begin_round()
        zs.append(fleet.coordinator.round.privacy.noise_multiplier)
        assert _manual_round(fleet, devices, rng).committed
    assert zs[0] == zs[1] > 0
    assert _direct("fixed", 8, 2, zs[0], 20, 1e-5) <= 8.0


def test_privacy_off_changes_nothing(model, tmp_path):
    fleet = make_fleet(model, tmp_path, sizes=(10, 12))
    assert fleet.coordinator.begin_round()
    assert _round(fleet).committed and fleet.coordinator.store.privacy_ledger() == []
    assert fleet.coordinator.round is None and not dataclasses.asdict(fleet.coordinator.config.privacy)["enabled"]


def test_the_privacy_command_reads_an_empty_or_missing_ledger(tmp_path, capsys):
    RoundStore(tmp_path / "s.db").close()
    assert main(["coordinator", "privacy", "--state", str(tmp_path / "s.db")]) == 0
    assert "no round charged" in capsys.readouterr().out
    assert main(["coordinator", "privacy", "--state", str(tmp_path / "missing.db")]) == 2


@pytest.mark.parametrize("on_exhausted", ["stop", "wait"])
def test_the_loop_ends_the_job_or_waits_when_the_budget_refuses(model, tmp_path, on_exhausted):
    from fedge.coordinator.loop import CoordinatorLoop
    # one round of 2 of 2 devices at z = 1 costs more than ε = 1: the first round is refused
    fleet = make_fleet(model, tmp_path, clients_per_round=2, **DP,
                       privacy=_privacy(target_epsilon=1.0, on_exhausted=on_exhausted))
    for i in range(2):
        ManualDevice(fleet, f"m{i}", 10)
    fleet.drain()
    loop = CoordinatorLoop(fleet.coordinator, min_devices=2)
    loop._maybe_begin()
    assert fleet.coordinator.round is None and fleet.coordinator.store.next_round_id() == 1
    assert fleet.coordinator.privacy.metrics.exhausted._value.get() == 1
    if on_exhausted == "stop":
        assert loop.exhausted is fleet.coordinator.privacy.exhausted and loop.finishing
    else:
        assert loop.exhausted is None and not loop.finishing and loop.next_begin >= fleet.clock.now() + 5.0


@pytest.mark.parametrize("quant_bits", [32, 8])
def test_top_k_under_dp_sends_the_clipped_delta_sparsified(model, tmp_path, quant_bits):
    """Clip, then sparsify: a subset of a vector's entries has at most its norm, so what is sent
    stays within S (fp32 exactly; int8 within its rounding, which the coordinator clips)."""
    from fedge.edge_runtime.kernel.protocol import CompressionSpec
    fleet = make_fleet(model, tmp_path, sizes=(30, 40, 25, 35), **DP, privacy=_privacy(),
                       compression=CompressionSpec(quant_bits=quant_bits, topk_fraction=0.25))
    c = fleet.coordinator
    assert c.begin_round()
    assert _round(fleet).committed
    assert {(t.compression.clip_norm, t.compression.topk_fraction) for t in fleet.tasks()} == {(S, 0.25)}
    for update in fleet.updates():
        delta = decoded(update)
        assert global_norm(delta) <= S * (1 + (1e-6 if quant_bits == 32 else 0.02))
        assert any(update.metrics["norm"] > S for update in fleet.updates())  # the clip was at work
        for name, value in delta.items():  # at most a quarter of each tensor's entries (rounded up)
            assert np.count_nonzero(value) <= int(np.ceil(0.25 * value.size)), name
    assert c.store.privacy_ledger()[0]["cohort"] == 4
