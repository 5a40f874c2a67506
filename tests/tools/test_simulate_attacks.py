"""Attackers in the simulator: the rewritten upload, and whole runs with attacks and defences."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.edge_runtime.kernel.compress import decompress_update
from fedge.edge_runtime.kernel.errors import ConfigError, NonFiniteValues
from fedge.edge_runtime.kernel.protocol import CompressionSpec, TrainTask, Update
from fedge.edge_runtime.kernel.update_codec import decode_tensors, encode_dense
from fedge.tools.simulate.adversary import AttackSpec, choose_attackers
from fedge.tools.simulate.attacks import Collusion
from fedge.tools.simulate.config import SimConfig, sim_config
from fedge.tools.simulate.fleet import run_simulation
from fedge.tools.simulate.malicious import rewrite_update

DELTA = {"b": np.array([0.5, -1.0], np.float32), "w": np.array([[1.0, 2.0], [-3.0, 0.25]], np.float32)}


def honest_update(device="a", round_id=3):
    return Update(device, round_id, "t", "u1", "m", 2, 40, encode_dense(DELTA))


def task(round_id=3, bits=32):
    return TrainTask(round_id, "t", "a", "m", 2, b"", compression=CompressionSpec(quant_bits=bits))


class Capture:
    """A fake transport: what reached the broker."""

    def __init__(self):
        self.sent = []

    def publish(self, topic, payload, *, qos=1, retain=False):
        self.sent.append((topic, payload))


def decoded(update):
    return decompress_update(decode_tensors(update.payload))


def test_rewrite_sign_flip_scale_and_weight():
    out = rewrite_update(honest_update(), task().compression, AttackSpec("sign_flip"), Collusion(), 10, 1.0)
    for k in DELTA:
        np.testing.assert_array_equal(decoded(out)[k], -DELTA[k])
    assert out.num_examples == 40 and out.update_id == "u1"
    out = rewrite_update(honest_update(), task().compression, AttackSpec("scale"), Collusion(), 10, 0.5)
    np.testing.assert_array_equal(decoded(out)["w"], DELTA["w"] * 20)
    out = rewrite_update(honest_update(), task().compression, AttackSpec("huge_weight", weight_factor=1e6),
                         Collusion(), 10, 1.0)
    assert out.num_examples == 40_000_000 and out.payload == honest_update().payload
    out = rewrite_update(honest_update(), task().compression, AttackSpec("label_flip"), Collusion(), 10, 1.0)
    assert out == honest_update()  # data-level: what it trained is what it sends
    out = rewrite_update(honest_update(), task().compression, AttackSpec("nan"), Collusion(), 10, 1.0)
    with pytest.raises(NonFiniteValues):
        decode_tensors(out.payload, expected={k: v.shape for k, v in DELTA.items()})


def test_rewrite_compresses_with_the_tasks_settings_and_colludes():
    col = Collusion()
    out = rewrite_update(honest_update("a"), task(bits=8).compression, AttackSpec("ipm", epsilon=2.0), col, 10, 1.0)
    assert {t.bits for t in decode_tensors(out.payload)} == {8}
    np.testing.assert_allclose(decoded(out)["w"], -2.0 * DELTA["w"], atol=6.0 / 127)  # one 8-bit step of 2 * 3
    assert col.attackers(3) == 1


def test_conspiracy_holds_updates_until_release_then_sends_them_in_order():
    from fedge.edge_runtime.kernel.codec import decode_message, encode_message
    from fedge.edge_runtime.kernel.protocol import device_topic
    from fedge.tools.simulate.conspiracy import Conspiracy

    spec = AttackSpec("ipm", epsilon=1.0)
    con = Conspiracy(spec, frozenset({"a1", "a2"}), CompressionSpec(quant_bits=32), 10, 1.0)
    wire = Capture()
    links = {d: con.uplink(wire, d) for d in ("h1", "a1", "a2")}
    deltas = {"h1": 1.0, "a1": 2.0, "a2": 4.0}
    for d, v in deltas.items():
        up = Update(d, 3, "t", f"u-{d}", "m", 2, 40, encode_dense({"w": np.full(3, v, np.float32)}))
        links[d].publish(device_topic(d, "update"), encode_message(up))
    links["h1"].publish(device_topic("h1", "checkin"), b"x")
    assert wire.sent == [(device_topic("h1", "checkin"), b"x")]  # updates held, the rest passes
    assert con.release() and not con.release()
    got = [decode_message(p) for _, p in wire.sent[1:]]
    assert [u.device_id for u in got] == ["h1", "a1", "a2"]  # the order they were made
    w = [decompress_update(decode_tensors(u.payload))["w"] for u in got]
    np.testing.assert_array_equal(w[0], np.full(3, 1.0))  # honest: unchanged
    # Both colluders knew both their deltas (not the honest one: not omniscient): -1 * mean(2, 4).
    np.testing.assert_array_equal(w[1], np.full(3, -3.0))
    np.testing.assert_array_equal(w[2], np.full(3, -3.0))
    links["a1"].publish(device_topic("a1", "update"), encode_message(got[1]))  # a re-publish repeats it
    assert wire.sent[-1][1] == encode_message(got[1])


def test_sim_config_refuses_unknown_attacks():
    with pytest.raises(ConfigError):
        SimConfig(attack="teleport")
    with pytest.raises(ConfigError):
        SimConfig(attack="alie", attackers=1.0)


@pytest.mark.parametrize("attack,aggregator", [("nan", "krum"), ("nan", "norm_bound"), ("alie", "median")])
def test_run_with_attackers_and_a_defence(tmp_path, attack, aggregator):
    cfg = sim_config(dataset="digits", devices=6, rounds=2, clients_per_round=5, out_dir=str(tmp_path),
                     attack=attack, attackers=0.34, aggregator=aggregator)
    result = run_simulation(cfg)
    attackers = choose_attackers([f"dev-{i:03d}" for i in range(6)], 0.34, 0)
    assert result.summary["attackers"] == sorted(attackers) and len(attackers) == 2
    if attack == "nan":
        assert result.summary["rejections"].get("non_finite", 0) >= 1  # the NaN frames reach the coordinator
    assert all(r["committed"] for r in result.rounds)


def test_colluding_attacks_need_the_in_memory_transport(tmp_path):
    from fedge.tools.simulate.fleet import prepare

    with pytest.raises(ConfigError, match="in-memory"):
        prepare(sim_config(dataset="digits", devices=4, rounds=1, clients_per_round=2, out_dir=str(tmp_path),
                           attack="ipm", transport="mqtt"))


@pytest.mark.parametrize("options, words", [
    # a round of 1 report: ALIE's z needs a minority of colluders among n >= 2. The run once trained
    # until the first attacker's task, then stopped on AttackError "0 < m < n ... n=1, m=1", naming no flag
    ({"attack": "alie", "clients_per_round": 1}, "--clients-per-round"),
    ({"attack": "alie", "clients_per_round": 5, "devices": 1}, "a round of 1"),
    ({"attack": "ipm", "clients_per_round": 2, "transport": "mqtt"}, "in-memory"),  # once left its scratch folder
])
def test_an_attack_the_rounds_cannot_take_is_refused_before_anything_is_built(tmp_path, monkeypatch, options, words):
    import tempfile

    from fedge.tools.simulate.fleet import prepare

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # fedge-sim-* scratch folders land here
    cfg = sim_config(**{"dataset": "digits", "devices": 4, "rounds": 1, "out_dir": str(tmp_path / "out"), **options})
    with pytest.raises(ConfigError, match=words):
        prepare(cfg)
    assert not list(tmp_path.glob("fedge-sim-*"))
