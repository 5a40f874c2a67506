"""Secure aggregation per shard group (coordinator/sharding/secure.py, groups.py, secure_dp.py):
a real ShardedCoordinator (its shard tables in a real PostgreSQL) and real DeviceAgents (ONNX
training) over the in-memory broker, through the four stages, with K = 2.

Oracles, none of which uses a mask:
  * the committed delta is the plain sum of the devices' quantized vectors per shard group
    (int64 sum mod 2^m, decoded by quantize.decode / ddg.decode), the groups added in shard
    order, over the survivors' number;
  * each group's unmask request names that group's survivors and dropped, nothing else;
  * under distributed DP: the noise of a group's sum, measured on the device's own encoder,
    has the standard deviation the group's record states, and that is >= z S (the full
    calibrated noise for one group by itself); each group's z_eff by the paper's formula is
    >= z; and the ledger's ε is dp-accounting's for the round's sampling event with z.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from types import SimpleNamespace
from unittest import mock

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting import rdp

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.dp.config import PrivacyConfig
from fedge.coordinator.dp.distributed import params_for
from fedge.coordinator.dp.round import RoundPlan
from fedge.coordinator.secagg.config import SecAggConfig, load_identities
from fedge.coordinator.sharding.config import ShardConflict
from fedge.coordinator.sharding.groups import ShardGroup, group_floor, shard_groups
from fedge.coordinator.sharding.secure import GroupedSecAgg
from fedge.edge_runtime.kernel.protocol import CompressionSpec
from fedge.edge_runtime.kernel.secagg import ddg, quantize
from fedge.edge_runtime.kernel.secagg.identity_files import load_directory
from fedge.edge_runtime.kernel.secagg.messages import (
    KeyDirectory,
    SecAggSpec,
    SecAggTask,
    UnmaskRequest,
    UnmaskResponse,
)
from fedge.edge_runtime.kernel.secagg.recovery import Unexplained
from fedge.edge_runtime.kernel.secagg.shared_encoding import encode_update
from tests.coordinator.fleet import copy_params, make_fleet
from tests.coordinator.test_dp_distributed import _paper_z_eff
from tests.pg_server import import_psycopg
from tests.secagg.fleet_round import hand_out, provision
from tests.tiny_model import build_tiny_model

K = 2
DSN = "postgresql://x@127.0.0.1/db"
SECURE = SecAggConfig(enabled=True, bits=16, clip_range=0.5)
SETTINGS = dict(secure_aggregation=SECURE, weighting="equal", compression=CompressionSpec(quant_bits=32, clip_norm=4.0),
                shards=K, aggregator="mean", min_reports=8)
SIZES = (12, 20, 16, 24, 18, 14, 22, 15, 19, 13, 17, 21)  # dev0 .. dev11: shard 0 holds dev4 .. dev7


def _shard(device_id: str) -> int:
    return zlib.crc32(device_id.encode()) % K  # written out: the oracle does not call shard_for


# ---------------------------------------------------------------- config and groups (pure)


def test_shards_accept_secure_aggregation_and_its_distributed_dp():
    base = dict(state_dsn=DSN, clients_per_round=12, **SETTINGS)
    assert CoordinatorConfig(**base).secure_aggregation.enabled
    private = PrivacyConfig(enabled=True, mechanism="distributed", noise_multiplier=2.0, clip_norm=0.05)
    assert CoordinatorConfig(**{**base, "privacy": private, "compression": CompressionSpec(quant_bits=32)}
                             ).privacy.mechanism == "distributed"
    with pytest.raises(ShardConflict) as info:  # central DP runs with shards (privacy.py), adaptive clipping not
        CoordinatorConfig(state_dsn=DSN, shards=K, aggregator="mean", weighting="equal",
                          privacy=PrivacyConfig(enabled=True, noise_multiplier=1.0, target_quantile=0.5))
    assert info.value.reason == "shards_adaptive_clip"


def test_groups_follow_the_shards_and_small_ones_merge_forward():
    ids = tuple(f"d{i}" for i in range(40))
    by_shard = {}
    for d in ids:
        by_shard.setdefault(zlib.crc32(d.encode()) % 5, []).append(d)
    for floor in (3, 7, 9, 30, 41):
        groups = shard_groups(ids, 5, floor, quorum=30)
        # an independent walk: accumulate shards until the floor, the rest into the last group
        want, acc = [], []
        for s in sorted(by_shard):
            acc.append(s)
            if sum(len(by_shard[x]) for x in acc) >= floor:
                want.append(acc)
                acc = []
        if acc:
            want = want[:-1] + [want[-1] + acc] if want else [acc]
        assert [list(g.shards) for g in groups] == want
        assert sorted(d for g in groups for d in g.members) == sorted(ids)
        for g in groups:
            assert g.members == tuple(sorted(d for s in g.shards for d in by_shard[s]))
            assert g.min_inputs == max(2, math.ceil(30 * len(g.members) / 40))
            assert len(g.members) >= floor or len(groups) == 1
    assert group_floor(0) == 3 and group_floor(6) == 7


def test_a_group_unmask_no_one_is_named_for_stays_so_for_the_metric():
    """A group's Unexplained failure (recovery.py: wrong shares no one is named for) reaches the
    shell as Unexplained, which fedge_secagg_unmask_unnamed counts; it was re-raised as a plain
    UnmaskFailed with the group's label, and sharded rounds stalled so went uncounted."""
    def unexplained():
        raise Unexplained("no one is named")
    group = ShardGroup((0,), ("a", "b", "c"), 2)
    state = GroupedSecAgg((group,), (SimpleNamespace(alive=group.members, unmasked_sum=unexplained),))
    with pytest.raises(Unexplained, match="shard group 0: no one is named"):
        state.group_sums()


# ---------------------------------------------------------------- the leader, real devices


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _fleet(model, tmp_path, dsn, **extra):
    import_psycopg()
    from fedge.coordinator.sharding.leader import ShardedCoordinator

    fleet = make_fleet(model, tmp_path, sizes=SIZES, coordinator_cls=ShardedCoordinator, state_dsn=dsn,
                       **{**SETTINGS, **extra})
    fleet.coordinator.poll_s = 0.0
    return fleet


def _run_round(fleet, drop=(), drop_at_stage=2):
    """Drive one round; the devices in `drop` stop answering once the machine reaches that stage."""
    c = fleet.coordinator
    assert c.begin_round()
    for _ in range(40):
        if drop and c.round is not None and c.round.machine.stage >= drop_at_stage:
            fleet.agents = [a for a in fleet.agents if a.device_id not in drop]
        fleet.drain()
        record = c.tick()
        if record is not None:
            return record
        fleet.clock.advance(1.0 if c.round.machine.stage_full else SECURE.stage_deadline_s + 1)
    raise AssertionError("the round never closed")


def _flat(params):
    return np.concatenate([np.asarray(params[k], dtype=np.float64).reshape(-1) for k in sorted(params)])


def _expected_delta(agents, survivors):
    """Per shard group, the int64 sum of its survivors' quantized values mod 2^m, decoded; the
    groups added in shard order; over the survivors' number."""
    total, n = None, 0
    for shard in range(K):
        group = sorted(a.device_id for a in agents if a.device_id in survivors and _shard(a.device_id) == shard)
        inputs = [next(iter(a.secagg.inputs.values())) for a in agents if a.device_id in group]
        spec = inputs[0][2]
        field_sum = np.sum(np.stack([v for v, _, _ in inputs]).astype(np.int64), axis=0) % (1 << spec.field_bits)
        if spec.distributed_dp:
            part = ddg.decode(field_sum, spec.rotation_seed, spec.dp_gamma, spec.field_bits)
        else:
            part = quantize.decode(field_sum, len(group), spec.rotation_seed, spec.clip_range, spec.bits)
        total = part if total is None else total + part
        n += len(group)
    return total / n


@pytest.mark.parametrize("drop", [(), ("dev5",), ("dev1",)])
def test_each_shard_group_runs_its_own_secagg_and_the_leader_commits_the_groups_merged_sum(model, tmp_path,
                                                                                         postgres_dsn, drop):
    fleet = _fleet(model, tmp_path, postgres_dsn)
    agents = list(fleet.agents)
    old = copy_params(fleet.coordinator.state.params)
    record = _run_round(fleet, drop)  # stage 2: masked input, after key sharing
    assert record.committed, record.why
    survivors = {a.device_id for a in agents} - set(drop)
    assert record.reports == len(survivors)
    got = _flat(fleet.coordinator.state.params) - _flat(old)
    np.testing.assert_allclose(got, _expected_delta(agents, survivors), rtol=0, atol=1e-6)
    groups = {s: {a.device_id for a in agents if _shard(a.device_id) == s} for s in range(K)}
    for directory in (m for m in fleet.wire if isinstance(m, KeyDirectory)):  # the cohort is the group
        assert set(directory.cohort) == groups[_shard(directory.device_id)]
        assert {p.device_id for p in directory.keys} <= groups[_shard(directory.device_id)]
    requests = [m for m in fleet.wire if isinstance(m, UnmaskRequest)]
    assert {m.device_id for m in requests} == survivors
    for m in requests:  # recovered for its group only
        mine = groups[_shard(m.device_id)]
        assert set(m.alive) == mine - set(drop) and set(m.dropped) == mine & set(drop)


def test_each_group_leaves_out_a_device_the_identity_directory_does_not_verify(model, tmp_path, postgres_dsn):
    """The shard groups' round states check signatures as one coordinator's does: dev5 (group 0)
    signs with a key the directory lacks, and relayed it made its group's neighbours decline;
    refused, group 0 runs without it. dev1 (group 1) is not in the directory: the leader never
    selects it (selected, it was refused every round). The round commits the others' merged sum,
    and the leader read the directory once (the sharded shell takes the first shell's)."""
    ids = [f"dev{i}" for i in range(len(SIZES))]
    privates, path = provision(ids, tmp_path, unlisted=("dev1",))
    with mock.patch("fedge.coordinator.secagg.config.load_identities", wraps=load_identities) as reads:
        fleet = _fleet(model, tmp_path, postgres_dsn,
                       secure_aggregation=dataclasses.replace(SECURE, directory_file=str(path)))
    assert reads.call_count == 1
    hand_out(fleet, privates, load_directory(path), forged=("dev5",))
    agents = list(fleet.agents)
    old = copy_params(fleet.coordinator.state.params)
    record = _run_round(fleet)
    assert record.committed, record.why
    c = fleet.coordinator
    assert (c.rejections["secagg_bad_signature"], c.rejections["secagg_no_identity"]) == (1, 0), dict(c.rejections)
    assert not c.declines, dict(c.declines)
    assert record.selected == len(ids) - 1
    survivors = set(ids) - {"dev1", "dev5"}
    assert record.reports == len(survivors)
    got = _flat(c.state.params) - _flat(old)
    np.testing.assert_allclose(got, _expected_delta(agents, survivors), rtol=0, atol=1e-6)


def test_a_bad_signer_at_its_groups_floor_ends_one_round_not_every_round(model, tmp_path, postgres_dsn):
    """min_reports 10: shard 0's four devices need ceil(10 * 4 / 12) = 4 advertisements, so dev5's
    forged signature puts group 0 out at the share stage and ends the round. Drawn again, dev5
    ended every round; sidelined, the next round (inside its 600 s) runs without it: group 0's
    three need ceil(10 * 3 / 11) = 3, and the round commits the eleven's merged sum."""
    ids = [f"dev{i}" for i in range(len(SIZES))]
    privates, path = provision(ids, tmp_path)
    fleet = _fleet(model, tmp_path, postgres_dsn, min_reports=10, abandon_backoff_s=0.0,
                   secure_aggregation=dataclasses.replace(SECURE, directory_file=str(path)))
    hand_out(fleet, privates, load_directory(path), forged=("dev5",))
    c, agents = fleet.coordinator, list(fleet.agents)
    first = _run_round(fleet)
    assert not first.committed and "shard group 0: 3 device(s) advertised keys, the group needs 4" in first.why
    assert c.rejections["secagg_bad_signature"] == 1
    old = copy_params(c.state.params)
    second = _run_round(fleet)
    assert second.committed and second.selected == len(ids) - 1, second.why
    survivors = set(ids) - {"dev5"}
    assert second.reports == len(survivors) and c.rejections["secagg_bad_signature"] == 1
    np.testing.assert_allclose(_flat(c.state.params) - _flat(old), _expected_delta(agents, survivors), rtol=0,
                               atol=1e-6)


def test_a_group_left_with_fewer_inputs_than_its_minimum_abandons_the_round(model, tmp_path, postgres_dsn):
    """Shard 0 has 4 of 12 devices and min_reports 8: its sum needs ceil(8 * 4 / 12) = 3 inputs.
    Two of them drop after sharing: the round keeps 10 >= 8 inputs, but group 0's sum would be
    of 2 devices, so it is not unmasked and nothing is applied."""
    fleet = _fleet(model, tmp_path, postgres_dsn)
    version = fleet.coordinator.state.version
    record = _run_round(fleet, ("dev4", "dev6"))
    assert not record.committed and "shard group 0: 2 masked inputs, its sum needs 3" in record.why
    assert fleet.coordinator.state.version == version
    # refused before the unmask stage: no group's survivors were asked, so no sum was computable
    assert not [m for m in fleet.wire if isinstance(m, UnmaskRequest)]


def test_an_abandoned_private_round_is_charged_once_any_group_answered_an_unmask_request(model, tmp_path,
                                                                                      postgres_dsn):
    """Each group's answers make its own sum computable; when another group then falls short of
    its t the round is abandoned, and it must still be charged."""
    fleet = _fleet(model, tmp_path, postgres_dsn, secure_aggregation=DP_SECURE, privacy=PRIVATE,
                   compression=CompressionSpec(quant_bits=32))
    c = fleet.coordinator
    shard1 = [a.device_id for a in fleet.agents if _shard(a.device_id) == 1]
    record = _run_round(fleet, tuple(shard1), drop_at_stage=3)  # shard 1 answers no unmask request
    assert not record.committed
    assert any(isinstance(m, UnmaskResponse) and _shard(m.device_id) == 0 for m in fleet.wire)
    (charge,) = c.store.privacy_ledger()  # without the charge on the first answer: no row at all
    assert charge["mechanism"] == "distributed" and charge["noise_multiplier"] == Z


def test_a_plain_update_in_a_secure_sharded_fleet_is_refused_and_never_a_reply(model, tmp_path, postgres_dsn):
    """A worker counts no plain Update in a secure fleet, and the leader reads no replies from the
    shard tables in a secure round: a device counted there would be 'alive' without a masked
    input, and the unmasked sum would fail on it (a KeyError that stopped the leader)."""
    from types import SimpleNamespace

    from fedge.coordinator.sharding.tables import ShardTables
    from fedge.coordinator.sharding.worker import ShardWorker
    from fedge.edge_runtime.kernel.codec import encode_message
    from fedge.edge_runtime.kernel.protocol import Update, shard_update_topic
    from fedge.edge_runtime.kernel.transport.base import Message
    from fedge.edge_runtime.kernel.transport.memory import InMemoryBroker

    fleet = _fleet(model, tmp_path, postgres_dsn)
    c = fleet.coordinator
    assert c.begin_round()  # the SecAggTasks are out; no device has answered (no drain)
    c.tables.reporters = lambda round_id: {"dev3"}  # what a worker would have counted
    c.tick()
    assert "dev3" not in c.round.machine.reported
    reasons = []
    shard = _shard("dev3")
    worker = ShardWorker(shard, 1, ShardTables(postgres_dsn), InMemoryBroker().connect("w"), c.config,
                         c.manifest.model_id, c.shapes, metrics=SimpleNamespace(rejected=reasons.append))
    update = Update(device_id="dev3", round_id=c.round.ctx.round_id, task_id=c.round.ctx.tasks["dev3"],
                    update_id="u1", model_id=c.manifest.model_id, base_version=c.state.version, num_examples=5,
                    payload=b"", shard=shard)
    worker.handle(Message(shard_update_topic(shard, "dev3"), encode_message(update)))
    assert reasons == ["unexpected_message"] and worker.accepted == 0


# ---------------------------------------------------------------- distributed DP per group

Z, CLIP = 2.0, 0.05
PRIVATE = PrivacyConfig(enabled=True, mechanism="distributed", noise_multiplier=Z, clip_norm=CLIP,
                        target_epsilon=50.0, delta=1e-5)
DP_SECURE = SecAggConfig(enabled=True, bits=16, clip_range=0.05)


def test_each_group_sum_carries_the_full_calibrated_noise_by_itself():
    """On the device's own encoder (zero updates: what comes back is the noise alone): the
    decoded sum of a group's min_inputs devices has std gamma sigma sqrt(min_inputs), as its
    record says, and that is >= z S. Noise scaled to the round's quorum instead of the group's
    would fall short of z S, which this test would catch (checked below)."""
    from fedge.coordinator.sharding.secure import decode_total
    from fedge.coordinator.sharding.secure_dp import group_specs, total_noise_std, with_groups

    d, ids = 4096, tuple(f"dev{i}" for i in range(20))
    groups = shard_groups(ids, K, 3, quorum=15)
    plan = RoundPlan(100, 20, Z, CLIP, 20, 1e-5, 50.0, 1.0, mechanism="distributed")
    base = SecAggSpec(16, 16, DP_SECURE.clip_range, 12345)
    specs, noise = group_specs(base, plan, groups, d, 16)
    rng = np.random.default_rng(5)
    for g, spec, rec in zip(groups, specs, noise):
        field_sum = np.zeros(d, np.int64)
        for _ in range(g.min_inputs):
            values, _ = encode_update(np.zeros(d), None, spec, rng)
            field_sum = (field_sum + values.astype(np.int64)) % (1 << 16)
        measured = decode_total(field_sum, g.min_inputs, d, spec)
        assert abs(measured.mean()) < 5 * rec.noise_std / math.sqrt(d)
        assert measured.std() == pytest.approx(rec.noise_std, rel=6 / math.sqrt(2 * d))
        assert rec.noise_std == pytest.approx(spec.dp_gamma * spec.dp_sigma * math.sqrt(g.min_inputs))
        assert rec.noise_std >= Z * CLIP * (1 - 1e-9)  # the full noise, for this group's sum alone
        z_eff = _paper_z_eff(spec.dp_sigma, g.min_inputs, CLIP / spec.dp_gamma, d)
        assert z_eff == pytest.approx(rec.noise_multiplier, rel=1e-9) and z_eff >= Z * (1 - 1e-12)
        cohort_scaled = params_for(Z, CLIP, base.clip_range, d, 15, 20, 16)  # the round's quorum, not the group's
        assert cohort_scaled.gamma * cohort_scaled.sigma * math.sqrt(g.min_inputs) < Z * CLIP
    recorded = with_groups(plan, noise).groups
    assert total_noise_std(recorded) == pytest.approx(math.sqrt(sum(n.noise_std ** 2 for n in noise)))
    assert RoundPlan.from_json(with_groups(plan, noise).to_json()).charge() == plan.charge()


def test_a_private_sharded_round_sends_each_group_its_noise_and_charges_what_dp_accounting_says(model, tmp_path,
                                                                                              postgres_dsn):
    fleet = _fleet(model, tmp_path, postgres_dsn, secure_aggregation=DP_SECURE, privacy=PRIVATE,
                   compression=CompressionSpec(quant_bits=32))
    agents = list(fleet.agents)
    c = fleet.coordinator
    old = copy_params(c.state.params)
    record = _run_round(fleet, ("dev1",))
    assert record.committed, record.why
    d = sum(v.size for v in old.values())
    spec_of = {m.task.device_id: m.spec for m in fleet.wire if isinstance(m, SecAggTask)}
    for shard in range(K):  # one calibration per group, the same for the group's members
        assert len({spec_of[a.device_id] for a in agents if _shard(a.device_id) == shard}) == 1
    by_group = set(spec_of.values())
    assert len(by_group) == K
    # each group's spec: params_for at the group's own minimum inputs and selected size
    selected = {s: sum(_shard(a.device_id) == s for a in agents) for s in range(K)}
    want = {params_for(Z, CLIP, DP_SECURE.clip_range, d, max(2, math.ceil(8 * n / 12)), n, 16)
            for n in selected.values()}
    assert {(s.dp_gamma, s.dp_sigma) for s in by_group} == {(p.gamma, p.sigma) for p in want}
    got = _flat(c.state.params) - _flat(old)
    np.testing.assert_allclose(got, _expected_delta(agents, {a.device_id for a in agents} - {"dev1"}), atol=1e-6)
    (charge,) = c.store.privacy_ledger()
    assert charge["mechanism"] == "distributed" and charge["noise_multiplier"] == Z
    assert sorted(g["selected"] for g in charge["groups"]) == sorted(selected.values())
    assert all(g["noise_std"] >= Z * CLIP * (1 - 1e-9) and g["noise_multiplier"] >= Z for g in charge["groups"])
    acc = rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    acc.compose(dpa.SampledWithoutReplacementDpEvent(12, 12, dpa.GaussianDpEvent(Z / 2)), 1)
    assert charge["epsilon_after"] == pytest.approx(acc.get_epsilon(PRIVATE.delta), rel=1e-9)
    from fedge.coordinator.dp.report import privacy_report, render

    report = privacy_report([(record.round_id, RoundPlan.from_json(charge))])
    stds = [g["noise_std"] for g in charge["groups"]]
    assert report["rounds"][0]["total_noise_std"] == pytest.approx(math.hypot(*stds))
    assert report["epsilon_spent"] == pytest.approx(acc.get_epsilon(PRIVATE.delta), rel=1e-6)
    assert "2 shard groups, each sum noised for z by itself" in render(report)
