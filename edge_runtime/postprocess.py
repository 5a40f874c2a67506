"""What the device does to its trained delta before it leaves: a chain of pure steps.

    Step = (Delta, TaskContext, rng) -> Delta
    postprocess([error_feedback, clip, compress])   # later: ... clip -> noise -> [attack] -> compress -> [mask]

Each step takes and returns a `Delta` (numpy arrays, no I/O, no clock, the RNG passed in), so
DP noise, an attack in simulation or a secure-aggregation mask is one more list entry. The
last step that compresses sets `sent` (what goes on the wire, as CompressedTensors) and
`residual` (the error-feedback residual the device keeps for its next task); `encode` turns
`sent` into the Update's payload. The formulas live in kernel/compress.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import reduce

import numpy as np

from .kernel.compress import CompressedTensor, add_residual, clip_by_global_norm, compress_tensors
from .kernel.protocol import CompressionSpec
from .kernel.update_codec import encode_tensors

Params = dict[str, np.ndarray]


@dataclass(frozen=True)
class Delta:
    tensors: Params  # dense float32, as the next step sees it
    sent: tuple[CompressedTensor, ...] | None = None  # set by compress: what travels
    residual: Params | None = None  # set by compress: the error-feedback residual to keep
    norm_before_clip: float | None = None  # set by clip: the L2 norm it saw (adaptive clipping's report)


@dataclass(frozen=True)
class TaskContext:
    """What a step may know about the task (shared by every step of one chain)."""
    compression: CompressionSpec
    residual: Params | None = None  # error-feedback residual kept from the device's last task
    device_id: str = ""
    round_id: int = 0


Step = Callable[[Delta, TaskContext, np.random.Generator], Delta]


def postprocess(steps: Sequence[Step]) -> Step:
    """The steps run in order as one step."""
    steps = tuple(steps)

    def chain(delta: Delta, ctx: TaskContext, rng: np.random.Generator) -> Delta:
        return reduce(lambda d, step: step(d, ctx, rng), steps, delta)

    return chain


def error_feedback(delta: Delta, ctx: TaskContext, rng: np.random.Generator) -> Delta:
    """Add the residual kept from the last task (when error feedback is on), before clipping,
    so the clip bound holds for what is sent."""
    return dataclasses.replace(delta, tensors=add_residual(delta.tensors, ctx.residual, ctx.compression))


def clip(delta: Delta, ctx: TaskContext, rng: np.random.Generator) -> Delta:
    """Scale the delta to global L2 norm <= compression.clip_norm (0: no clipping)."""
    as_f32 = {n: np.asarray(t, dtype=np.float32) for n, t in delta.tensors.items()}
    clipped, norm = clip_by_global_norm(as_f32, ctx.compression.clip_norm)
    return dataclasses.replace(delta, tensors=clipped, norm_before_clip=norm)


def compress(delta: Delta, ctx: TaskContext, rng: np.random.Generator) -> Delta:
    """Top-k and quantize (kernel/compress.py), what is sent kept within clip_norm; the new
    residual is this step's input minus what is sent."""
    sent, residual = compress_tensors(delta.tensors, ctx.compression, rng)
    return dataclasses.replace(delta, sent=tuple(sent), residual=residual)


def encode(delta: Delta) -> bytes:
    """The Update payload; a chain must have compressed."""
    if delta.sent is None:
        raise ValueError("nothing to encode: the chain has no compress step")
    return encode_tensors(list(delta.sent))


UPDATE_STEPS: tuple[Step, ...] = (error_feedback, clip, compress)  # the model delta; compress_update's order
# SCAFFOLD's Δc_i is in gradient units, not the delta's: its context carries clip_norm 0 (see DeviceRuntime).
CONTROL_STEPS: tuple[Step, ...] = (error_feedback, compress)
