"""The wire schema shared by device and coordinator.

Every message is a frozen dataclass. `codec.encode_message` / `codec.decode_message` turn
them into framed bytes; tensors travel inside `bytes` fields encoded by `update_codec`
(raw little-endian buffers, never pickles). The schema version is in every frame; a
peer that speaks another version is refused with `UnsupportedVersion`.

Topic scheme (version 1; `{d}` is a device id):
    fedge/v1/devices/{d}/checkin   device -> coordinator   CheckIn
    fedge/v1/devices/{d}/task      coordinator -> device   TrainTask | EvalTask | Pace
    fedge/v1/devices/{d}/update    device -> coordinator   Update | Decline | EvalReport
    fedge/v1/devices/{d}/ack       coordinator -> device   Ack
    fedge/v1/devices/{d}/status    device -> coordinator   Status (also the MQTT Last Will)
    fedge/v1/devices/{d}/fetch     device -> coordinator   FetchRequest (missing artifacts)
    fedge/v1/devices/{d}/artifact  coordinator -> device   ArtifactFile (one per file)
    fedge/v1/announce              coordinator -> all      Announcement (retained)
    fedge/v1/model/{k}             coordinator -> all      ModelPart k of the round's model (retained)
    fedge/v1/shard/{k}/devices/{d}/update  device -> worker k  Update, when its TrainTask.shard = k

With the coordinator's `model_part_bytes` set, a round's shared parameters (and SCAFFOLD's
c) are published once, as retained ModelParts, instead of inside each of N tasks: the
coordinator sends the model's bytes once per round, not once per device, and the broker fans
them out. A task then carries only the hash of that RoundModel; a device subscribes to the
parts while it needs them. A device that cannot get them (a broker that lost its retained
messages, parts over the packet limit) asks with a FetchRequest(task_id=...) and gets its
task again with the parameters inline.

The task channel also carries Pace (when to check in again). A device may publish only on
its own checkin/update/status/fetch topics and read only its own task/ack/artifact topics
and the announcement; the shipped Mosquitto ACL (tools/broker/files/fedge.acl) enforces exactly that.
Messages larger than the broker's maximum packet size travel as chunks (transport/chunks.py)
on the same topic and are reassembled before decoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .task_hyper import OPTIMIZERS, TaskHyper  # noqa: F401  (re-exported: TrainTask.hyper, and where callers found them)

# Value ranges and `bounded` live in wire_fields.py (the secure-aggregation messages use them
# too); re-exported here, where the codec and the tests have always found them.
from .wire_fields import (  # noqa: F401
    _FREE_TEXT,
    _NON_NEGATIVE,
    _SECONDS,
    I64,
    MAX_EXAMPLES,
    MAX_TEXT,
    bounded,
    list_field,
    model_id_field,
    sha256_field,
)

SCHEMA_VERSION = 1
TOPIC_ROOT = "fedge/v1"
MAX_SHARDS = 1024  # aggregator shards ([coordinator] shards); shard ids are 0 .. MAX_SHARDS - 1
DEVICE_MAX_TASK_S = 3600.0  # a fedge device's default [agent] max_task_s: no task trains longer (work_limits.py)
SHARD_CLIENT_PREFIX = "fedge-shard-"  # + shard: no device id may start with it (tools/provision.py)


def device_topic(device_id: str, kind: str) -> str:
    """Topic for one device's channel `kind` (checkin, task, update, ack, status)."""
    if kind not in DEVICE_CHANNELS:
        raise ValueError(f"unknown device channel {kind!r}; expected one of {DEVICE_CHANNELS}")
    if not device_id or any(c in device_id for c in "/+#\0"):
        raise ValueError(f"invalid device id {device_id!r}: must be non-empty, without / + # or NUL")
    return f"{TOPIC_ROOT}/devices/{device_id}/{kind}"


def all_devices_topic(kind: str) -> str:
    """Wildcard filter the coordinator subscribes to for one channel of every device."""
    return f"{TOPIC_ROOT}/devices/+/{kind}"


DEVICE_CHANNELS = ("checkin", "task", "update", "ack", "status", "fetch", "artifact")
ANNOUNCE_TOPIC = f"{TOPIC_ROOT}/announce"
MODEL_PARTS_FILTER = f"{TOPIC_ROOT}/model/+"


def model_part_topic(index: int) -> str:
    """Retained topic of part `index` of the current round's model."""
    return f"{TOPIC_ROOT}/model/{index}"


def shard_update_topic(shard: int, device_id: str) -> str:
    """Where a device whose task names `shard` uploads its Update (and its chunks)."""
    if not 0 <= shard < MAX_SHARDS:
        raise ValueError(f"shard {shard} out of range [0, {MAX_SHARDS})")
    return f"{TOPIC_ROOT}/shard/{shard}{device_topic(device_id, 'update')[len(TOPIC_ROOT):]}"


def shard_updates_filter(shard: int) -> str:
    """What shard `shard`'s aggregator worker subscribes to."""
    return f"{TOPIC_ROOT}/shard/{shard}/devices/+/update"


def shard_client_id(shard: int) -> str:
    """Shard `shard`'s worker: its MQTT client id and, on a secured broker, its username (so
    use_username_as_clientid keeps the id); one session per shard, whoever serves it."""
    return f"{SHARD_CLIENT_PREFIX}{shard}"


def shard_of(topic: str) -> tuple[int, str] | None:
    """(shard, device id) of a shard update topic, or None for any other topic."""
    parts = topic.split("/")
    if (len(parts) == 7 and "/".join(parts[:3]) == f"{TOPIC_ROOT}/shard" and parts[3].isascii() and parts[3].isdigit()
            and parts[4] == "devices" and parts[5] and parts[6] == "update" and int(parts[3]) < MAX_SHARDS):
        return int(parts[3]), parts[5]
    return None


def device_of(topic: str) -> tuple[str, str] | None:
    """(device id, channel) of a per-device topic, or None for any other topic."""
    parts = topic.split("/")
    if len(parts) == 5 and "/".join(parts[:3]) == f"{TOPIC_ROOT}/devices" and parts[4] in DEVICE_CHANNELS and parts[3]:
        return parts[3], parts[4]
    return None


QUANT_BITS = (32, 8, 4)


@dataclass(frozen=True)
class CompressionSpec:
    """How the device compresses its shared-parameter delta."""

    clip_norm: float = bounded(0.0, 1e30, 0.0)  # L2 bound on the whole delta; 0 disables clipping
    quant_bits: int = bounded(1, 32, 8)  # 32 = fp32, 8 = int8, 4 = 4-bit
    topk_fraction: float = bounded(0.0, 1.0, 1.0)  # fraction of entries kept per tensor; 1.0 = dense
    error_feedback: bool = True  # keep what was not sent and add it to the next delta

    def __post_init__(self) -> None:
        if self.quant_bits not in QUANT_BITS:
            raise ValueError(f"compression.quant_bits must be one of {QUANT_BITS}, got {self.quant_bits!r}")
        if not 0 < self.topk_fraction <= 1:  # also refuses NaN
            raise ValueError(f"compression.topk_fraction must be in (0, 1], got {self.topk_fraction!r}")
        if not self.clip_norm >= 0:
            raise ValueError(f"compression.clip_norm must be >= 0 (0 = off), got {self.clip_norm!r}")


@dataclass(frozen=True)
class CheckIn:
    device_id: str
    backends: tuple[str, ...] = list_field(64, default=())  # a device has a handful (backends.py)
    model_ids: tuple[str, ...] = model_id_field(items=64, default=())
    eligible: bool = True
    reason: str = ""
    num_examples: int = bounded(0, MAX_EXAMPLES, 0)


@dataclass(frozen=True)
class TrainTask:
    round_id: int = bounded(*_NON_NEGATIVE)
    task_id: str
    device_id: str
    model_id: str = model_id_field()
    model_version: int = bounded(*_NON_NEGATIVE)
    params: bytes  # shared params, update_codec dense fp32; empty when round_model_sha256 is set
    hyper: TaskHyper = field(default_factory=TaskHyper)
    compression: CompressionSpec = field(default_factory=CompressionSpec)
    deadline_s: float = bounded(*_SECONDS, 600.0)  # seconds after receipt
    seed: int = bounded(*_NON_NEGATIVE, 0)  # numpy refuses negative seeds
    # SCAFFOLD: the server control variate c, update_codec dense fp32 (the device subtracts its own
    # c_i and uploads Update.control); empty = not a SCAFFOLD round.
    correction: bytes = b""
    manifest_sha256: str = sha256_field(default="")  # sha256 of the model's manifest.json, to verify fetched artifacts
    # sha256 of the encoded RoundModel published as ModelParts; params and correction are then
    # empty here and come from that RoundModel. "" = everything is inline in this task.
    round_model_sha256: str = sha256_field(default="")
    # Sharded ingest ([coordinator] shards = K): the aggregator shard that counts this device's
    # update; the device uploads to shard_update_topic(shard, device). -1 = no shards: the
    # plain update topic, and the field stays off the wire, so devices built before it work.
    shard: int = bounded(-1, MAX_SHARDS - 1, -1, omit_default=True)


@dataclass(frozen=True)
class Update:
    device_id: str
    round_id: int = bounded(*_NON_NEGATIVE)
    task_id: str
    update_id: str
    model_id: str = model_id_field()
    base_version: int = bounded(*_NON_NEGATIVE)
    num_examples: int = bounded(0, MAX_EXAMPLES)
    payload: bytes  # compressed delta of shared params, update_codec
    dense_bytes: int = bounded(*_NON_NEGATIVE, 0)  # what payload and control would cost as dense fp32 (for reports)
    metrics: dict[str, float] = list_field(1024, default_factory=dict)  # a task reports a few
    # SCAFFOLD: Δc_i = c_i+ - c_i per shared param, update_codec, compressed like the payload
    # (same bits and top-k, no clipping, its own error-feedback residual); empty = none.
    control: bytes = b""
    shard: int = bounded(-1, MAX_SHARDS - 1, -1, omit_default=True)  # the task's shard, so resends go there too


@dataclass(frozen=True)
class Decline:
    device_id: str
    round_id: int = bounded(*_NON_NEGATIVE)
    task_id: str
    reason: str  # machine-readable: "battery_low", "metered_link", "aborted:<cause>", ...
    detail: str = bounded(*_FREE_TEXT, "")
    stage: str = "before"  # "before" training started, or "during" (an abort)


@dataclass(frozen=True)
class Ack:
    device_id: str
    round_id: int = bounded(*_NON_NEGATIVE)
    task_id: str
    update_id: str
    accepted: bool
    reason: str = ""


@dataclass(frozen=True)
class Status:
    device_id: str
    online: bool
    detail: str = bounded(*_FREE_TEXT, "")


@dataclass(frozen=True)
class Pace:
    """Coordinator -> device: check in again after `retry_after_s` seconds (pace steering)."""

    device_id: str
    retry_after_s: float = bounded(*_SECONDS)
    reason: str = ""  # "no_round", "not_selected", "reported", "declined" or "ineligible" (coordinator/pace.py)


@dataclass(frozen=True)
class FetchRequest:
    """Device -> coordinator: send me these artifact files of `model_id` (empty = all)."""

    device_id: str
    model_id: str = model_id_field()
    files: tuple[str, ...] = list_field(4096, default=())  # a manifest lists about ten
    # Set instead of files: send this task again with its parameters inline (the device could
    # not assemble the round's model from its ModelParts).
    task_id: str = ""


@dataclass(frozen=True)
class ArtifactFile:
    """Coordinator -> device: one artifact file. `path` is relative to the model directory;
    "manifest.json" is sent first and is checked against the task's manifest_sha256."""

    model_id: str = model_id_field()
    path: str
    sha256: str = sha256_field()
    data: bytes
    index: int = bounded(*_NON_NEGATIVE, 0)  # position in this transfer
    count: int = bounded(1, I64[1], 1)  # files in this transfer


@dataclass(frozen=True)
class Announcement:
    """Retained on ANNOUNCE_TOPIC: the coordinator's current model and round."""

    model_id: str = model_id_field()
    model_version: int = bounded(*_NON_NEGATIVE)
    manifest_sha256: str = sha256_field()
    round_id: int = bounded(*_NON_NEGATIVE, 0)  # 0 = no round open
    state: str = "idle"  # "training" while a round is open, else "idle"
    # Random per coordinator process. Check-ins are not retained, so one sent while no
    # coordinator listened is lost; a device that hears a new session live checks in again.
    session: str = ""


@dataclass(frozen=True)
class RoundModel:
    """What every task of one round shares: the global shared params and SCAFFOLD's c.
    Encoded, split into ModelParts and published once per round."""

    model_id: str = model_id_field()
    model_version: int = bounded(*_NON_NEGATIVE)
    round_id: int = bounded(*_NON_NEGATIVE)
    params: bytes  # update_codec dense fp32
    correction: bytes = b""


@dataclass(frozen=True)
class ModelPart:
    """Retained on model_part_topic(index): one slice of an encoded RoundModel whose sha256 is
    `sha256`. A device joins `count` slices in index order and checks the hash."""

    sha256: str = sha256_field()
    index: int = bounded(*_NON_NEGATIVE)
    count: int = bounded(1, I64[1])
    data: bytes


@dataclass(frozen=True)
class EvalTask:
    """Coordinator -> device (task channel): score this committed model on your own held-out
    split, global head and personalized model, without training the shared params (a device with
    a private head that sat out rounds since its last task first refits that head alone to this
    model's body; "sat out" is a proxy read off versions: a task from model_version b is taken to
    have gone into b+1, which a rejected or late update, or async mode, makes wrong). Params travel
    inline: an evaluation is asked between rounds, when no round's model parts may be retained."""

    eval_id: str
    device_id: str
    model_id: str = model_id_field()
    model_version: int = bounded(*_NON_NEGATIVE)
    round_id: int = bounded(*_NON_NEGATIVE)  # the round whose commit made model_version
    params: bytes  # shared params, update_codec dense fp32


# What a device may claim as a loss: far above any real cross-entropy (ln of 10^6 classes is
# 13.8), low enough that a weighted sum over MAX_EXAMPLES devices stays finite.
MAX_EVAL_LOSS = 1e6


@dataclass(frozen=True)
class EvalReport:
    """Device -> coordinator (update channel): the answer to one EvalTask. Loss is the mean
    cross-entropy (nats) and accuracy the top-1 fraction over num_examples held-out examples.
    A head the model lacks is reported with has_* False and zeros. A non-empty reason means
    the device did not evaluate (not eligible, model missing, a task the wire refused) and the
    numbers are zeros."""

    device_id: str
    eval_id: str
    model_version: int = bounded(*_NON_NEGATIVE)
    num_examples: int = bounded(0, MAX_EXAMPLES, 0)
    has_global: bool = False
    loss_global: float = bounded(0.0, MAX_EVAL_LOSS, 0.0)
    accuracy_global: float = bounded(0.0, 1.0, 0.0)
    has_personal: bool = False
    loss_personal: float = bounded(0.0, MAX_EVAL_LOSS, 0.0)
    accuracy_personal: float = bounded(0.0, 1.0, 0.0)
    reason: str = ""
    detail: str = field(default="", metadata={"omit_default": True})  # why, for the log (added after v1 peers)


# Stable one-byte type codes; never reuse a retired code. 15-22 are secure aggregation's
# (secagg/messages.py, SECAGG_MESSAGE_TYPES); the codec knows both tables.
MESSAGE_TYPES: dict[int, type] = {
    1: CheckIn,
    2: TrainTask,
    3: Update,
    4: Decline,
    5: Ack,
    6: Status,
    7: Pace,
    8: FetchRequest,
    9: ArtifactFile,
    10: Announcement,
    11: RoundModel,
    12: ModelPart,
    13: EvalTask,
    14: EvalReport,
}
