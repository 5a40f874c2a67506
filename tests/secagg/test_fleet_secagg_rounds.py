"""Secure rounds end to end in memory, honest fleets: a real Coordinator and real DeviceAgents
(DeviceRuntime, ONNX training) over the in-memory broker, through the four stages. The
committed model is the plain FedAvg (equal weights) of the same quantized updates, bit for bit
in the sum, with and without a device that drops at any stage; restarts, second rounds and the
devices' answered-unmask records; the settings a secure round refuses by name; and the
simulator's secure rounds. Hostile peers and sidelining: test_fleet_secagg_hostile.py."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig, load_coordinator_config
from fedge.coordinator.dp.config import PrivacyConfig
from fedge.coordinator.secagg.config import SecAggConfig, SecureAggregationConflict
from fedge.coordinator.store import RoundStore
from fedge.edge_runtime import secagg_participant
from fedge.edge_runtime.kernel.protocol import CompressionSpec, Decline, Update
from fedge.edge_runtime.kernel.secagg.messages import (
    EncryptedShares,
    KeyDirectory,
    MaskedInput,
    SecAggTask,
    UnmaskRequest,
    UnmaskResponse,
)
from fedge.edge_runtime.kernel.secagg.packing import unpack
from tests.coordinator.fleet import copy_params, make_fleet
from tests.secagg.fleet_round import SECURE, SETTINGS, _expected_mean, _flat, _run_round


@pytest.mark.parametrize("drop", [False, True])
def test_a_sparse_graph_sends_packed_shares_and_commits_the_plain_mean(model, tmp_path, drop):
    """10 devices with k = 6 configured: a sparse graph, so packed shares (8 bytes, 32-byte boxes;
    t = k/2 + 2 = 5), through the real coordinator and devices; with one drop after key sharing
    the survivors reveal its mask-key shares and the sum is still the plain mean."""
    settings = dict(SETTINGS, secure_aggregation=dataclasses.replace(SECURE, neighbours=6))
    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16, 24, 18, 14, 22, 10, 26, 15), **settings)
    agents = list(fleet.agents)
    old = copy_params(fleet.coordinator.state.params)
    gone = "dev2" if drop else ""
    record = _run_round(fleet, drop_at_stage=2, drop=gone)
    assert record.committed, record.why
    survivors = {a.device_id for a in agents} - {gone}
    fleet.agents = agents
    got = _flat(fleet.coordinator.state.params) - _flat(old)
    np.testing.assert_allclose(got, _expected_mean(fleet, survivors), rtol=0, atol=1e-6)
    directories = [m for m in fleet.wire if isinstance(m, KeyDirectory)]
    assert directories and all((m.neighbours, m.threshold) == (6, 5) for m in directories)
    shares = [m for m in fleet.wire if isinstance(m, EncryptedShares)]
    assert len(shares) == 10 and all(len(m.boxes) == 6 * 32 for m in shares)  # packed: 2 x 8 + 16-byte tag
    answers = [m for m in fleet.wire if isinstance(m, UnmaskResponse)]
    assert answers and all(len(m.values) % 8 == 0 and len(m.values) <= 6 * 8 for m in answers)


@pytest.mark.parametrize("drop", [False, True])
def test_a_secure_round_commits_the_plain_mean_of_the_quantized_updates(model, tmp_path, drop):
    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16, 24, 18), **SETTINGS)
    agents = list(fleet.agents)
    old = copy_params(fleet.coordinator.state.params)
    gone = "dev2" if drop else ""
    record = _run_round(fleet, drop_at_stage=2, drop=gone)  # stage 2: masked input (after key sharing)
    assert record.committed, record.why
    survivors = {a.device_id for a in agents} - {gone}
    assert record.reports == len(survivors)
    fleet.agents = agents
    expected = _expected_mean(fleet, survivors)
    new = fleet.coordinator.state.params
    got = _flat(new) - _flat(old)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # the coordinator never saw an Update; it saw masked inputs, none equal to a device's input
    assert not any(isinstance(m, Update) for m in fleet.wire)
    assert sum(isinstance(m, SecAggTask) for m in fleet.wire) == 5
    masked = [m for m in fleet.wire if isinstance(m, MaskedInput)]
    assert len(masked) == len(survivors)
    # A 16-bit mask coordinate is 0 (masked == own) with probability 2^-16: counted over every
    # device's coordinates, not per device, where one such coincidence among ~67 failed the bound
    same = [unpack(m.data, m.length, m.field_bits) == next(iter(
        next(a for a in agents if a.device_id == m.device_id).secagg.inputs.values()))[0] for m in masked]
    assert np.mean(np.concatenate(same)) < 0.01
    if drop:
        (request,) = [m for m in fleet.wire if isinstance(m, UnmaskRequest)][:1]
        assert request.dropped == (gone,) and gone not in request.alive


def test_a_device_without_the_model_fetches_it_and_joins_the_secure_round(model, tmp_path):
    """A secure round's task once went straight to the participant, which declined for want of
    the model (`artifact`): a fleet whose devices were not given the model by hand abandoned
    every round. Now the model is fetched first, as for a plain task."""
    from fedge.edge_runtime.agent import DeviceAgent
    from fedge.edge_runtime.device import DeviceRuntime
    from tests.coordinator.fleet import local_data

    art, manifest, _ = model
    fleet = make_fleet(model, tmp_path, sizes=(12, 20), artifacts_dir=str(art),
                       **{**SETTINGS, "clients_per_round": 3})
    runtime = DeviceRuntime("fresh", local_data(np.random.default_rng(3), 16), {}, tmp_path / "devices")
    agent = DeviceAgent(runtime, fleet.broker.connect("fresh"), clock=fleet.clock)
    agent.start()
    fleet.agents.append(agent)
    fleet.drain()
    record = _run_round(fleet)
    assert record.committed and record.reports == 3, record.why
    assert manifest.model_id in runtime.model_dirs
    assert not [d for d in fleet.wire if isinstance(d, Decline)]


@pytest.mark.parametrize("stage", [0, 1, 3])
def test_a_drop_at_any_other_stage_still_commits_the_survivors_mean(model, tmp_path, stage):
    """0: before advertising (not in the cohort); 1: after advertising, before sharing (its
    neighbours never mask with it); 3: silent in the unmask stage (its input counts, its
    self-mask comes back from its neighbours' shares)."""
    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16, 24, 18), **SETTINGS)
    agents = list(fleet.agents)
    old = copy_params(fleet.coordinator.state.params)
    record = _run_round(fleet, drop_at_stage=stage, drop="dev3")
    assert record.committed, record.why
    survivors = {a.device_id for a in agents} - ({"dev3"} if stage < 3 else set())
    fleet.agents = agents
    got = _flat(fleet.coordinator.state.params) - _flat(old)
    np.testing.assert_allclose(got, _expected_mean(fleet, survivors), rtol=0, atol=1e-6)


def test_a_restart_mid_round_abandons_it_and_stores_no_individual_update(model, tmp_path):
    path = tmp_path / "state.db"
    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16), store=RoundStore(path), **SETTINGS)
    c = fleet.coordinator
    assert c.begin_round()
    while c.round.machine.stage < 3:  # masked inputs are in, the unmask requests out
        fleet.drain()
        c.tick()
        fleet.clock.advance(1.0)
    again = fleet.restart(store=RoundStore(path))  # the old process is dropped, as by kill -9
    assert again.round is None and again.history[-1].committed is False
    assert "cannot resume" in again.history[-1].why
    assert again.state.version == 0
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM updates").fetchone()[0] == 0
    fleet.drain()
    assert again.begin_round()  # the next round opens under a new id
    assert again.round.ctx.round_id == 2


def test_a_second_round_runs_from_the_committed_model(model, tmp_path):
    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16), **SETTINGS)
    assert _run_round(fleet).committed
    assert _run_round(fleet).committed
    assert fleet.coordinator.state.version == 2


def test_a_coordinator_on_a_new_state_database_gets_its_round_1_answered(model, tmp_path):
    """Round ids start over with a new state database. The devices' record of having answered
    round 1 once declined the new round 1 at its last stage (secagg_already_answered), after every
    device had trained: a fleet stalled until someone deleted the records."""
    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16), store=RoundStore(tmp_path / "a.db"), **SETTINGS)
    assert _run_round(fleet).committed
    fleet.restart(RoundStore(tmp_path / "b.db"))
    fleet.drain()  # the devices check in with the new coordinator (its announcement names a new session)
    record = _run_round(fleet)
    assert record.round_id == 1 and record.committed and record.reports == 3, record.why


def test_a_device_keeps_only_its_newest_answered_unmask_records(model, tmp_path, monkeypatch):
    """One file per secure round was kept for ever; a new secure task now prunes the old ones
    (a record guards only the task whose session the device holds)."""
    monkeypatch.setattr(secagg_participant, "KEEP_ANSWERED", 1)
    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16), **SETTINGS)
    foreign = fleet.agents[0].secagg.answered_dir / "notes.txt"
    for _ in range(3):
        assert _run_round(fleet).committed
        foreign.parent.mkdir(parents=True, exist_ok=True)
        foreign.write_text("an operator's file")
    for agent in fleet.agents:
        names = sorted(p.name for p in agent.secagg.answered_dir.iterdir() if p.name != "notes.txt")
        assert [n.split("-")[1] for n in names] == ["2", "3"], names  # the one kept and round 3's own
    assert foreign.read_text() == "an operator's file"


def test_prune_answered_keeps_the_newest_by_time_and_only_its_own_names(tmp_path):
    names = [f"round-{r}-{r:032x}" for r in (5, 1, 9, 3)]  # a new coordinator counts rounds from 1 again
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(b"t")
        os.utime(tmp_path / name, ns=(10**9 * i, 10**9 * i))
    (tmp_path / "round-2-short").write_bytes(b"x")
    secagg_participant.prune_answered(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names[2], names[3], "round-2-short"])
    secagg_participant.prune_answered(tmp_path / "missing", 2)  # no folder yet: nothing to do


@pytest.mark.parametrize("settings,reason", [
    ({"aggregator": "norm_bound"}, "secagg_robust_aggregator"),
    ({"aggregator": "krum"}, "secagg_robust_aggregator"),
    ({"norm_bound": 3.0}, "secagg_norm_bound"),
    ({"weighting": "examples"}, "secagg_weighting"),
    ({"strategy": "scaffold"}, "secagg_scaffold"),
    ({"model_part_bytes": 4096}, "secagg_model_parts"),
    ({"clients_per_round": 1}, "secagg_quorum"),
    ({"privacy": PrivacyConfig(enabled=True, noise_multiplier=1.0, clip_norm=4.0)}, "secagg_privacy"),
    ({"clients_per_round": 4, "min_reports": 1}, "secagg_quorum"),
    ({"compression": CompressionSpec(clip_norm=0.0), "secure_aggregation": SecAggConfig(enabled=True)},
     "secagg_no_clip_range"),
    # the devices quantize into the field and send every coordinate: these would do nothing
    ({"compression": CompressionSpec(quant_bits=4, clip_norm=4.0)}, "secagg_compression"),
    ({"compression": CompressionSpec(quant_bits=32, topk_fraction=0.1, clip_norm=4.0)}, "secagg_compression"),
    # colluders the cohort cannot hide a device from: every round would be abandoned (it loaded)
    ({"clients_per_round": 5, "secure_aggregation": SecAggConfig(enabled=True, clip_range=0.5, corrupt=0.5)},
     "secagg_too_many_corrupt"),
    # m = 24 + ceil(log2 390) = 33 bits: the 32-bit mask words would wrap the sum (loaded, and wrapped)
    ({"clients_per_round": 300, "secure_aggregation": SecAggConfig(enabled=True, bits=24, clip_range=0.5)},
     "secagg_field_bits"),
])
def test_settings_that_need_individual_updates_are_refused_by_name(settings, reason):
    base = {"aggregator": "mean", **SETTINGS, **settings}
    with pytest.raises(SecureAggregationConflict) as exc:
        CoordinatorConfig(**base)
    assert exc.value.reason == reason and f"({reason})" in str(exc.value)


def test_the_widest_field_that_fits_the_mask_words_loads():
    """b = 24 with 256 devices asked is m = 32 exactly: allowed (one more device is refused above)."""
    sa = SecAggConfig(enabled=True, bits=24, clip_range=0.5)
    CoordinatorConfig(**{"aggregator": "mean", **SETTINGS, "secure_aggregation": sa, "clients_per_round": 256,
                         "over_selection": 1.0})


def test_a_weak_threshold_is_refused_at_load():
    with pytest.raises(Exception, match="exceed neighbours / 2"):
        SecAggConfig(enabled=True, neighbours=10, threshold=5)


def test_the_readme_config_block_loads(tmp_path):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Secure aggregation"):]
    block = section[section.index("```toml") + len("```toml"):section.index("```", section.index("```toml") + 7)]
    (tmp_path / "c.toml").write_text(block)
    cfg = load_coordinator_config(tmp_path / "c.toml")
    assert cfg.secure_aggregation.enabled and cfg.secure_aggregation.bits == 16
    assert cfg.compression.clip_norm == 4.0


def test_the_simulator_runs_secure_rounds(tmp_path):
    """`fedge simulate` with [coordinator.secure_aggregation]: every round commits; the devices
    over-selected past the first stage's target are refused as stale, nothing else."""
    from fedge.tools.simulate.config import SIM_COORDINATOR, SimConfig
    from fedge.tools.simulate.fleet import run_simulation

    coordinator = dataclasses.replace(SIM_COORDINATOR, clients_per_round=5, aggregator="mean", **SETTINGS)
    result = run_simulation(SimConfig(devices=8, rounds=2, dataset="digits", coordinator=coordinator,
                                      out_dir=str(tmp_path / "sim")))
    assert [r["committed"] for r in result.rounds] == [True, True]
    assert set(result.summary["rejections"]) <= {"stale_round"}
    # the same messages as dense fp32: each masked coordinate's 16 field bits as 32 (it once said 0)
    from fedge.tools.simulate.report import summarize

    final = summarize(result)
    assert final["total_bytes_up"] < final["total_bytes_up_dense"] < 2 * final["total_bytes_up"]


def test_a_device_whose_delta_cannot_be_masked_declines_and_the_run_goes_on(tmp_path):
    """`--attack nan` under secure aggregation: a NaN delta has no field encoding. The attacker's
    own participant declines (it once raised out of the device and ended the whole run)."""
    from fedge.tools.simulate.config import SIM_COORDINATOR, SimConfig
    from fedge.tools.simulate.fleet import run_simulation

    coordinator = dataclasses.replace(SIM_COORDINATOR, clients_per_round=4, aggregator="mean", **SETTINGS)
    result = run_simulation(SimConfig(devices=8, rounds=2, dataset="digits", coordinator=coordinator, attack="nan",
                                      attackers=0.25))
    assert len(result.rounds) == 2 and any(r["committed"] for r in result.rounds)
    assert result.summary["declines"].get("secagg_failed", 0) >= 1, result.summary["declines"]


def test_a_repeated_key_directory_gets_the_same_boxes_again(model, tmp_path):
    from fedge.edge_runtime.kernel.secagg.messages import EncryptedShares, KeyDirectory

    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16), **SETTINGS)
    c = fleet.coordinator
    assert c.begin_round()
    while not any(isinstance(m, EncryptedShares) for m in fleet.wire):
        fleet.drain()
        c.tick()
        fleet.clock.advance(1.0)
    agent = fleet.agents[0]
    directory = next(m for m in fleet.wire if isinstance(m, KeyDirectory) and m.device_id == agent.device_id)
    agent.secagg.on_message(directory)
    fleet.drain()
    sent = [m for m in fleet.wire if isinstance(m, EncryptedShares) and m.device_id == agent.device_id]
    assert len(sent) == 2 and sent[0] == sent[1]


def test_a_shared_random_subset_is_sent_and_the_rest_kept_on_the_device(model, tmp_path):
    from fedge.edge_runtime.kernel.secagg.shared_encoding import decode_mean
    from fedge.edge_runtime.store import DeviceStore

    sparse = dataclasses.replace(SECURE, keep_fraction=0.25)
    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16), **{**SETTINGS, "secure_aggregation": sparse})
    old = copy_params(fleet.coordinator.state.params)
    assert _run_round(fleet).committed
    got = _flat(fleet.coordinator.state.params) - _flat(old)
    values = [next(iter(a.secagg.inputs.values())) for a in fleet.agents]
    spec = values[0][2]
    assert spec.keep_fraction == 0.25 and values[0][0].size == round(0.25 * got.size)
    total = np.sum(np.stack([v[0] for v in values]).astype(np.int64), axis=0)
    np.testing.assert_allclose(got, decode_mean(total, 3, got.size, spec), rtol=0, atol=1e-6)
    assert np.count_nonzero(got) <= values[0][0].size  # nothing moved off the subset
    agent = fleet.agents[0]
    residual = DeviceStore(agent.runtime.state_root / agent.device_id, fleet.model[1].model_id).load_residual()
    assert residual is not None and sum(float(np.abs(r).sum()) for r in residual.values()) > 0


def test_a_secure_round_never_starts_with_fewer_eligible_devices_than_the_quorum(model, tmp_path):
    """The quorum (>= 2, SecAggConfig's secagg_quorum) is what makes a revealed sum a sum: a round
    capped to the one eligible device would unmask that device's update on its own."""
    fleet = make_fleet(model, tmp_path, sizes=(12,), clients_per_round=3, min_reports=2, **SETTINGS)
    assert fleet.coordinator.begin_round() is False
    assert fleet.coordinator.round is None
    assert not any(isinstance(m, SecAggTask) for m in fleet.wire)
