"""Update compression: clip, sparsify (top-k), quantize, error feedback. Pure numpy, no I/O.

The device turns its parameter delta into a list of `CompressedTensor`s with
`compress_update`; `update_codec` turns that list into bytes, and the coordinator gets the
delta back with `decompress_update`. The RNG (for stochastic rounding) is always passed in.

Error feedback: whatever a round does not send (entries below the top-k cut and the
quantization error) is carried in a residual and added to the next round's delta, so over
rounds  sum(decompressed sent) + final residual == sum(clipped deltas)  up to float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .protocol import QUANT_BITS, CompressionSpec

LEVELS = {8: 127, 4: 7}  # bits -> L: codes lie in [-L, L], symmetric so 0 is exact
BITS = QUANT_BITS


def clip_by_global_norm(
    tensors: dict[str, np.ndarray], max_norm: float
) -> tuple[dict[str, np.ndarray], float]:
    """Scale all tensors together so their joint L2 norm is at most `max_norm`.

    Returns (tensors, original global norm). `max_norm <= 0` disables clipping. Unclipped
    tensors are returned as they are (not copied); clipped ones are new arrays of the same
    dtype, so the direction of the whole update is kept. Raises ValueError on NaN/Inf.
    """
    sumsq = 0.0
    for name in sorted(tensors):
        part = float(np.sum(np.square(tensors[name], dtype=np.float64)))
        if not math.isfinite(part):
            raise ValueError(f"tensor {name!r} has NaN/Inf values; refusing to clip or send it")
        sumsq += part
    norm = math.sqrt(sumsq)
    if max_norm <= 0 or norm <= max_norm:
        return dict(tensors), norm
    factor = max_norm / norm
    return {n: (t * factor).astype(t.dtype, copy=False) for n, t in tensors.items()}, norm


def quantize_stochastic(x: np.ndarray, bits: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Quantize `x` to int8 codes in [-L, L] (L = 127 for 8 bits, 7 for 4 bits) with one scale.

    scale = max|x| / L, rounded up to a float32 (the wire stores it as f32, and rounding up
    keeps |x| / scale <= L). Each x/scale is rounded down or up at random with
    P(up) = frac(x/scale), so:
      * unbiased:    E[dequantize(codes, scale)] == x
      * bounded:     |dequantize(codes, scale) - x| <= scale   elementwise
                     (plus float32 rounding of the product, ~6e-8 relative).
    All-zero (or empty) input gives scale 0 and all-zero codes.
    """
    if bits not in LEVELS:
        raise ValueError(f"quantize_stochastic supports bits 8 or 4, got {bits}")
    levels = LEVELS[bits]
    x64 = np.asarray(x, dtype=np.float64)
    peak = float(np.max(np.abs(x64))) if x64.size else 0.0
    if not math.isfinite(peak):
        raise ValueError("cannot quantize NaN/Inf values")
    scale = np.float32(peak / levels)
    if float(scale) * levels < peak:  # f32 rounded down: nudge up one ulp so codes fit in [-L, L]
        scale = np.nextafter(scale, np.float32(np.inf))
    if not np.isfinite(scale):
        raise ValueError(f"values up to {peak:g} do not fit a float32 scale")
    if scale == 0:  # all zeros (or below float32 resolution): nothing to encode
        return np.zeros(x64.shape, dtype=np.int8), 0.0
    y = x64 / float(scale)
    low = np.floor(y)
    up = rng.random(y.shape) < (y - low)
    # The clip never binds (|y| <= L by construction of scale); it guards the int8 cast.
    codes = np.clip(low + up, -levels, levels).astype(np.int8)
    return codes, float(scale)


def dequantize(codes: np.ndarray, scale: float) -> np.ndarray:
    """codes * scale as float32 (the same arithmetic on device and coordinator)."""
    return codes.astype(np.float32) * np.float32(scale)


@dataclass(frozen=True, eq=False)
class CompressedTensor:
    """One tensor of an update as it travels: possibly sparse, possibly quantized.

    shape:   the full (dense) shape.
    bits:    32 (values are float32), 8 or 4 (values are int8 codes in [-127,127] / [-7,7]).
    scale:   dequantization scale (stored as float32); 0 for fp32.
    indices: flat uint32 indices into the dense tensor, strictly increasing; None = dense.
    values:  1-D, one entry per index (sparse) or per element (dense, C order).
    """

    name: str
    shape: tuple[int, ...]
    bits: int
    scale: float
    indices: np.ndarray | None
    values: np.ndarray

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise ValueError(f"bits must be one of {BITS}, got {self.bits!r}")
        if not isinstance(self.shape, tuple) or any(not isinstance(d, int) or d < 0
                                                    for d in self.shape):
            raise ValueError(f"shape must be a tuple of non-negative ints, got {self.shape!r}")
        # Stored as f32 on the wire; normalise here so both ends dequantize with the same number.
        object.__setattr__(self, "scale", float(np.float32(self.scale)))
        if not math.isfinite(self.scale) or self.scale < 0:
            raise ValueError(f"scale must be finite and >= 0, got {self.scale}")
        if self.bits == 32 and self.scale != 0:
            raise ValueError(f"fp32 tensors carry scale 0, got {self.scale}")
        want = np.float32 if self.bits == 32 else np.int8
        if self.values.dtype != want or self.values.ndim != 1:
            raise ValueError(f"values must be 1-D {np.dtype(want).name} for {self.bits} bits, "
                             f"got {self.values.ndim}-D {self.values.dtype}")
        size = math.prod(self.shape)
        if self.indices is None:
            if self.values.size != size:
                raise ValueError(f"dense tensor of shape {self.shape} needs {size} values, "
                                 f"got {self.values.size}")
        else:
            self._check_indices(size)
        if self.bits == 32:
            if not np.all(np.isfinite(self.values)):
                raise ValueError("fp32 values contain NaN/Inf")
        elif self.values.size:
            mag = np.abs(self.values.astype(np.int16))  # int16: |-128| must not wrap
            top, levels = int(np.argmax(mag)), LEVELS[self.bits]
            if mag[top] > levels:
                raise ValueError(f"{self.bits}-bit codes must lie in [-{levels}, {levels}]; "
                                 f"found {int(self.values[top])}")

    def _check_indices(self, size: int) -> None:
        idx = self.indices
        if idx.dtype != np.uint32 or idx.ndim != 1:
            raise ValueError(f"indices must be 1-D uint32, got {idx.ndim}-D {idx.dtype}")
        if idx.size != self.values.size:
            raise ValueError(f"{idx.size} indices but {self.values.size} values")
        if idx.size > size:
            raise ValueError(f"{idx.size} indices for a tensor of only {size} elements")
        if idx.size and int(idx[-1]) >= size:
            raise ValueError(f"index {int(idx[-1])} out of range for {size} elements")
        if idx.size > 1 and not np.all(idx[1:] > idx[:-1]):
            raise ValueError("indices must be strictly increasing")


@dataclass(frozen=True)
class CompressionStats:
    original_norm: float  # global L2 norm of the raw delta, before clipping
    clipped: bool
    kept_entries: int  # entries sent, over all tensors
    total_entries: int


def compress_update(
    delta: dict[str, np.ndarray],
    residual: dict[str, np.ndarray] | None,
    spec: CompressionSpec,
    rng: np.random.Generator,
) -> tuple[list[CompressedTensor], dict[str, np.ndarray] | None, CompressionStats]:
    """Clip, add the residual, keep top-k per tensor, quantize; return (sent, new residual, stats).

    Steps: clip the raw delta by global norm (spec.clip_norm > 0); acc = clipped + residual
    (error feedback only); keep the k = max(1, ceil(topk_fraction * size)) largest |acc| per
    tensor (dense when topk_fraction = 1); quantize the kept values (8/4 bits) or keep fp32;
    new residual = acc - what the receiver will decode (None without error feedback). A given
    residual is ignored when error feedback is off. Tensors are processed in sorted name
    order, so the result is a function of (inputs, rng state).
    """
    use_residual = spec.error_feedback and residual is not None
    if use_residual and set(residual) != set(delta):
        raise ValueError(f"residual tensors {sorted(residual)} do not match delta tensors {sorted(delta)}")

    as_f32 = {n: np.asarray(t, dtype=np.float32) for n, t in delta.items()}
    clipped, norm = clip_by_global_norm(as_f32, spec.clip_norm)
    sent: list[CompressedTensor] = []
    new_residual: dict[str, np.ndarray] = {}
    kept_total = 0
    for name in sorted(clipped):
        acc = clipped[name]
        if use_residual:
            if residual[name].shape != acc.shape:
                raise ValueError(f"residual {name!r} has shape {residual[name].shape}, delta has {acc.shape}")
            acc = acc + residual[name].astype(np.float32, copy=False)
        tensor, decoded = _compress_one(name, acc, spec, rng)
        sent.append(tensor)
        kept_total += tensor.values.size
        if spec.error_feedback:
            new_residual[name] = acc - decoded
    stats = CompressionStats(
        original_norm=norm,
        clipped=spec.clip_norm > 0 and norm > spec.clip_norm,
        kept_entries=kept_total,
        total_entries=sum(t.size for t in clipped.values()),
    )
    return sent, (new_residual if spec.error_feedback else None), stats


def _compress_one(
    name: str, acc: np.ndarray, spec: CompressionSpec, rng: np.random.Generator
) -> tuple[CompressedTensor, np.ndarray]:
    """Compress one float32 tensor; also return its dense decoded form (for the residual)."""
    flat = acc.ravel()
    size = flat.size
    if size >= 2**32:
        raise ValueError(f"tensor {name!r} has {size} elements; flat indices are uint32")
    # The relative nudge keeps float noise (0.07 * 100 == 7.000000000000001) from adding an entry.
    k = max(1, math.ceil(spec.topk_fraction * size * (1 - 1e-12)))
    indices = None
    kept = flat
    if spec.topk_fraction < 1 and k < size:
        # argpartition is deterministic for a given input; sort for the wire's increasing order.
        indices = np.sort(np.argpartition(np.abs(flat), size - k)[size - k:]).astype(np.uint32)
        kept = flat[indices]
    if spec.quant_bits == 32:
        values, scale = kept.astype(np.float32), 0.0
        sent_vals = values
    else:
        values, scale = quantize_stochastic(kept, spec.quant_bits, rng)
        sent_vals = dequantize(values, scale)
    tensor = CompressedTensor(name, tuple(int(d) for d in acc.shape), spec.quant_bits, scale, indices, values)
    decoded = np.zeros(size, dtype=np.float32)
    if indices is None:
        decoded[:] = sent_vals
    else:
        decoded[indices] = sent_vals
    return tensor, decoded.reshape(acc.shape)


def decompress_update(tensors: list[CompressedTensor]) -> dict[str, np.ndarray]:
    """Dense float32 arrays, zeros where nothing was sent."""
    out: dict[str, np.ndarray] = {}
    for t in tensors:
        if t.name in out:
            raise ValueError(f"tensor {t.name!r} appears twice in one update")
        vals = t.values if t.bits == 32 else dequantize(t.values, t.scale)
        dense = np.zeros(math.prod(t.shape), dtype=np.float32)
        if t.indices is None:
            dense[:] = vals
        else:
            dense[t.indices] = vals
        out[t.name] = dense.reshape(t.shape)
    return out
