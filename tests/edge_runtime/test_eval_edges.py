"""Federated evaluation on the device (evaluation.py) with a stand-in runtime, for the
mutation7-agent audit: an eval id answered once however often it comes, and a loss reported
within the wire's bounds [0, MAX_EVAL_LOSS] whatever the scoring returned."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from fedge.edge_runtime.device import DeviceEval
from fedge.edge_runtime.evaluation import EvalAnswers, answer_eval
from fedge.edge_runtime.kernel.errors import NotConnected
from fedge.edge_runtime.kernel.protocol import MAX_EVAL_LOSS, EvalTask
from fedge.edge_runtime.kernel.update_codec import encode_dense

_MANIFEST = SimpleNamespace(by_role=lambda role: [SimpleNamespace(name="w", shape=(2,))])


class Runtime:
    device_id = "dev-1"
    model_dirs = {"m": "unused"}

    def __init__(self, loss: float):
        self.loss, self.evaluated = loss, 0

    def eligibility(self):
        return None

    def model(self, model_id):
        return SimpleNamespace(manifest=_MANIFEST)

    def evaluate(self, model_id, shared, version=None, should_abort=None):
        self.evaluated += 1
        return DeviceEval(5, None, 0.8, None, self.loss)

    def keep_global(self, model_id, shared, version):
        pass


def _task(eval_id: str = "e1") -> EvalTask:
    return EvalTask(eval_id, "dev-1", "m", 3, 2, encode_dense({"w": np.zeros(2, np.float32)}))


def test_an_eval_id_is_answered_once_however_often_it_comes():
    runtime, sent = Runtime(0.5), []
    answers = EvalAnswers(runtime)
    first = answers.answer(_task(), sent.append)
    assert first.loss_global == 0.5 and first.accuracy_global == 0.8 and sent == [first]
    assert [answers.answer(_task(), sent.append) for _ in range(3)] == [None, None, None]
    assert runtime.evaluated == 1 and len(sent) == 1
    assert answers.answer(_task("e2"), sent.append) is not None and runtime.evaluated == 2 and len(sent) == 2


class Flaky(Runtime):
    """Scoring raises once with an error that is not a FedgeError (a bug in a backend)."""

    def evaluate(self, model_id, shared, version=None, should_abort=None):
        if not self.evaluated:
            self.evaluated += 1
            raise RuntimeError("backend bug")
        return super().evaluate(model_id, shared, version)


def _failing_once(sent: list):
    def send(report):
        if not sent:
            sent.append(None)  # the first try: the link dropped as the report left
            raise NotConnected("link dropped")
        sent.append(report)
    return send


@pytest.mark.parametrize("fails", ["scoring", "send"])
def test_an_eval_id_whose_answer_raised_is_answered_when_it_comes_again(fails):
    """The id was recorded before its answer: an exception in scoring that is not a FedgeError
    (answer_eval turns those into a declining report), or any in the send (the link dropped),
    left it unanswered for ever, every later copy ignored (AgentLoop logs and goes on)."""
    runtime, sent = (Flaky(0.5), []) if fails == "scoring" else (Runtime(0.5), [])
    send = sent.append if fails == "scoring" else _failing_once(sent)
    answers = EvalAnswers(runtime)
    with pytest.raises(RuntimeError if fails == "scoring" else NotConnected):
        answers.answer(_task(), send)
    again = answers.answer(_task(), send)
    assert again is not None and again.loss_global == 0.5 and sent[-1] is again
    assert answers.answer(_task(), send) is None and sent.count(again) == 1  # and then once only


@pytest.mark.parametrize("loss, reported", [(-1e-7, 0.0), (0.0, 0.0), (2.5, 2.5), (MAX_EVAL_LOSS * 3, MAX_EVAL_LOSS),
                                            (math.inf, MAX_EVAL_LOSS), (math.nan, MAX_EVAL_LOSS)])
def test_the_loss_reported_is_clamped_into_the_wires_bounds(loss, reported):
    # A mean cross-entropy a hair below 0 (rounding, a model sure of every example) is a
    # loss of 0: the wire refuses a negative one, and the report would not be built at all.
    report = answer_eval(Runtime(loss), _task())
    assert (report.reason, report.loss_global) == ("", reported)
