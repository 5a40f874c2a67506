"""Refuse at start a max_update_bytes that a legitimate update of this model would exceed.

The coordinator refuses an inbound message over max_update_bytes before decoding it
(validation.decode_report): it cannot know whose task the message answers, so no Ack goes
back, and the device that sent it resends with backoff for as long as it keeps the update
(days). That is right for a hostile sender and wrong for an honest one, so the cap must sit
above anything the model can honestly produce: a reviewing helper found a fedge device will
publish up to 64 MiB while the coordinator's default cap is 16 MiB, which a model with about
four million shared parameters sent as dense fp32 crosses.

The largest honest update is measured with the device's own encoder (kernel/compress.py,
update_codec.py) on a random delta of the model's shapes under the task's compression: top-k
near 1 can be larger than dense fp32 (indices travel too), so no formula per mode is trusted.
A secure round's masked input is one uint32 per parameter, the size of dense fp32. SCAFFOLD's
control delta travels compressed like the delta, doubling it."""

from __future__ import annotations

import dataclasses

import numpy as np

from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.compress import compress_tensors
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import MAX_EXAMPLES, MAX_SHARDS, Update
from fedge.edge_runtime.kernel.update_codec import dense_fp32_bytes, encode_tensors

from .config import CoordinatorConfig

# The Update's other fields beside the payload are measured on a message with long ids (a
# fedge device's task and update ids are 32 hex digits; device ids are at most 64 characters
# when provisioned, 128 here) and the metrics a fedge device reports; this much more is room.
FRAME_MARGIN = 256


def largest_update_bytes(shapes: dict[str, tuple[int, ...]], config: CoordinatorConfig, uses_control: bool,
                         model_id: str = "m") -> int:
    """An upper estimate of the largest update message a device following the tasks would send."""
    rng = np.random.default_rng(0)
    delta = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    spec = dataclasses.replace(config.compression, error_feedback=False, clip_norm=0.0)
    payload = encode_tensors(compress_tensors(delta, spec, rng)[0])
    if config.secure_aggregation.enabled and len(payload) < dense_fp32_bytes(shapes):
        payload = bytes(dense_fp32_bytes(shapes))
    longest = Update(device_id="d" * 128, round_id=2**62, task_id="f" * 32, update_id="f" * 32, model_id=model_id,
                     base_version=2**62, num_examples=MAX_EXAMPLES, payload=payload, dense_bytes=2**62,
                     metrics={"loss": 1.0, "steps": 1.0, "norm": 1.0}, control=payload if uses_control else b"",
                     shard=MAX_SHARDS - 1)
    return len(encode_message(longest)) + FRAME_MARGIN


def check_update_fits(config: CoordinatorConfig, shapes: dict[str, tuple[int, ...]], uses_control: bool,
                      model_id: str = "m") -> None:
    """ConfigError when max_update_bytes is below largest_update_bytes."""
    need = largest_update_bytes(shapes, config, uses_control, model_id)
    if config.max_update_bytes < need:
        raise ConfigError(f"max_update_bytes {config.max_update_bytes} is below what one device's update of this "
                          f"model can take under the tasks' compression ({need} bytes, with "
                          f"{sum(int(np.prod(s)) for s in shapes.values())} shared parameters): such an update "
                          f"would be refused unread and resent for days. Raise max_update_bytes to at least "
                          f"{need}, or compress more (compression.quant_bits, topk_fraction)")
