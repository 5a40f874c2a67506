"""Federated evaluation: after a committed round, a sample of devices scores the new global
model and their personalized models on their own held-out data, and the coordinator combines
their reports.

Why weighted by examples: the mean of per-device accuracies weighted by each device's
held-out count is exactly the accuracy on the union of their held-out splits, the number a
central test set would give if one existed. When every device is asked it equals that
number; a uniform sample of devices is an unbiased estimate of it (ratio estimator).

What it trusts: devices report their own numbers, so evaluation is a signal for operators,
never an input to training. A report is range-checked by the codec, must answer the
evaluation this coordinator asked that device for, counts once, and its weight is capped at
`max_examples` like an update's; a lying device can still skew the statistic by at most its
capped share, which the report count makes visible.

Durability: the combined record of each evaluation is stored; an evaluation in flight when
the process stops is not resumed (the next commit asks again), because nothing depends on it.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace

from fedge.edge_runtime.kernel.errors import ConfigError, TransportError
from fedge.edge_runtime.kernel.protocol import EvalReport, EvalTask, device_topic
from fedge.edge_runtime.kernel.update_codec import encode_dense

from .errors import DuplicateUpdate, StaleEval, UpdateRejected
from .sampling import sample_devices

log = logging.getLogger("fedge.coordinator")


@dataclass(frozen=True)
class EvalConfig:
    """[coordinator.evaluation]. The defaults give ops an accuracy signal after every commit
    at the cost of one forward pass on 20 devices; a simulator asks every device."""

    every_rounds: int = 1  # evaluate after every n-th committed round; 0 = never
    devices: int = 20  # devices asked, sampled from the eligible ones; 0 = every eligible device
    deadline_s: float = 120.0  # the evaluation closes with the reports that came by then

    def __post_init__(self) -> None:
        if self.every_rounds < 0:
            raise ConfigError("evaluation.every_rounds must be >= 0 (0 = off)")
        if self.devices < 0:
            raise ConfigError("evaluation.devices must be >= 0 (0 = every eligible device)")
        if not (self.deadline_s > 0 and math.isfinite(self.deadline_s)):
            raise ConfigError("evaluation.deadline_s must be > 0 seconds")


@dataclass(frozen=True)
class EvalRecord:
    """One evaluation, combined. Means are example-weighted; None when nothing was reported."""

    round_id: int
    model_version: int
    asked: int
    reported: int  # devices that evaluated
    declined: dict[str, int]  # devices that answered without evaluating, by their reason
    examples: int  # weight of the global-model means (each device's count, capped)
    loss_global: float | None
    accuracy_global: float | None
    examples_personal: int
    loss_personal: float | None
    accuracy_personal: float | None
    bytes_eval_up: int
    bytes_eval_down: int
    complete: bool  # every asked device answered before the deadline
    per_device: dict[str, dict] = field(default_factory=dict)  # device -> its report's numbers (this process)


def combine(reports: Iterable[EvalReport], max_examples: int) -> dict:
    """Example-weighted means of the reports that evaluated (pure). A device's weight is its
    held-out count capped at max_examples."""
    sums = {"global": [0, 0.0, 0.0], "personal": [0, 0.0, 0.0]}  # examples, loss sum, accuracy sum
    for r in reports:
        if r.reason or r.num_examples == 0:
            continue
        n = min(r.num_examples, max_examples)
        for head, present, loss, acc in (("global", r.has_global, r.loss_global, r.accuracy_global),
                                         ("personal", r.has_personal, r.loss_personal, r.accuracy_personal)):
            if present:
                s = sums[head]
                s[0] += n
                s[1] += n * loss
                s[2] += n * acc
    out = {}
    for head, (n, loss, acc) in sums.items():
        suffix = "" if head == "global" else "_personal"
        out[f"examples{suffix}"] = n
        out[f"loss_{head}"] = loss / n if n else None
        out[f"accuracy_{head}"] = acc / n if n else None
    return out


@dataclass
class _Run:
    round_id: int
    model_version: int
    asked: dict[str, str]  # device -> eval id
    deadline: float
    reports: dict[str, EvalReport] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0


def evaluation_run(config) -> EvalConfig:
    """[coordinator.evaluation] as the coordinator runs it (`config` a CoordinatorConfig): off while
    privacy withholds unnoised metrics (dp/config.py, release_unnoised_metrics): the devices' reports
    on their own data would leave unnoised and uncharged. dp/budget.py says so at start."""
    return replace(config.evaluation, every_rounds=0) if config.privacy.withholds_metrics else config.evaluation


class Evaluations:
    """The evaluation in flight and the records of finished ones. The Coordinator calls
    `after_commit`, `on_report` and `tick`; publishing goes through its Outbound."""

    def __init__(self, config: EvalConfig, outbound, store, metrics, model_id: str, seed: int,
                 max_examples: int):
        self.config, self.outbound, self.store, self.metrics = config, outbound, store, metrics
        self.model_id, self.seed, self.max_examples = model_id, seed, max_examples
        self.run: _Run | None = None
        # This process's latest evaluations (per-device numbers included); the store keeps those of
        # the latest keep_rounds closed rounds (all with the default 0).
        self.history: deque[EvalRecord] = deque(maxlen=64)

    def after_commit(self, round_id: int, version: int, params, candidates: list[str], now: float) -> None:
        every = self.config.every_rounds
        if not every or version % every or not candidates:
            return
        if self.run is not None:  # the next commit came first: close the older one with what it has
            self.close(now, f"replaced by model v{version}")
        count = self.config.devices or len(candidates)
        # Another stream than the training sample's (seed, round): the two draws are independent.
        asked = sample_devices(candidates, count, self.seed + 0x5EED, round_id)
        self.run = run = _Run(round_id, version, {d: uuid.uuid4().hex for d in asked}, now + self.config.deadline_s)
        blob = encode_dense(params)
        for sent, (device_id, eval_id) in enumerate(run.asked.items()):
            payload = self.outbound.encode(EvalTask(eval_id, device_id, self.model_id, version, round_id, blob))
            if payload is None:
                continue  # counted and logged by Outbound; the evaluation closes with the others' reports
            try:
                self.outbound.send(device_topic(device_id, "task"), payload)
            except TransportError as exc:  # called as a round closes: its record must reach the caller (a
                # noise-only round rerun at start closes before the link is up); the rest are not asked
                log.warning("evaluation of model v%d: %d of %d devices asked before the link failed (%s); it "
                            "closes at its deadline with their reports", version, sent, len(run.asked), exc)
                break
            run.bytes_down += len(payload)
        log.info("evaluation of model v%d (round %d): asked %d devices", version, round_id, len(asked))

    def on_report(self, report: EvalReport, sender: str | None, size: int, now: float) -> UpdateRejected | None:
        """Take one EvalReport; the rejection to count, or None."""
        run = self.run
        if sender != report.device_id:
            return StaleEval(f"eval report for {report.device_id!r} sent by {sender!r}")
        if run is None or run.asked.get(sender) != report.eval_id or report.model_version != run.model_version:
            return StaleEval(f"eval {report.eval_id!r} from {sender} answers no open evaluation")
        if sender in run.reports:
            return DuplicateUpdate(f"eval {report.eval_id!r} from {sender} was counted already")
        run.reports[sender] = report
        run.bytes_up += size
        if report.reason:  # counted by its reason at close; the detail is the device's word, only logged
            log.info("evaluation of model v%d: %s did not evaluate: %s (%r)", run.model_version, sender,
                     report.reason, report.detail[:200])
        if len(run.reports) == len(run.asked):
            self.close(now)
        return None

    def tick(self, now: float) -> EvalRecord | None:
        if self.run is not None and now >= self.run.deadline:
            return self.close(now)
        return None

    def close(self, now: float, cause: str = "closed at its deadline") -> EvalRecord:
        """Finish the evaluation in flight with the reports it has (tick does this at its deadline).
        `cause` is logged when reports are missing: a newer commit's evaluation replaces one 0.2 s
        after it asked, which was logged as a deadline close."""
        run, self.run = self.run, None
        reports = list(run.reports.values())
        declined = Counter(r.reason for r in reports if r.reason)
        record = EvalRecord(run.round_id, run.model_version, len(run.asked), len(reports) - sum(declined.values()),
                            dict(declined), bytes_eval_up=run.bytes_up, bytes_eval_down=run.bytes_down,
                            complete=len(reports) == len(run.asked), **combine(reports, self.max_examples),
                            per_device={r.device_id: _numbers(r) for r in reports if not r.reason})
        self.history.append(record)
        stored = asdict(record)
        del stored["per_device"]  # the combined numbers are the record; per-device ones stay in memory
        self.store.add_evaluation(record.round_id, stored)
        self.metrics.closed(record)
        log.info("evaluation of model v%d (round %d): %d/%d devices, %d examples: global loss %s acc %s, "
                 "personalized loss %s acc %s%s", record.model_version, record.round_id, record.reported,
                 record.asked, record.examples, _fmt(record.loss_global), _fmt(record.accuracy_global),
                 _fmt(record.loss_personal), _fmt(record.accuracy_personal),
                 "" if record.complete else f" ({cause})")
        return record


def _numbers(r: EvalReport) -> dict:
    return {"examples": r.num_examples,
            "loss_global": r.loss_global if r.has_global else None,
            "accuracy_global": r.accuracy_global if r.has_global else None,
            "loss_personal": r.loss_personal if r.has_personal else None,
            "accuracy_personal": r.accuracy_personal if r.has_personal else None}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"
