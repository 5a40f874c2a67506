"""The attacker's upload at its edges (the mutation8-adversary audit): a re-publish of a held
colluder, the task's clip norm, the gaussian attackers' own noise, and the reply handed back
without a journal (secure aggregation's participant uses the reply, not a journal)."""

from __future__ import annotations

import numpy as np

from fedge.edge_runtime.device import DeviceRuntime
from fedge.edge_runtime.kernel.codec import decode_message, encode_message
from fedge.edge_runtime.kernel.compress import decompress_update
from fedge.edge_runtime.kernel.protocol import CompressionSpec, TrainTask, Update, device_topic
from fedge.edge_runtime.kernel.update_codec import decode_tensors, encode_dense
from fedge.tools.simulate.adversary import AttackSpec
from fedge.tools.simulate.attacks import Collusion
from fedge.tools.simulate.conspiracy import Conspiracy
from fedge.tools.simulate.malicious import MaliciousRuntime, rewrite_update

W = np.array([[1.0, 2.0], [-3.0, 0.25]], np.float32)  # norm about 3.9


def update(device="a", round_id=3, w=W, update_id="u1"):
    return Update(device, round_id, "t", update_id, "m", 2, 40, encode_dense({"w": w}))


def sent_w(u: Update) -> np.ndarray:
    return decompress_update(decode_tensors(u.payload))["w"]


class Capture:
    def __init__(self):
        self.sent = []

    def publish(self, topic, payload, *, qos=1, retain=False):
        self.sent.append((topic, payload))


def test_a_held_colluder_s_honest_republish_goes_out_as_its_rewritten_update():
    """The agent re-publishes what it kept, the honest update: after release the conspiracy
    must repeat the rewritten one (-1 x the colluders' mean for ipm), not pass the honest on."""
    con = Conspiracy(AttackSpec("ipm", epsilon=1.0), frozenset({"a1", "a2"}), CompressionSpec(quant_bits=32), 10, 1.0)
    wire = Capture()
    honest = {d: update(d, w=np.full((2, 2), v, np.float32), update_id=f"u-{d}") for d, v in (("a1", 2.0), ("a2", 4.0))}
    for d, u in honest.items():
        con.uplink(wire, d).publish(device_topic(d, "update"), encode_message(u))
    assert con.release()
    con.uplink(wire, "a1").publish(device_topic("a1", "update"), encode_message(honest["a1"]))
    again = decode_message(wire.sent[-1][1])
    assert again.update_id == "u-a1"
    np.testing.assert_array_equal(sent_w(again), np.full((2, 2), -3.0))  # -(2 + 4) / 2


def test_an_attacker_does_not_clip_to_the_task_s_norm():
    """The task's clip_norm is the honest device's; the attacker sends its rewrite unclipped
    (scale x 20 for n = 10, eta = 0.5), as the defences downstream must see it."""
    clipping = CompressionSpec(quant_bits=32, clip_norm=1.0)
    out = rewrite_update(update(), clipping, AttackSpec("scale"), Collusion(), 10, 0.5)
    np.testing.assert_array_equal(sent_w(out), W * 20)
    flipped = rewrite_update(update(), clipping, AttackSpec("sign_flip"), Collusion(), 10, 1.0)
    np.testing.assert_array_equal(sent_w(flipped), -W)


def test_gaussian_attackers_each_draw_their_own_noise_reproducibly():
    """Two gaussian attackers of a round send independent noise, and one attacker's draw is the
    same each time its (round, device) is rewritten (a re-publish repeats it)."""
    spec, comp = AttackSpec("gaussian", sigma=0.05), CompressionSpec(quant_bits=32)

    def noise(device, round_id):
        return sent_w(rewrite_update(update(device, round_id), comp, spec, Collusion(), 10, 1.0))

    a, b, later = noise("a", 3), noise("b", 3), noise("a", 4)
    np.testing.assert_array_equal(a, noise("a", 3))
    assert not np.allclose(a, b) and not np.allclose(a, later)
    assert not np.allclose(a, W)  # noise, not the delta


class _Trained(DeviceRuntime):
    """A runtime whose training is one fixed Update, kept through the journal if one is given."""

    def handle_task(self, task, deadline_check=None, journal=None):
        honest = update(task.device_id, task.round_id)
        if journal is not None:
            journal.record(None, honest, {}, {})
        return honest


class _Attacker(MaliciousRuntime, _Trained):
    pass


class _Journal:
    def __init__(self):
        self.kept = []

    def record(self, store, u, saves, meta):
        self.kept.append(u)


def test_the_reply_is_the_rewritten_update_with_or_without_a_journal():
    attacker = object.__new__(_Attacker)  # no model or folder needed: training is _Trained's
    attacker.attack, attacker.collusion, attacker.n, attacker.eta = AttackSpec("sign_flip"), Collusion(), 10, 1.0
    task = TrainTask(3, "t", "a", "m", 2, b"", compression=CompressionSpec(quant_bits=32))
    reply = attacker.handle_task(task)  # how the secure-aggregation participant calls it
    np.testing.assert_array_equal(sent_w(reply), -W)
    journal = _Journal()
    reply = attacker.handle_task(task, journal=journal)
    assert journal.kept == [reply] and np.array_equal(sent_w(reply), -W)
