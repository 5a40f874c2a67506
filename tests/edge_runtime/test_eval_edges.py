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

    def evaluate(self, model_id, shared):
        self.evaluated += 1
        return DeviceEval(5, None, 0.8, None, self.loss)

    def keep_global(self, model_id, shared, version):
        pass


def _task(eval_id: str = "e1") -> EvalTask:
    return EvalTask(eval_id, "dev-1", "m", 3, 2, encode_dense({"w": np.zeros(2, np.float32)}))


def test_an_eval_id_is_answered_once_however_often_it_comes():
    runtime = Runtime(0.5)
    answers = EvalAnswers(runtime)
    first = answers.answer(_task())
    assert first.loss_global == 0.5 and first.accuracy_global == 0.8
    assert [answers.answer(_task()) for _ in range(3)] == [None, None, None]
    assert runtime.evaluated == 1
    assert answers.answer(_task("e2")) is not None and runtime.evaluated == 2


@pytest.mark.parametrize("loss, reported", [(-1e-7, 0.0), (0.0, 0.0), (2.5, 2.5), (MAX_EVAL_LOSS * 3, MAX_EVAL_LOSS),
                                            (math.inf, MAX_EVAL_LOSS), (math.nan, MAX_EVAL_LOSS)])
def test_the_loss_reported_is_clamped_into_the_wires_bounds(loss, reported):
    # A mean cross-entropy a hair below 0 (rounding, a model sure of every example) is a
    # loss of 0: the wire refuses a negative one, and the report would not be built at all.
    report = answer_eval(Runtime(loss), _task())
    assert (report.reason, report.loss_global) == ("", reported)
