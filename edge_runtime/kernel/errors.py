"""Errors raised by the device runtime (and shared with the coordinator).

    FedgeError
    ├── ConfigError                 bad or unknown config key, wrong type, out-of-range value
    ├── CodecError                  bytes that cannot become a message or an update
    │   ├── TruncatedPayload        fewer bytes than the header promises
    │   ├── ChecksumMismatch        bytes were corrupted in flight or on disk
    │   ├── UnsupportedVersion      schema/format version this build does not speak
    │   ├── PayloadTooLarge         over the configured size limit
    │   └── MalformedPayload        well-framed but the content is wrong (types, shapes, ranges)
    │       └── NonFiniteValues     NaN or Inf where numbers must be finite
    ├── ArtifactError               model artifacts on disk cannot be used
    │   ├── ArtifactIntegrityError  a file's hash does not match the manifest
    │   └── ManifestMismatch        task / params / manifest disagree (model_id, names, shapes)
    ├── DatasetError                local data has the wrong shape, dtype or labels
    ├── DeviceStateError            the device's own state on disk cannot be read back
    ├── BackendUnavailable          the requested trainer backend is not installed here
    │   └── UnsupportedByBackend    the backend cannot do what the task asks (e.g. ORT SGD momentum)
    ├── TrainingError               training produced NaN/Inf or the backend failed
    │   ├── TaskAborted             the device stopped a task (eligibility changed, deadline)
    │   └── Diverged                the loss became non-finite or blew up past its first value
    └── TransportError              the link to the broker failed
        ├── ConnectionLost          the link dropped (raised once; MQTT reconnects by itself)
        ├── NotConnected            no live link for this operation
        └── BrokerRefused           bad credentials, or the ACL refused a subscription
            └── PublishRefused      the broker's PUBACK refused a publish (ACL); raised by the
                                    next publish or flush, since QoS 1 answers come later

Every error carries a message that says what is wrong and what to do about it.
"""

from __future__ import annotations


class FedgeError(Exception):
    """Base of every fedge error."""

    reason = "error"


class ConfigError(FedgeError):
    reason = "bad_config"


class NamedConfigError(ConfigError):
    """A ConfigError whose .reason names which rule refused the setting (async, secure aggregation,
    sharding, forget-devices: each subclasses this rather than writing the same constructor again)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class ServiceUnavailable(FedgeError):
    """Something a service needs is not there now (its database refuses connections, its metrics
    port is held): one line, and exit status 1, so its supervisor restarts it (2 would not)."""

    reason = "unavailable"
    exit_status = 1


class CodecError(FedgeError):
    reason = "malformed"


class TruncatedPayload(CodecError):
    reason = "truncated"


class ChecksumMismatch(CodecError):
    reason = "checksum"


class UnsupportedVersion(CodecError):
    reason = "wrong_version"


class PayloadTooLarge(CodecError):
    reason = "oversize"


class MalformedPayload(CodecError):
    reason = "malformed"


class NonFiniteValues(MalformedPayload):
    reason = "non_finite"


class ArtifactError(FedgeError):
    reason = "artifact"


class UnsafeModelId(ArtifactError):
    """A model id that is not a plain folder name (kernel/manifest.check_model_id)."""


class ArtifactIntegrityError(ArtifactError):
    reason = "artifact_hash"


class ManifestMismatch(ArtifactError):
    reason = "manifest_mismatch"


class RoundModelError(FedgeError):
    """The round's model, as assembled from its ModelParts, is not the one the task names."""

    reason = "round_model"


class DatasetError(FedgeError):
    reason = "bad_dataset"


class DeviceStateError(FedgeError):
    """A file of the device's own state (state.npz, a staged state) cannot be read back."""

    reason = "bad_state"


class StateWriteError(FedgeError):
    """The device cannot write its own state (a full disk, a read-only state folder): the task is
    declined with nothing of it kept. Not parked (coordinator/backoff.py): space may come back."""

    reason = "state_unwritable"


class BackendUnavailable(FedgeError):
    reason = "backend_unavailable"


class UnsupportedByBackend(BackendUnavailable, ValueError):
    reason = "unsupported_by_backend"


class TrainingError(FedgeError):
    reason = "training_failed"


class Diverged(TrainingError):
    """Local training blew up; the task is declined instead of sending its delta."""

    reason = "diverged"


class TaskAborted(TrainingError):
    reason = "aborted"

    def __init__(self, cause: str, detail: str = ""):
        super().__init__(f"task aborted: {cause}" + (f" ({detail})" if detail else ""))
        self.cause = cause
        self.detail = detail


class TransportError(FedgeError):
    reason = "transport"


class ConnectionLost(TransportError):
    """The link to the broker dropped; an MQTT transport reconnects by itself afterwards."""

    reason = "connection_lost"


class NotConnected(TransportError):
    """An operation needs a live link and there is none (yet, or any more)."""

    reason = "not_connected"


class BrokerRefused(TransportError):
    """The broker refused the connection or an operation (bad credentials, ACL)."""

    reason = "broker_refused"


class PublishRefused(BrokerRefused):
    """The broker acknowledged a QoS 1 publish with a failure reason (typically: the ACL does
    not let this client publish on that topic). The answer arrives after `publish` returned,
    so the refusal is raised by the next `publish` (before it sends anything) or `flush`."""

    reason = "publish_refused"
