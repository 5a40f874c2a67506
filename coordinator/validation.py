"""Checks an update must pass before it is aggregated, in this order:
size, frame (header, schema version, checksum), current (round, task), key not seen,
model, dtype/shape/index ranges, finite values, norm bound; then, in a SCAFFOLD round, the
same checks on the control-variate delta (Update.control), which must be there (and must
not be in any other round)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from fedge.edge_runtime.kernel.codec import decode_message
from fedge.edge_runtime.kernel.compress import decompress_update
from fedge.edge_runtime.kernel.errors import CodecError, NonFiniteValues, PayloadTooLarge
from fedge.edge_runtime.kernel.protocol import Decline, Update
from fedge.edge_runtime.kernel.transport.base import Message
from fedge.edge_runtime.kernel.update_codec import decode_tensors

from .errors import (
    BadFrame,
    BadShape,
    ConflictingUpdate,
    DuplicateUpdate,
    NonFinite,
    NormBound,
    Oversize,
    RetainedMessage,
    StaleRound,
    WrongModel,
)


@dataclass(frozen=True)
class RoundContext:
    round_id: int
    model_id: str
    model_version: int
    tasks: dict[str, str]  # device_id -> task_id of the open round
    shapes: dict[str, tuple[int, ...]]  # shared param -> shape
    norm_bound: float  # 0 = no bound
    control: bool = False  # updates must carry Update.control (SCAFFOLD)
    control_norm_bound: float = 0.0  # L2 bound on Δc_i; 0 = no bound
    max_examples: int = 0  # an update weighs min(num_examples, this); 0 = no cap (weights.py)
    equal_weights: bool = False  # every update weighs 1


def decode_report(payload: bytes, max_bytes: int) -> Update | Decline | object:
    """Size, then header/version/checksum/schema. Raises Oversize or BadFrame."""
    if len(payload) > max_bytes:
        raise Oversize(f"{len(payload)} bytes > limit {max_bytes}")
    try:
        return decode_message(payload, max_bytes=max_bytes)
    except PayloadTooLarge as exc:
        raise Oversize(str(exc)) from None
    except CodecError as exc:
        raise BadFrame(str(exc), reason=exc.reason) from None


def decode_inbound(message: Message, max_bytes: int) -> Update | Decline | object:
    """decode_report of a message off the broker, after refusing (RetainedMessage) one the broker
    replayed from its retained store on any channel but a device's status (its Last Will, and the
    "online" that replaces it, are retained on purpose). A retained check-in, update or fetch
    was handled when it came live; its copy would come back at every subscription, so at every
    coordinator restart and reconnect, as if sent anew."""
    if message.retain and not message.topic.endswith("/status"):
        raise RetainedMessage(f"replayed from the broker's retained store on {message.topic!r}; clear it with an "
                              f"empty retained publish (mosquitto_pub -r -n -t '{message.topic}')")
    return decode_report(message.payload, max_bytes)


def update_key(update: Update) -> tuple[str, int, str]:
    return (update.device_id, update.round_id, update.update_id)


def payload_digest(update: Update) -> str:
    """sha256 of what gets aggregated: the payload, and the control delta when there is one
    (length-prefixed, so no split of the same bytes collides; without control it is the
    payload's plain sha256)."""
    return bytes_digest(update.payload, update.control)


def bytes_digest(payload: bytes, control: bytes = b"") -> str:
    """payload_digest of these bytes (a stored update's, checked again when it is replayed)."""
    if not control:
        return hashlib.sha256(payload).hexdigest()
    h = hashlib.sha256(len(payload).to_bytes(8, "little"))
    h.update(payload)
    h.update(control)
    return h.hexdigest()


def check_current(update: Update | Decline, ctx: RoundContext, sender: str | None) -> None:
    if sender is not None and update.device_id != sender:
        raise StaleRound(f"update for device {update.device_id} arrived on device {sender}'s topic")
    if update.round_id != ctx.round_id:
        raise StaleRound(f"round {update.round_id} is not the open round {ctx.round_id}")
    if ctx.tasks.get(update.device_id) != update.task_id:
        raise StaleRound(f"task {update.task_id} is not a task of round {ctx.round_id} for {update.device_id}")


def check_not_seen(update: Update, seen: dict[tuple[str, int, str], str]) -> None:
    digest = seen.get(update_key(update))
    if digest is None:
        return
    if digest == payload_digest(update):
        raise DuplicateUpdate(f"update {update.update_id} from {update.device_id} already counted")
    raise ConflictingUpdate(f"update {update.update_id} from {update.device_id} reuses a counted key with a different "
                            "payload")


def check_contents(update: Update, ctx: RoundContext) -> dict[str, np.ndarray]:
    """Model, shapes, indices, finiteness and norm; returns the dense delta."""
    check_model(update, ctx)
    return _dense(update.payload, ctx.shapes, ctx.norm_bound, "update")


def check_model(update: Update, ctx: RoundContext) -> None:
    """The round's model and version, and a positive example count."""
    if update.model_id != ctx.model_id or update.base_version != ctx.model_version:
        raise WrongModel(f"update for model {update.model_id} v{update.base_version}, round uses {ctx.model_id} "
                         f"v{ctx.model_version}")
    if update.num_examples <= 0:
        raise BadFrame(f"Update.num_examples must be > 0, got {update.num_examples}")  # a value, not a shape


def check_control(update: Update, ctx: RoundContext) -> dict[str, np.ndarray] | None:
    """The control-variate delta, checked like the delta (shapes, finite, its own norm bound):
    the dense Δc_i in a SCAFFOLD round, None in any other."""
    if not ctx.control:
        if update.control:
            raise BadShape("update carries a control-variate delta, but this round's strategy uses none")
        return None
    if not update.control:
        raise BadShape("this SCAFFOLD round needs the control-variate delta (Update.control)")
    return _dense(update.control, ctx.shapes, ctx.control_norm_bound, "control")


def decode_delta(frame: bytes, shapes: dict[str, tuple[int, ...]], what: str = "update") -> dict[str, np.ndarray]:
    """The one decoder of an update frame (payload or control) into dense float arrays, for
    admission and for the restart replay alike; raises BadShape or NonFinite."""
    try:
        # The model's shapes are checked inside the decoder, with the other structural checks,
        # so a frame with both a wrong shape and a NaN is a bad_shape (validation order).
        tensors = decode_tensors(frame, expected=shapes)
    except NonFiniteValues as exc:
        raise NonFinite(f"{what} payload: {exc}") from None
    except CodecError as exc:
        raise BadShape(f"{what} payload: {exc}") from None
    with np.errstate(over="ignore"):  # a huge scale times a code overflows to inf: refused in _dense
        return decompress_update(tensors)


def _dense(frame: bytes, shapes: dict[str, tuple[int, ...]], norm_bound: float, what: str) -> dict[str, np.ndarray]:
    dense = decode_delta(frame, shapes, what)
    check_finite_and_norm(dense, norm_bound, what)
    return dense


def check_finite_and_norm(dense: dict[str, np.ndarray], norm_bound: float, what: str) -> None:
    """NonFinite if any value is NaN or Inf; NormBound if the joint L2 norm exceeds the bound (0 = none)."""
    norm_sq = 0.0
    for name, value in dense.items():
        # The float64 sum of squares is both checks: squares of float32 values cannot overflow
        # float64 (each is at most 1.2e77), so the sum is finite exactly when every value is
        # (NaN and Inf propagate). One pass fewer than isfinite first (bench ingest, stage
        # finite_and_norm), and the norm is the same number as before, so are the verdicts.
        part = float(np.sum(np.square(value, dtype=np.float64)))
        if not math.isfinite(part):
            raise NonFinite(f"{what} {name} holds NaN or Inf")
        norm_sq += part
    if norm_bound > 0 and np.sqrt(norm_sq) > norm_bound:
        raise NormBound(f"{what} norm {np.sqrt(norm_sq):.4g} > bound {norm_bound:.4g}")
