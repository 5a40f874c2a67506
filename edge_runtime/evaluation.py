"""Federated evaluation on the device: answer an EvalTask with an EvalReport.

The device scores the task's global model (the shared params it carries, with the global
head) and its own personalized model (the same shared params with its personal head) on its
held-out split, and reports loss, accuracy and the example count. The shared params are not
trained; a private head may first be refit to the model's body (head_refit.py), under the
device's abort check and a time limit (EVAL_REFIT_S), keeping the old head if stopped. The
model is kept as the device's global model when it is newer than the one it holds (for `fedge
device export`: the final round's model reaches a device only here). A device that cannot
evaluate says why in `reason` instead of staying silent, so the coordinator can tell "not
eligible" from "lost".
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable

from .kernel.clock import SystemClock
from .kernel.errors import FedgeError
from .kernel.manifest import check_params
from .kernel.protocol import MAX_EVAL_LOSS, EvalReport, EvalTask
from .kernel.update_codec import decode_dense
from .work_limits import EVAL_REFIT_S, stop_check

log = logging.getLogger("fedge.device")


class EvalAnswers:
    """Each EvalTask answered once, at once (no journal: an evaluation lost with a crash or a
    broker is simply missing from that version's statistics). A redelivered copy, bad or
    mended, gets no second answer: the coordinator counted the first. A task the wire refused
    comes as its refusing EvalReport (unanswered.py) and is sent as it is. An id counts as
    answered once its report is sent: one whose scoring or send raised (a bug, a dropped link)
    is answered when it comes again."""

    def __init__(self, runtime, remembered: int = 16, clock=None, refit_s: float = EVAL_REFIT_S):
        self.runtime = runtime
        self.answered: deque[str] = deque(maxlen=remembered)  # eval ids answered lately
        self.clock = clock or SystemClock()
        self.refit_s = refit_s  # the longest a refit at one evaluation may train (seconds)

    def refit_stop(self) -> Callable[[], str | None]:
        """For one evaluation's refit, asked between its steps: the device's abort check, then
        the refit's time limit counted from now."""
        past_limit = stop_check(self.clock, float("inf"), self.refit_s)
        return lambda: self.runtime.abort_check() or past_limit()

    def answer(self, task: EvalTask | EvalReport, send: Callable[[EvalReport], None]) -> EvalReport | None:
        """Score `task` and send its report; the report sent, or None for an id answered before."""
        if task.eval_id in self.answered:
            return None
        self.answered.append(task.eval_id)  # taken back below if no report leaves
        try:
            report = task if isinstance(task, EvalReport) else answer_eval(self.runtime, task, self.refit_stop())
            send(report)
        except BaseException:
            if task.eval_id in self.answered:
                self.answered.remove(task.eval_id)  # not answered: the next copy of this id is
            raise
        return report


def answer_eval(runtime, task: EvalTask, should_abort: Callable[[], str | None] | None = None) -> EvalReport:
    """The EvalReport for `task` from a DeviceRuntime. Eligibility is asked as for training
    (a device on a low battery or a busy CPU should not spend it on the fleet's statistics),
    and should_abort (default: the device's abort_check) between the steps of a head refit,
    which can cost up to a task's steps: stopped, the device scores the head it kept."""
    refused = runtime.eligibility()
    if refused is None and task.model_id not in runtime.model_dirs:
        refused = "model_missing"  # it never trained this model; evaluation does not fetch artifacts
    if refused is not None:
        return _declined(runtime.device_id, task, refused)
    try:
        shared = decode_dense(task.params)
        check_params(runtime.model(task.model_id).manifest, shared, "shared")
        scores = runtime.evaluate(task.model_id, shared, version=task.model_version, should_abort=should_abort)
        runtime.keep_global(task.model_id, shared, task.model_version)
    except FedgeError as exc:
        log.warning("device %s: evaluation %s failed: %s", runtime.device_id, task.eval_id, exc)
        return _declined(runtime.device_id, task, getattr(exc, "reason", "") or "eval_failed")
    report = EvalReport(
        runtime.device_id, task.eval_id, task.model_version, scores.num_test,
        has_global=scores.accuracy_global is not None, loss_global=_loss(scores.loss_global),
        accuracy_global=scores.accuracy_global or 0.0,
        has_personal=scores.accuracy_personal is not None, loss_personal=_loss(scores.loss_personal),
        accuracy_personal=scores.accuracy_personal or 0.0)
    log.info("device %s: evaluated model v%d on %d examples: global loss %.4g acc %.4f, personal loss %.4g acc %.4f",
             runtime.device_id, task.model_version, scores.num_test, report.loss_global, report.accuracy_global,
             report.loss_personal, report.accuracy_personal)
    return report


def _loss(value: float | None) -> float:
    """A non-finite or huge loss is reported as the ceiling the wire allows: the model is that
    bad, and saying so beats a report the coordinator would have to refuse."""
    if value is None:
        return 0.0
    return MAX_EVAL_LOSS if not math.isfinite(value) else min(max(value, 0.0), MAX_EVAL_LOSS)


def _declined(device_id: str, task: EvalTask, reason: str) -> EvalReport:
    log.info("device %s: evaluation %s not done: %s", device_id, task.eval_id, reason)
    return EvalReport(device_id, task.eval_id, task.model_version, reason=reason[:64])
