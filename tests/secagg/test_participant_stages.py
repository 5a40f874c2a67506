"""A secure round's requests in the wrong order, or shaped to make the device do unbounded work
or reveal its input, on a real DeviceAgent: each is declined by name, and the stage that must
not happen (a masked input, an unmask answer) does not.

The peers are sessions of the pure protocol (session.py), so their shares open on the device."""

from __future__ import annotations

import hashlib

import pytest

from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import CompressionSpec, Decline, TaskHyper, TrainTask, device_topic
from fedge.edge_runtime.kernel.secagg import session as sess
from fedge.edge_runtime.kernel.secagg.graph import neighbour_graph, neighbours_of
from fedge.edge_runtime.kernel.secagg.messages import (
    KeyAdvertisement,
    KeyDirectory,
    MaskedInput,
    PeerKeys,
    SealedShare,
    SecAggSpec,
    SecAggTask,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
)
from fedge.edge_runtime.kernel.update_codec import encode_dense
from fedge.edge_runtime.secagg_participant import TOO_MANY_NEIGHBOURS, WRONG_STAGE
from fedge.edge_runtime.work_limits import SECAGG_NEIGHBOURS
from tests.edge_runtime.one_device import DEVICE, TickingClock, one_device, pump
from tests.tiny_model import build_tiny_model

ROUND, TASK, T = 7, "s1", 3
PEERS = ("p1", "p2", "p3", "p4")
COHORT = tuple(sorted((DEVICE, *PEERS)))  # complete graph: k = 4, t = 3 (the floor for it)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


class Round:
    """devA advertised in a secure round of COHORT; the peers are pure sessions."""

    def __init__(self, model, root):
        _, manifest, runtime = model
        self.agent, self.coord = one_device(model, root, clock=TickingClock())
        task = TrainTask(ROUND, TASK, DEVICE, manifest.model_id, 1, encode_dense(runtime.initial("shared")),
                         TaskHyper(epochs=1, batch_size=8), CompressionSpec(quant_bits=32, error_feedback=False,
                                                                            clip_norm=0.5))
        self.sha = hashlib.sha256(task.params).hexdigest()
        (self.advert,) = self.send(SecAggTask(task, SecAggSpec(), sharing=2))
        assert isinstance(self.advert, KeyAdvertisement)
        self.peers = {p: sess.start(p, ROUND, self.sha) for p in PEERS}

    def send(self, message) -> list:
        self.coord.publish(device_topic(DEVICE, "task"), encode_message(message))
        return [m for m in pump(self.agent, self.coord) if m.__class__.__name__ != "CheckIn"]

    def directory(self) -> KeyDirectory:
        keys = tuple(PeerKeys(p, s.cipher.public, s.mask.public, self.sha) for p, s in self.peers.items())
        return KeyDirectory(DEVICE, ROUND, TASK, COHORT, len(COHORT) - 1, T, 0, keys)

    def shares_from(self, senders) -> ShareDelivery:
        """What each sender sealed for devA, as its own key-sharing step made it."""
        known = {DEVICE: sess.Advertised(self.advert.cipher_public, self.advert.mask_public, self.sha),
                 **{p: s.advertised for p, s in self.peers.items()}}
        boxes = []
        for sender in senders:
            others = tuple(d for d in COHORT if d != sender)
            _, sealed = sess.shares_for_neighbours(self.peers[sender], COHORT, others, T, known)
            boxes.append(SealedShare(sender, sealed[DEVICE]))
        return ShareDelivery(DEVICE, ROUND, TASK, tuple(boxes))

    def unmask(self) -> UnmaskRequest:
        return UnmaskRequest(DEVICE, ROUND, TASK, COHORT, (), self.sha)


def _reasons(replies) -> list[str]:
    return [r.reason for r in replies if isinstance(r, Decline)]


def test_a_device_masks_only_when_at_least_t_neighbours_shared(model, tmp_path):
    """An empty delivery (or one of fewer than t senders) made the device send its input under
    its self mask alone; the self-mask seed is shared with its neighbours, so the coordinator
    could then unmask that one input. SecAgg's devices abort below t; so does this one."""
    few = Round(model, tmp_path / "few")
    (shares,) = few.send(few.directory())
    assert shares.__class__.__name__ == "EncryptedShares"
    for senders in ((), PEERS[:T - 1]):
        assert _reasons(few.send(few.shares_from(senders))) == [sess.TOO_FEW_NEIGHBOURS]
    enough = Round(model, tmp_path / "enough")
    enough.send(enough.directory())
    (masked,) = enough.send(enough.shares_from(PEERS[:T]))
    assert isinstance(masked, MaskedInput) and masked.unopened == ()


def test_requests_ahead_of_their_stage_are_declined_and_a_repeat_gets_the_same_answer(model, tmp_path):
    r = Round(model, tmp_path / "state")
    assert _reasons(r.send(r.shares_from(PEERS))) == [WRONG_STAGE]  # before devA shared its own
    assert _reasons(r.send(r.unmask())) == [WRONG_STAGE]  # nothing of devA is masked yet
    r.send(r.directory())
    (masked,) = r.send(r.shares_from(PEERS))
    (again,) = r.send(r.shares_from(PEERS[:T]))  # another set of senders: never a second input
    assert isinstance(masked, MaskedInput) and again == masked
    (answer,) = r.send(r.unmask())
    assert isinstance(answer, UnmaskResponse)


def test_a_failure_to_record_the_unmask_answer_is_a_named_decline(model, tmp_path):
    """An OSError (here: the record folder is a file) escaped the device's poll and the stage
    went unanswered until its deadline; it is declined state_unwritable, as a plain task is."""
    r = Round(model, tmp_path / "state")
    r.send(r.directory())
    r.send(r.shares_from(PEERS))
    (tmp_path / "state" / DEVICE / "secagg-answered").write_bytes(b"not a folder")
    replies = r.send(r.unmask())
    assert _reasons(replies) == ["state_unwritable"] and not any(isinstance(m, UnmaskResponse) for m in replies)


def test_a_graph_past_the_device_limit_is_declined_before_any_work(model, tmp_path):
    r = Round(model, tmp_path / "state")
    cohort = tuple(sorted((DEVICE, *(f"x{i:05d}" for i in range(SECAGG_NEIGHBOURS + 1)))))
    big = KeyDirectory(DEVICE, ROUND, TASK, cohort, len(cohort) - 1, len(cohort) // 2 + 1, 0, ())
    assert _reasons(r.send(big)) == [TOO_MANY_NEIGHBOURS]


@pytest.mark.parametrize("n,k,seed", [(50, 10, 5), (101, 20, 1), (30, 2, 7), (7, 6, 0), (7, 10, 3), (400, 64, 9)])
def test_one_device_row_equals_its_row_of_the_whole_graph(n, k, seed):
    devices = [f"d{i:03d}" for i in range(n)]
    graph = neighbour_graph(devices, k, seed)
    assert all(neighbours_of(list(reversed(devices)), k, seed, d) == graph[d] for d in devices)
