"""Prometheus metrics of one Coordinator, on a registry of its own.

Each CoordinatorMetrics owns a CollectorRegistry instead of using the process-global one,
so tests (and a simulator running many coordinators) can make as many as they like, and
`generate_latest(metrics.registry)` shows exactly one coordinator's series.

Labelled counters start at zero for every label fedge itself names (outcomes, rejection and
pace reasons), so a rate() over them is defined before the first event; decline reasons are
the devices' words and appear when first seen.

Series (all prefixed fedge_):
    rounds_total{outcome}            rounds closed: committed | abandoned
    round_participants               accepted updates in the last closed round
    participants_total               accepted updates over all closed rounds
    updates_accepted_total           updates accepted (counted as they arrive)
    claims_capped_total              accepted updates weighted as max_examples, below their claim
    claims_cut_total                 accepted updates whose claimed weight the norm bound's relative
                                     cap (weight_multiplier x the median claim) cut by more than 4x
    updates_excluded_total / updates_screened_total / updates_sign_split_total  accepted updates the
                                     aggregate left out, by what left them out (coordinator/left_out.py)
    declines_total{reason}           declines, by the device's reason (label sanitised)
    rejections_total{reason}         refused messages, by the coordinator's named reason
    secagg_unmask_unnamed_total      secure rounds abandoned for wrong unmask shares that no one could
                                     be named for (recovery.Unexplained: colluding holders stall rounds so)
    secagg_directory_reloads_total{result}  SIGHUP reloads of the identity directory: ok | failed (the
                                     file refused, the old map kept; secagg/reload.py)
    received_bytes_total / published_bytes_total  payload bytes received from / published to devices
    round_duration_seconds           histogram of round open -> close
    round_train_loss                 example-weighted mean training loss the devices reported in
                                     the last closed round (NaN until a round reports one)
    round_id / round_open            the latest round begun, and 1 while it is open
    model_version                    committed global model version
    devices_registered / devices_eligible
    devices_max                      [coordinator] max_devices: the most devices the registry may hold
                                     (registry_cap.py); registered / max is how full it is
    store_refresh_failures_total     failed writes of the registry's queued last-seen refreshes, each
                                     retried a minute later (registry.py, loop.py)
    pace_total{reason}               Pace replies sent
    unsendable_total{kind}           messages of the coordinator's own the codec refused to encode
                                     (a value out of the wire's range), dropped (outbound.py)
    artifact_transfers_total / artifact_bytes_total
    transport_dropped_total{reason}  inbound chunk frames and incomplete chunk sets the transport
                                     dropped before reassembly (oversize, malformed_chunk,
                                     chunk_memory_full, chunks_evicted, chunks_expired)
    publishes_refused_total          publishes the broker refused (a PUBACK failure: the ACL)
    broker_connect_failures_total{cause}  failed attempts to reach the broker, by cause: tls_untrusted,
                                     tls_hostname, tls_handshake, refused, dns, timeout, other, unknown
                                     (edge_runtime/kernel/transport/connect_failure.py)
    eval_accuracy{model} / eval_loss{model}  example-weighted held-out accuracy and cross-entropy
                                     of the latest federated evaluation, model = global | personal
    eval_examples / eval_devices{outcome} / eval_model_version  what it rests on
    evaluations_total{outcome} / eval_bytes_total{direction}  (coordinator/evaluation.py)
    metrics_http_dropped_total{reason}  connections to this endpoint closed unserved (metrics_http.py)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

from fedge.edge_runtime.kernel.transport.connect_failure import CAUSES as CONNECT_CAUSES

from .artifacts import FetchRefused
from .errors import UpdateRejected
from .pace import REASONS as PACE_REASONS
from .secagg.reload import RESULTS as DIRECTORY_RELOAD_RESULTS
from .secagg.round_state import REPLY_REASONS as SECAGG_REPLY_REASONS
from .weights import claim_capped

DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600, float("inf"))  # seconds
_MAX_DECLINE_LABELS = 64  # devices choose decline reasons: cap the label set they can grow
MAX_DECLINE_REASONS = 64  # the same for the coordinator's own per-reason tallies (declines, details)
_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_:.-]")
log = logging.getLogger("fedge.coordinator")


class CoordinatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.rounds = Counter("fedge_rounds", "Rounds closed, by outcome", ["outcome"], registry=r)
        self.participants_last = Gauge("fedge_round_participants", "Accepted updates in the last closed round",
                                       registry=r)
        self.participants = Counter("fedge_participants", "Accepted updates over all closed rounds", registry=r)
        self.accepted = Counter("fedge_updates_accepted", "Updates accepted into an open round", registry=r)
        self.screened = Counter("fedge_updates_screened", "Accepted updates the guard set left out of the "
                                "aggregate (robust/screening.py)", registry=r)
        self.sign_split = Counter("fedge_updates_sign_split", "Accepted updates the gated sign split left out "
                                  "of the aggregate ([robust.sign], robust/sign_split.py)", registry=r)
        self.claims_capped = Counter("fedge_claims_capped", "Accepted updates that claimed more examples than "
                                     "max_examples and were weighted as max_examples (weights.py)", registry=r)
        self.claims_cut = Counter("fedge_claims_cut", "Accepted updates whose claimed weight the norm bound's "
                                  "relative cap (weight_multiplier x the median claim) cut by more than 4x "
                                  "(robust/norm_bound.py)", registry=r)
        self.excluded = Counter("fedge_updates_excluded", "Accepted updates left out of the aggregate for a norm "
                                "over the norm bound's exclusion bound (robust/norm_bound.py)", registry=r)
        self.declines = Counter("fedge_declines", "Declines received, by device reason", ["reason"], registry=r)
        self.rejections = Counter("fedge_rejections", "Messages refused, by reason", ["reason"], registry=r)
        self.unmask_unnamed = Counter("fedge_secagg_unmask_unnamed", "Secure rounds abandoned for wrong unmask "
                                      "shares that no single holder, no decoding and no dealer explains: no one "
                                      "named (recovery.Unexplained)", registry=r)
        self.bytes_up = Counter("fedge_received_bytes", "Payload bytes received from devices", registry=r)
        self.bytes_down = Counter("fedge_published_bytes", "Payload bytes published to devices", registry=r)
        self.duration = Histogram("fedge_round_duration_seconds", "Seconds from round open to close",
                                  buckets=DURATION_BUCKETS, registry=r)
        self.train_loss = Gauge("fedge_round_train_loss", "Example-weighted mean device training loss, last "
                                "closed round", registry=r)
        self.train_loss.set(float("nan"))
        self.round_id = Gauge("fedge_round_id", "Id of the latest round begun", registry=r)
        self.round_open = Gauge("fedge_round_open", "1 while a round is open", registry=r)
        self.model_version = Gauge("fedge_model_version", "Committed global model version", registry=r)
        self.registered = Gauge("fedge_devices_registered", "Devices that have checked in", registry=r)
        self.eligible = Gauge("fedge_devices_eligible", "Devices whose last check-in said eligible", registry=r)
        self.max_devices = Gauge("fedge_devices_max", "The most devices the registry may hold ([coordinator] "
                                 "max_devices); a new device id past it is refused as registry_full", registry=r)
        self.unlisted = Gauge("fedge_secagg_unlisted_devices", "Eligible devices left out of selection because the "
                              "identity directory ([coordinator.secure_aggregation] directory_file) lacks them",
                              registry=r)
        self.directory_reloads = Counter("fedge_secagg_directory_reloads", "SIGHUP reloads of the identity "
                                         "directory, by result (failed: the file was refused, the old map kept; "
                                         "secagg/reload.py)", ["result"], registry=r)
        self.devices_needed = Gauge("fedge_devices_needed", "Eligible devices still missing before a round can "
                                    "begin (0 = not waiting)", registry=r)
        self.store_refresh_failures = Counter("fedge_store_refresh_failures", "Failed writes of the registry's "
                                              "queued last-seen refreshes, each retried a minute later", registry=r)
        self.pace = Counter("fedge_pace", "Pace replies sent, by reason", ["reason"], registry=r)
        self.unsendable = Counter("fedge_unsendable", "Messages of the coordinator's own the codec refused to "
                                  "encode (a value out of the wire's range), dropped; by message kind",
                                  ["kind"], registry=r)
        self.transfers = Counter("fedge_artifact_transfers", "Artifact transfers served", registry=r)
        self.artifact_bytes = Counter("fedge_artifact_bytes", "Artifact file bytes served", registry=r)
        self._decline_labels: set[str] = set()
        self._transport = _TransportCounters()
        r.register(self._transport)
        for outcome in ("committed", "abandoned"):
            self.rounds.labels(outcome)
        for reason in (*_named_reasons(), *SECAGG_REPLY_REASONS):
            self.rejections.labels(reason)
        for reason in PACE_REASONS:
            self.pace.labels(reason)
        for result in DIRECTORY_RELOAD_RESULTS:
            self.directory_reloads.labels(result)

    def watch_transport(self, transport) -> None:
        """Export `transport`'s own counters (kept on its network thread), read at scrape time."""
        self._transport.transport = transport

    # Small verbs, so the loop reads as what happened rather than as metric plumbing.

    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason).inc()  # reasons come from the coordinator's own error tree

    def update_accepted(self, device_id: str, num_examples: int, max_examples: int, equal: bool) -> None:
        self.accepted.inc()
        if claim_capped(num_examples, max_examples, equal):
            self.claims_capped.inc()
            log.warning("%s claims %d examples; weighted as max_examples = %d", device_id, num_examples,
                        max_examples)

    def declined(self, reason: str) -> None:
        self.declines.labels(self._decline_label(reason)).inc()

    def round_begun(self, round_id: int) -> None:
        self.round_id.set(round_id)
        self.round_open.set(1)

    def round_closed(self, committed: bool, participants: int, seconds: float, version: int,
                     train_loss: float | None = None) -> None:
        if train_loss is not None:
            self.train_loss.set(train_loss)
        self.rounds.labels("committed" if committed else "abandoned").inc()
        self.participants_last.set(participants)
        self.participants.inc(participants)
        self.duration.observe(max(0.0, seconds))
        self.round_open.set(0)
        self.model_version.set(version)

    def devices(self, registered: int, eligible: int) -> None:
        self.registered.set(registered)
        self.eligible.set(eligible)

    def _decline_label(self, reason: str) -> str:
        """Devices pick decline reasons, so bound what they can add to the label set."""
        label = _LABEL_CHARS.sub("_", reason)[:48] or "unspecified"
        if label in self._decline_labels:
            return label
        if len(self._decline_labels) >= _MAX_DECLINE_LABELS:
            return "other"
        self._decline_labels.add(label)
        return label


def tally_key(tally: Collection[str], reason: str) -> str:
    """The key to count a device's decline `reason` under in `tally`: the reason itself while the
    tally holds it or has room, else "other". Devices choose the text (up to 256 characters), and a
    fleet that declined with a new one every round grew the coordinator's per-reason tallies for as
    long as it ran."""
    return reason if reason in tally or len(tally) < MAX_DECLINE_REASONS else "other"


def _named_reasons() -> list[str]:
    """Every rejection reason the coordinator itself names: the `reason` of each UpdateRejected
    and FetchRefused class (handler crashes add internal:<Type> when they happen)."""
    seen, todo = set(), [UpdateRejected, FetchRefused]
    while todo:
        cls = todo.pop()
        seen.add(cls.reason)
        todo.extend(cls.__subclasses__())
    return sorted(seen)


class _TransportCounters:
    """A collector over the transport's `dropped`, `refused_publishes` and `connect_failures`;
    a transport without them (the in-memory one) exports zeros."""

    def __init__(self) -> None:
        self.transport = None

    def collect(self):
        dropped = CounterMetricFamily("fedge_transport_dropped", "Inbound chunk frames and incomplete chunk sets "
                                      "dropped by the transport, by reason", labels=["reason"])
        for reason, count in sorted(dict(getattr(self.transport, "dropped", None) or {}).items()):
            dropped.add_metric([reason], count)
        yield dropped
        refused = CounterMetricFamily("fedge_publishes_refused", "Publishes the broker refused (PUBACK failure, "
                                      "e.g. the ACL)")
        refused.add_metric([], getattr(self.transport, "refused_publishes", 0))
        yield refused
        failures = CounterMetricFamily("fedge_broker_connect_failures", "Failed attempts to reach the broker, by "
                                       "cause", labels=["cause"])
        counts = getattr(getattr(self.transport, "connect_failures", None), "by_cause", None) or {}
        for cause in CONNECT_CAUSES:
            failures.add_metric([cause], counts.get(cause, 0))
        yield failures


class EvalMetrics:
    """fedge_eval_* series on the coordinator's registry: the latest finished evaluation
    (NaN until one finishes) and running totals."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.accuracy = Gauge("fedge_eval_accuracy", "Example-weighted held-out accuracy, latest evaluation",
                              ["model"], registry=r)
        self.loss = Gauge("fedge_eval_loss", "Example-weighted held-out cross-entropy, latest evaluation",
                          ["model"], registry=r)
        for model in ("global", "personal"):
            self.accuracy.labels(model).set(float("nan"))
            self.loss.labels(model).set(float("nan"))
        self.examples = Gauge("fedge_eval_examples", "Held-out examples behind the latest evaluation", registry=r)
        self.devices = Gauge("fedge_eval_devices", "Devices of the latest evaluation, by outcome", ["outcome"],
                             registry=r)
        self.version = Gauge("fedge_eval_model_version", "Model version of the latest evaluation", registry=r)
        self.evaluations = Counter("fedge_evaluations", "Evaluations finished, by whether every asked "
                                       "device answered", ["outcome"], registry=r)
        self.bytes = Counter("fedge_eval_bytes", "Evaluation payload bytes, by direction", ["direction"],
                                 registry=r)
        for outcome in ("complete", "partial"):
            self.evaluations.labels(outcome)
        for direction in ("up", "down"):
            self.bytes.labels(direction)

    def closed(self, record) -> None:
        for model, acc, loss in (("global", record.accuracy_global, record.loss_global),
                                 ("personal", record.accuracy_personal, record.loss_personal)):
            self.accuracy.labels(model).set(float("nan") if acc is None else acc)
            self.loss.labels(model).set(float("nan") if loss is None else loss)
        self.examples.set(record.examples)
        self.devices.labels("asked").set(record.asked)
        self.devices.labels("reported").set(record.reported)
        self.devices.labels("declined").set(sum(record.declined.values()))
        self.version.set(record.model_version)
        self.evaluations.labels("complete" if record.complete else "partial").inc()
        self.bytes.labels("up").inc(record.bytes_eval_up)
        self.bytes.labels("down").inc(record.bytes_eval_down)
