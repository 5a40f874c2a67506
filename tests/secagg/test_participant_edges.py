"""The device's participant at the points the mutation audit found unguarded
(benchmarks/results/2026-12-06-mutation9-secagg): the order and size of the revealed shares,
the one-answer guards (memory and record, each without the other), a repeated task or delivery,
requests named by their reason, the neighbour limit at its value, the noise floor at its value,
and the answered-record pruning's own names.

No training: the participant's session and input are set as its first stage leaves them, and
the peers are pure sessions (session.py) whose boxes open on it."""

from __future__ import annotations

import math
import os
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from fedge.edge_runtime import secagg_participant as sp
from fedge.edge_runtime.kernel.protocol import CompressionSpec, Decline, TaskHyper, TrainTask, Update
from fedge.edge_runtime.kernel.secagg import session as sess
from fedge.edge_runtime.kernel.secagg import shamir
from fedge.edge_runtime.kernel.secagg.graph import neighbour_graph
from fedge.edge_runtime.kernel.secagg.messages import (
    EncryptedShares,
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
from fedge.edge_runtime.kernel.secagg.shared_encoding import subset_size
from fedge.edge_runtime.kernel.update_codec import encode_dense

ME, ROUND, TASK, MODEL = "d0", 5, "t5", "ef" * 32


class Stages:
    """A participant `ME` at the start of the share stage of a round over `cohort` (graph of
    degree k from `seed`), its peers pure sessions."""

    def __init__(self, root, cohort, k, t, seed=3):
        self.sent: list = []
        self.device = sp.SecAggParticipant(SimpleNamespace(device_id=ME, state_root=root), self.sent.append)
        self.device.sessions[TASK] = sess.start(ME, ROUND, MODEL)
        self.device.inputs[TASK] = (np.arange(6, dtype=np.uint32), 4, SecAggSpec())
        self.cohort, self.k, self.t, self.seed = tuple(sorted(cohort)), k, t, seed
        self.graph = neighbour_graph(self.cohort, k, seed)
        self.others = {d: sess.start(d, ROUND, MODEL) for d in self.cohort if d != ME}
        self.peers = {p: self.others[p] for p in self.graph[ME]}

    def reply(self, message):
        before = len(self.sent)
        self.device.on_message(message)
        (out,) = self.sent[before:]
        return out

    def share(self):
        keys = tuple(PeerKeys(p, s.cipher.public, s.mask.public, MODEL) for p, s in self.peers.items())
        return self.reply(KeyDirectory(ME, ROUND, TASK, self.cohort, self.k, self.t, self.seed, keys))

    def delivery(self, senders) -> ShareDelivery:
        known = {ME: self.device.sessions[TASK].advertised, **{d: s.advertised for d, s in self.others.items()}}
        boxes = []
        for sender in senders:
            _, sealed = sess.shares_for_neighbours(self.peers[sender], self.cohort, self.graph[sender], self.t, known)
            boxes.append(SealedShare(sender, sealed[ME]))
        return ShareDelivery(ME, ROUND, TASK, tuple(boxes))

    def unmask(self, alive, dropped=()):
        return self.reply(UnmaskRequest(ME, ROUND, TASK, tuple(alive), tuple(dropped), MODEL))


def _complete(root, n=5, t=3) -> Stages:
    return Stages(root, [f"d{i}" for i in range(n)], n - 1, t)


def _chunks(data: bytes, size: int) -> list[int]:
    return [int.from_bytes(data[i:i + size], "big") for i in range(0, len(data), size)]


def test_revealed_values_follow_the_owners_sorted_order_whatever_the_delivery_order(tmp_path):
    """The coordinator reads the answer's values against the owners it delivered, sorted
    (coordinator/secagg/round_state.py); a delivery in another order must not reorder them."""
    r = _complete(tmp_path)
    assert isinstance(r.share(), EncryptedShares)
    senders = sorted(r.peers, reverse=True)
    assert isinstance(r.reply(r.delivery(senders)), MaskedInput)
    answer = r.unmask(r.cohort)
    held = r.device.sessions[TASK].received
    assert isinstance(answer, UnmaskResponse)
    assert _chunks(answer.values, 16) == [held[o][1] for o in sorted(held)]


def test_a_sparse_graphs_answer_carries_eight_byte_shares_that_recover_the_seeds(tmp_path):
    cohort = [f"d{i}" for i in range(10)]
    r = Stages(tmp_path, cohort, 4, 4)  # sparse: packed shares, t = k/2 + 2
    r.share()
    r.reply(r.delivery(sorted(r.peers)))
    owners = sorted(r.peers)
    answer = r.unmask(cohort)
    assert len(answer.values) == 8 * len(owners) == shamir.value_bytes(2) * len(owners)
    held = r.device.sessions[TASK].received
    assert _chunks(answer.values, 8) == [held[o][1] for o in owners]


def test_a_second_request_is_refused_from_memory_when_the_record_is_gone(tmp_path):
    """Answer 1 lists d1 alive (its self-mask share); answer 2 would list it dropped (its
    mask-key share): both would unmask d1's input. With its record removed (by hand, or a
    prune), the session's own flag still refuses."""
    r = _complete(tmp_path)
    r.share()
    r.reply(r.delivery(sorted(r.peers)))
    assert isinstance(r.unmask(r.cohort), UnmaskResponse)
    for record in r.device.answered_dir.iterdir():
        record.unlink()
    second = r.unmask([d for d in r.cohort if d != "d1"], ["d1"])
    assert isinstance(second, Decline) and second.reason == sess.ALREADY_ANSWERED


def test_a_second_request_is_refused_from_the_record_after_a_restart(tmp_path):
    """A restarted device holds a fresh session for the replayed task (nothing in memory says it
    answered); its record on disk does."""
    r = _complete(tmp_path)
    r.share()
    r.reply(r.delivery(sorted(r.peers)))
    assert isinstance(r.unmask(r.cohort), UnmaskResponse)
    again = _complete(tmp_path)  # the same state root: a new process
    again.share()
    again.reply(again.delivery(sorted(again.peers)))
    second = again.unmask([d for d in again.cohort if d != "d1"], ["d1"])
    assert isinstance(second, Decline) and second.reason == sess.ALREADY_ANSWERED


def test_a_repeated_delivery_gets_the_first_masked_input_even_with_more_senders(tmp_path):
    """A second delivery with a sender more would mask again with one more pair mask: two
    inputs of one device in one round."""
    r = _complete(tmp_path)
    r.share()
    first = r.reply(r.delivery(sorted(r.peers)[:3]))
    again = r.reply(r.delivery(sorted(r.peers)))
    assert isinstance(first, MaskedInput) and again == first


def test_a_redelivered_task_advertises_the_same_keys_without_training(tmp_path):
    r = _complete(tmp_path)
    s = r.device.sessions[TASK]
    task = TrainTask(ROUND, TASK, ME, "m", 1, b"\x00" * 8, TaskHyper(epochs=1, batch_size=8),
                     CompressionSpec(quant_bits=32, error_feedback=False, clip_norm=0.5))
    advert = r.reply(SecAggTask(task, SecAggSpec(), sharing=2))  # the runtime here cannot train at all
    assert isinstance(advert, KeyAdvertisement)
    assert (advert.cipher_public, advert.mask_public) == (s.cipher.public, s.mask.public)


@pytest.mark.parametrize("case,reason", [("unknown_task", sp.NO_SESSION), ("not_in_cohort", sess.NOT_IN_COHORT)])
def test_a_directory_for_no_session_or_without_this_device_is_named(tmp_path, case, reason):
    r = _complete(tmp_path)
    task = "other" if case == "unknown_task" else TASK
    cohort = r.cohort if case == "unknown_task" else tuple(d for d in r.cohort if d != ME)
    reply = r.reply(KeyDirectory(ME, ROUND, task, cohort, 4, 3, 3, ()))
    assert isinstance(reply, Decline) and reply.reason == reason


def test_exactly_the_neighbour_limit_is_shared_with():
    """k = SECAGG_NEIGHBOURS passes the limit (and, with no keys relayed, stops at the next check)."""
    n = sp.SECAGG_NEIGHBOURS + 1  # complete graph: k = n - 1 = the limit
    sent: list = []
    device = sp.SecAggParticipant(SimpleNamespace(device_id=ME, state_root="unused"), sent.append)
    device.sessions[TASK] = sess.start(ME, ROUND, MODEL)
    cohort = tuple(sorted((ME, *(f"x{i:05d}" for i in range(n - 1)))))
    device.on_message(KeyDirectory(ME, ROUND, TASK, cohort, n - 1, (n - 1) // 2 + 1, 0, ()))
    assert [m.reason for m in sent] == [sess.TOO_FEW_NEIGHBOURS]


def test_a_neighbour_count_above_the_cohort_has_the_complete_graphs_floor(tmp_path):
    """k past n - 1 is the complete graph (neighbours_of): its floor is that graph's, k/2 + 1 of
    n - 1, not one computed from the k the coordinator wrote."""
    r = _complete(tmp_path)  # n = 5: t = 3 is the complete graph's floor
    reply = r.reply(KeyDirectory(ME, ROUND, TASK, r.cohort, 10, 3, 3, ()))  # no keys relayed: stops after
    assert isinstance(reply, Decline) and reply.reason == sess.TOO_FEW_NEIGHBOURS


class _Trainer:
    """A runtime whose task returns a zero delta of `d` coordinates, counting the tasks it ran."""

    def __init__(self, root, d):
        self.device_id, self.state_root, self.d, self.trained = ME, root, d, 0
        self._busy, self.saved_under_lock = threading.Lock(), []  # DeviceRuntime's lock on its state

    def model(self, model_id):
        return model_id

    def store(self, model):
        return SimpleNamespace(load_residual=lambda: None,
                               save_residual=lambda arrays: self.saved_under_lock.append(self._busy.locked()))

    def handle_task(self, task, stop):
        self.trained += 1
        return Update(ME, task.round_id, task.task_id, "u1", task.model_id, 0, 4,
                      encode_dense({"w": np.zeros(self.d, np.float32)}))


DP = SecAggSpec(bits=16, field_bits=26, dp_gamma=1e-3, dp_sigma=2.0, dp_clip_norm=1.0)


@pytest.mark.parametrize("between,trained", [(False, 0), (True, 1)])
def test_the_floor_is_checked_before_training_and_again_with_the_models_size(tmp_path, between, trained):
    """Above the bound that needs no model: declined before any training. Between that bound and
    the multiplier of this model's size: declined after training, before anything leaves."""
    d = 300
    exact, bound = sp.own_noise_multiplier(DP, d), sp.own_noise_multiplier(DP)
    assert exact < bound
    sent: list = []
    runtime = _Trainer(tmp_path, d)
    floor = (exact + bound) / 2 if between else bound * 1.01
    device = sp.SecAggParticipant(runtime, sent.append, own_noise_floor=floor)
    task = TrainTask(ROUND, TASK, ME, "m", 1, b"\x00" * 8, TaskHyper(epochs=1, batch_size=8),
                     CompressionSpec(quant_bits=32, error_feedback=False, clip_norm=0.5))
    device.on_message(SecAggTask(task, DP, sharing=2))
    assert [getattr(m, "reason", type(m).__name__) for m in sent] == [sp.NOISE_BELOW_FLOOR]
    assert runtime.trained == trained and not device.sessions


def test_the_residual_is_saved_under_the_runtimes_lock(tmp_path):
    """state.npz is read, changed and written whole: an evaluation rewrites it under the
    runtime's lock (a refit head), so the residual's save takes that lock too, or one write
    could drop the other's part."""
    runtime = _Trainer(tmp_path, 12)
    device = sp.SecAggParticipant(runtime, [].append)
    task = TrainTask(ROUND, TASK, ME, "m", 1, b"\x00" * 8, TaskHyper(epochs=1, batch_size=8),
                     CompressionSpec(quant_bits=32, error_feedback=False, clip_norm=0.5))
    device.on_message(SecAggTask(task, SecAggSpec(), sharing=2))
    assert runtime.saved_under_lock == [True] and not runtime._busy.locked()


def test_a_new_secure_task_ends_the_older_rounds_session(tmp_path):
    """One secure round at a time: the older task's keys and input go, and a later request of
    that round is declined as having no session (it was once answered from the kept keys)."""
    sent: list = []
    device = sp.SecAggParticipant(_Trainer(tmp_path, 12), sent.append)
    device.sessions["old"] = sess.start(ME, ROUND - 1, MODEL)
    task = TrainTask(ROUND, TASK, ME, "m", 1, b"\x00" * 8, TaskHyper(epochs=1, batch_size=8),
                     CompressionSpec(quant_bits=32, error_feedback=False, clip_norm=0.5))
    device.on_message(SecAggTask(task, SecAggSpec(), sharing=2))
    device.on_message(KeyDirectory(ME, ROUND - 1, "old", ("d0", "d1", "d2"), 2, 2, 0, ()))
    assert [type(m).__name__ for m in sent] == ["KeyAdvertisement", "Decline"]
    assert sent[1].reason == sp.NO_SESSION and set(device.sessions) == {TASK}


def test_the_count_coordinate_counts_in_the_multiplier():
    """Kairouz et al. 2021, Thm. 1 written out (as tests/coordinator/test_noise_floor.py does) with
    a count scale large enough to matter: the vector sent is the rounded update and the count
    coordinate's kappa / 2, so the L2 bound the noise is measured against holds both."""
    d, kappa = 400, 60
    spec = SecAggSpec(bits=16, field_bits=26, dp_gamma=0.1, dp_sigma=50.0, dp_clip_norm=1.0, dp_count_scale=kappa)
    n = subset_size(d, spec)
    a = spec.dp_clip_norm / spec.dp_gamma
    delta2 = min(math.sqrt(a * a + n / 4 + math.sqrt(2 * 0.5) * (a + math.sqrt(n) / 2)), a + math.sqrt(n))
    want = spec.dp_sigma / math.sqrt(delta2 ** 2 + (kappa / 2) ** 2)
    assert sp.own_noise_multiplier(spec, d) == pytest.approx(want, rel=1e-9)
    assert want < 0.6 * spec.dp_sigma / delta2  # the count term is no rounding error here


def test_the_noise_floor_accepts_exactly_its_value():
    spec = SecAggSpec(bits=16, field_bits=26, dp_gamma=1e-3, dp_sigma=2.0, dp_clip_norm=1.0, dp_count_scale=4)
    for dimension in (None, 10, 1000):
        floor = sp.own_noise_multiplier(spec, dimension)
        sp.check_noise_floor(spec, floor, dimension)  # no decline at the floor itself
        with pytest.raises(sess.SecAggDecline):
            sp.check_noise_floor(spec, np.nextafter(floor, np.inf), dimension)


def test_pruning_keeps_names_that_only_start_like_a_record_and_links(tmp_path):
    """Only the records it writes are removed: round-<n>-<32 hex>, as regular files."""
    hexes = [f"{i:032x}" for i in range(4)]
    for i, h in enumerate(hexes):
        (tmp_path / f"round-{i}-{h}").write_bytes(b"t")
        os.utime(tmp_path / f"round-{i}-{h}", ns=(10**9 * i, 10**9 * i))
    foreign = tmp_path / f"round-9-{'a' * 32}.bak"
    foreign.write_text("an operator's copy")
    os.utime(foreign, ns=(0, 0))
    target = tmp_path / "elsewhere"
    target.write_text("kept")
    link = tmp_path / f"round-8-{'b' * 32}"
    link.symlink_to(target)
    sp.prune_answered(tmp_path, 1)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([f"round-3-{hexes[3]}", foreign.name, "elsewhere", link.name])
    assert target.read_text() == "kept" and link.is_symlink()
