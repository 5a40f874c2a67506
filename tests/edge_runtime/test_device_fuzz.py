"""Seeded fuzz of every message a device reads, each with the answer it must get, and a fresh
device as the oracle for its state afterwards.

test_hostile_coordinator.py checks that a device survives a storm; this one checks what it
answers. Each drawn message comes with its expected answer: a task the device cannot run is
declined with one named reason (the codec's, the runtime's, the task table's, the secure
round's), an evaluation it cannot do is reported with its reason, and a message that names no
task of this device (an Ack for an update it never sent, a Pace, an Announcement, garbage) gets
nothing. None of them may change the device's training state, so a valid task after the storm
must give the bytes a fresh device gives for it, personal head included.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from fedge.edge_runtime.journal import SEEN_TASKS_KEPT
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import (
    ANNOUNCE_TOPIC,
    Ack,
    Announcement,
    ArtifactFile,
    CompressionSpec,
    Decline,
    EvalReport,
    EvalTask,
    Pace,
    TaskHyper,
    TrainTask,
    Update,
    device_topic,
)
from fedge.edge_runtime.kernel.secagg.messages import (
    KeyDirectory,
    PeerKeys,
    SecAggSpec,
    SecAggTask,
    ShareDelivery,
    UnmaskRequest,
)
from fedge.edge_runtime.kernel.update_codec import encode_dense
from fedge.edge_runtime.secagg_participant import NO_SESSION
from fedge.edge_runtime.store import DeviceStore
from tests.edge_runtime.one_device import DEVICE, TickingClock, one_device, pump, reframed
from tests.tiny_model import build_tiny_model

MESSAGES = 300  # about 2 s here, after the first training of the process (about 6 s, any test's)
SEED = 20261206
MAX_MESSAGE_BYTES = 64 << 10  # the fuzzed device's frame limit (64 MiB by default)
MAX_TASK_S = 0.5  # the device's cap on one task (seconds of its ticking clock: about 50 steps)
NO_ANSWER = None


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


class Fuzzer:
    """Draws (channel, payload, task or eval id, expected answer's reason)."""

    REFUSED_HYPER = ({"lr": float("nan")}, {"lr": float("inf")}, {"lr": -1.0}, {"lr": 1e30}, {"batch_size": 0},
                     {"batch_size": 10**12}, {"max_steps": 10**12}, {"epochs": 10**9}, {"optimizer": "lbfgs"},
                     {"momentum": float("nan")}, {"max_grad_norm": -1.0})

    def __init__(self, model, rng: np.random.Generator):
        _, manifest, runtime = model
        self.rng = rng
        self.model_id = manifest.model_id
        self.shared = runtime.initial("shared")
        self.params = encode_dense(self.shared)
        self.issued = 0
        self.answered: list[tuple[str, str]] = []  # (task id, reason) of declined tasks, to send again

    def task(self, **changes) -> TrainTask:
        self.issued += 1
        base = TrainTask(int(self.rng.integers(0, 2**40)), f"f{self.issued}", DEVICE, self.model_id, 1, self.params,
                         TaskHyper(epochs=1, batch_size=8), CompressionSpec(quant_bits=32), deadline_s=600.0,
                         seed=int(self.rng.integers(0, 1000)))
        return dataclasses.replace(base, **changes)

    def pick(self, options):
        return options[int(self.rng.integers(0, len(options)))]

    def draw(self) -> tuple[list[tuple[str, bytes]], str, str | None]:
        """(frames to send in order, the id its answer names, that answer's reason or NO_ANSWER)."""
        kind = self.pick(("refused", "refused_secure", "other_model", "params", "shapes", "huge", "diverge",
                          "late", "bad_id", "again", "eval", "ack", "secagg_stage", "noise", "digest", "oversize"))
        drawn = getattr(self, f"_{kind}")()
        return (drawn[0] if isinstance(drawn[0], list) else [drawn[:2]]), drawn[-2], drawn[-1]

    def _digest(self):  # a model to fetch whose manifest does not hash to the task's digest
        self.issued += 1
        model_id, manifest = f"fetched{self.issued}", b'{"model_id": "x"}'
        t = self.task(model_id=model_id, manifest_sha256=hashlib.sha256(self.rng.bytes(8)).hexdigest())
        item = ArtifactFile(model_id, "manifest.json", hashlib.sha256(manifest).hexdigest(), manifest, 0, 2)
        return [("task", encode_message(t)), ("artifact", encode_message(item))], t.task_id, "artifact_hash"

    def _oversize(self):  # over the device's frame limit: never parsed, so nobody to answer
        t = self.task(params=self.params + bytes(MAX_MESSAGE_BYTES))
        return "task", encode_message(t), "", NO_ANSWER

    def _refused(self):
        t = self.task()
        hyper = self.pick(self.REFUSED_HYPER)
        return "task", reframed(t, lambda body: body["hyper"].update(hyper)), t.task_id, "malformed"

    def _refused_secure(self):
        t = self.task()
        hyper = self.pick(self.REFUSED_HYPER)
        frame = reframed(SecAggTask(t, SecAggSpec(), sharing=2), lambda body: body["task"]["hyper"].update(hyper))
        return "task", frame, t.task_id, "malformed"

    def _other_model(self):  # a model it lacks, with no manifest hash to fetch it by
        t = self.task(model_id=self.pick(("other", "m-" + "x" * 100, "0")))
        return "task", encode_message(t), t.task_id, "artifact"

    def _params(self):  # a truncated, empty or foreign payload
        params, reason = self.pick(((self.params[: int(self.rng.integers(1, len(self.params)))], "truncated"),
                                    (b"", "truncated"), (b"FDGU" + bytes(40), "wrong_version")))
        t = self.task(params=params) if self.rng.random() < 0.7 or not params else self.task(correction=params)
        return "task", encode_message(t), t.task_id, reason

    def _shapes(self):
        wrong = {k: np.zeros(np.shape(v) + (2,), np.float32) for k, v in self.shared.items()}
        t = self.task(params=encode_dense(self.pick((wrong, {"w": np.zeros(3, np.float32)}))))
        return "task", encode_message(t), t.task_id, "manifest_mismatch"

    def _huge(self):  # in range, but more work than the device gives one task
        hyper = TaskHyper(epochs=10**6, batch_size=1, max_steps=2**31 - 1)
        t = self.task(hyper=hyper, deadline_s=1e9)
        return "task", encode_message(t), t.task_id, "aborted:time_limit"

    def _diverge(self):
        big = encode_dense({k: np.full(np.shape(v), 1e30, np.float32) for k, v in self.shared.items()})
        t = self.task(params=big) if self.rng.random() < 0.5 else self.task(hyper=TaskHyper(lr=1e6, batch_size=8))
        return "task", encode_message(t), t.task_id, "diverged"

    def _late(self):
        t = self.task(deadline_s=0.0)
        return "task", encode_message(t), t.task_id, "deadline_passed"

    def _bad_id(self):  # the wire's model-id pattern refuses it: no id can be trusted
        t = self.task()
        return "task", reframed(t, lambda body: body.update(model_id="../escape")), t.task_id, "malformed"

    def _again(self):  # a copy of a task it declined: the same answer again, never training
        if not self.answered:
            return self._late()
        task_id, reason = self.pick(self.answered[-SEEN_TASKS_KEPT // 2:])  # older ones' declines are forgotten
        return "task", encode_message(self.task(task_id=task_id)), task_id, reason

    def _eval(self):
        self.issued += 1
        eval_id = f"e{self.issued}"
        bad = self.pick(((self.params[:9], "truncated"), (encode_dense({"w": np.zeros(2, np.float32)}),
                                                          "manifest_mismatch")))
        model_id, params, reason = self.pick(((f"missing{self.issued}", self.params, "model_missing"),
                                              (self.model_id, *bad)))
        return "task", encode_message(EvalTask(eval_id, DEVICE, model_id, 1, 1, params)), eval_id, reason

    def _ack(self):  # for an update it never sent
        ack = Ack(DEVICE, int(self.rng.integers(0, 100)), f"f{self.rng.integers(0, self.issued + 1)}",
                  hashlib.sha256(self.rng.bytes(8)).hexdigest()[:32], bool(self.rng.integers(0, 2)), "stale_round")
        return "ack", encode_message(ack), "", NO_ANSWER

    def _secagg_stage(self):  # a later stage of a round the device never joined
        self.issued += 1
        task_id, sha = f"s{self.issued}", "ab" * 32
        keys = tuple(PeerKeys(f"p{i}", bytes([i + 1]) * 32, bytes([i + 2]) * 32, sha) for i in range(3))
        cohort = (DEVICE, "p0", "p1", "p2", *(f"x{i}" for i in range(int(self.pick((0, 10, 5000))))))
        message = self.pick((KeyDirectory(DEVICE, 1, task_id, cohort, 3, 2, 0, keys),
                             ShareDelivery(DEVICE, 1, task_id, ()),
                             UnmaskRequest(DEVICE, 1, task_id, cohort, (), sha)))
        return "task", encode_message(message), task_id, NO_SESSION

    def _noise(self):
        roll = self.rng.random()
        if roll < 0.3:
            return "task", encode_message(Pace(DEVICE, float(self.pick((0.0, 1e9, 5.0))))), "", NO_ANSWER
        if roll < 0.5:
            frame = encode_message(Announcement(self.pick((self.model_id, "other")), 9, "", 3, "training", "s1"))
            return "announce", frame, "", NO_ANSWER
        if roll < 0.7:  # a task for another device on this device's topic
            return "task", encode_message(self.task(device_id="devB")), "", NO_ANSWER
        frame = bytearray(reframed(self.task(), lambda body: body["hyper"].update(lr=float("nan"))))
        frame[int(self.rng.integers(0, len(frame)))] ^= 0xFF  # damaged: names nobody reliably
        return "task", bytes(frame), "", NO_ANSWER


def _answers(sent: list, answer_id: str) -> list:
    return [m for m in sent if isinstance(m, (Update, Decline)) and m.task_id == answer_id
            or isinstance(m, EvalReport) and m.eval_id == answer_id]


def _valid(model, task_id: str, seed: int) -> TrainTask:
    _, manifest, runtime = model
    return TrainTask(9, task_id, DEVICE, manifest.model_id, 2, encode_dense(runtime.initial("shared")),
                     TaskHyper(epochs=2, batch_size=8, lr=0.05, momentum=0.9, keep_optimizer_state=True),
                     CompressionSpec(quant_bits=8, topk_fraction=0.5), seed=seed)


def _train(agent, coord, task: TrainTask) -> Update:
    coord.publish(device_topic(DEVICE, "task"), encode_message(task))
    (reply,) = _answers(pump(agent, coord), task.task_id)
    assert isinstance(reply, Update), reply
    return reply


def test_every_hostile_message_gets_its_named_answer_and_leaves_the_state_as_a_fresh_device_has_it(model, tmp_path):
    clock = TickingClock()
    agent, coord = one_device(model, tmp_path / "fuzzed", channels=("update", "fetch"), clock=clock,
                              max_task_s=MAX_TASK_S, max_message_bytes=MAX_MESSAGE_BYTES)
    fuzz = Fuzzer(model, np.random.default_rng(SEED))
    seen: dict[str, int] = {}
    for _ in range(MESSAGES):
        frames, answer_id, expected = fuzz.draw()
        sent = []
        for channel, payload in frames:
            coord.publish(ANNOUNCE_TOPIC if channel == "announce" else device_topic(DEVICE, channel), payload)
            sent += pump(agent, coord)  # raises if the agent's poll does
        clock.advance(1.0)
        if expected is NO_ANSWER:
            assert [m for m in sent if isinstance(m, (Update, Decline, EvalReport))] == [], (frames, sent)
            continue
        answers = _answers(sent, answer_id)
        assert len(answers) == 1, (answer_id, expected, sent)  # one answer, not silence
        answer = answers[0]
        assert not isinstance(answer, Update) and answer.reason == expected, (answer_id, expected, answer)
        if isinstance(answer, Decline) and not answer.task_id.startswith("s"):
            fuzz.answered.append((answer_id, expected))
        seen[expected] = seen.get(expected, 0) + 1
    assert len(seen) >= 10, seen  # the draw reached most answers
    assert len(agent.pending) == 0  # nothing was trained and kept

    fresh_agent, fresh_coord = one_device(model, tmp_path / "fresh", clock=TickingClock(), max_task_s=MAX_TASK_S)
    for i, seed in enumerate((4, 5)):  # two in a row: the second starts from state the first left
        task = _valid(model, f"valid{i}", seed)
        got, want = _train(agent, coord, task), _train(fresh_agent, fresh_coord, task)
        assert (got.payload, got.num_examples, got.metrics) == (want.payload, want.num_examples, want.metrics)
    _, manifest, _ = model
    stores = [DeviceStore(root / DEVICE, manifest.model_id) for root in (tmp_path / "fuzzed", tmp_path / "fresh")]
    for load in ("load_personal", "load_residual", "load_opt_state"):
        a, b = (getattr(store, load)() for store in stores)
        assert a is not None and a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), load
