"""Update compression: error feedback, clip, sparsify (top-k), quantize. Pure numpy, no I/O.

The device turns its parameter delta into a list of `CompressedTensor`s with
`compress_update` (or the same steps one by one: `add_residual`, `clip_by_global_norm`,
`compress_tensors`); `update_codec` turns that list into bytes, and the coordinator gets the
delta back with `decompress_update`. The RNG (for stochastic rounding) is always passed in.

Error feedback: whatever a round does not send (entries below the top-k cut and the
quantization error) is carried in a residual and added to the next round's delta *before*
clipping, so the clip bound holds for what is sent:

    acc_t  = delta_t + r_{t-1}
    c_t    = clip(acc_t, clip_norm)
    sent_t = quantize(top-k(c_t)), scaled down if stochastic rounding took it past clip_norm
    r_t    = c_t - sent_t

Invariants (tested over many seeds): ||sent_t|| <= clip_norm; sent_t + r_t == c_t; and where
the clip never binds, sum(sent) + final residual == sum(delta), up to float rounding. What a
binding clip cuts off is dropped, not carried. (An earlier order, clip(delta) + r, let the
residual push what was sent past the bound.)
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
        elif self.values.size and not -LEVELS[self.bits] <= int(self.values.min()) <= int(self.values.max()) <= \
                LEVELS[self.bits]:  # two int8 reductions; the error names the offending code, as it did
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
    original_norm: float  # global L2 norm of delta + residual, before clipping
    clipped: bool
    kept_entries: int  # entries sent, over all tensors
    total_entries: int


def _check_spec(spec: CompressionSpec) -> None:
    if spec.quant_bits not in BITS:
        raise ValueError(f"quant_bits must be one of {BITS}, got {spec.quant_bits}")
    if not (spec.topk_fraction > 0 and math.isfinite(spec.topk_fraction)):
        raise ValueError(f"topk_fraction must be > 0, got {spec.topk_fraction}")


def add_residual(
    delta: dict[str, np.ndarray], residual: dict[str, np.ndarray] | None, spec: CompressionSpec
) -> dict[str, np.ndarray]:
    """acc = delta + residual as float32 (error feedback). A residual is ignored when error
    feedback is off; one whose names or shapes differ from the delta's is a ValueError."""
    as_f32 = {n: np.asarray(t, dtype=np.float32) for n, t in delta.items()}
    if not (spec.error_feedback and residual is not None):
        return as_f32
    if set(residual) != set(delta):
        raise ValueError(f"residual tensors {sorted(residual)} do not match delta tensors {sorted(delta)}")
    acc = {}
    for name in sorted(as_f32):
        if residual[name].shape != as_f32[name].shape:
            raise ValueError(f"residual {name!r} has shape {residual[name].shape}, delta has {as_f32[name].shape}")
        acc[name] = as_f32[name] + residual[name].astype(np.float32, copy=False)
    return acc


def compress_tensors(
    acc: dict[str, np.ndarray], spec: CompressionSpec, rng: np.random.Generator
) -> tuple[list[CompressedTensor], dict[str, np.ndarray] | None]:
    """Top-k and quantize each tensor of `acc` (float32, already clipped); return (sent, new
    residual = acc - what the receiver will decode, or None without error feedback).

    Stochastic rounding may round every kept entry up, so with spec.clip_norm > 0 what is
    sent is scaled (fp32 values, or the quantization scales) to a hair under clip_norm when it
    came out over; the residual keeps the difference. Tensors go in sorted name order, so the
    result is a function of (inputs, rng state)."""
    _check_spec(spec)
    sent = [_compress_one(name, acc[name], spec, rng) for name in sorted(acc)]
    if spec.clip_norm > 0:
        sent = _bound(sent, spec.clip_norm)
    if not spec.error_feedback:
        return sent, None
    decoded = decompress_update(sent)
    return sent, {t.name: acc[t.name] - decoded[t.name] for t in sent}


def _bound(sent: list[CompressedTensor], bound: float) -> list[CompressedTensor]:
    """`sent` scaled so its decoded global L2 norm is <= bound."""
    norm = math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in decompress_update(sent).values()))
    if norm <= bound:
        return sent
    factor = bound / norm * (1 - 2.0**-20)  # the margin: float32 rounding of the product cannot cross the bound
    out = []
    for t in sent:
        if t.bits == 32:
            t = CompressedTensor(t.name, t.shape, 32, 0.0, t.indices,
                                 (t.values * np.float32(factor)).astype(np.float32))
        else:
            t = CompressedTensor(t.name, t.shape, t.bits, t.scale * factor, t.indices, t.values)
        out.append(t)
    return out


def compress_update(
    delta: dict[str, np.ndarray],
    residual: dict[str, np.ndarray] | None,
    spec: CompressionSpec,
    rng: np.random.Generator,
) -> tuple[list[CompressedTensor], dict[str, np.ndarray] | None, CompressionStats]:
    """Add the residual, clip, keep top-k per tensor, quantize; return (sent, new residual, stats).

    Steps (module docstring): acc = delta + residual (error feedback only; a given residual is
    ignored when it is off); clip acc by global norm (spec.clip_norm > 0); keep the
    k = max(1, ceil(topk_fraction * size)) largest |entries| per tensor (dense when
    topk_fraction = 1; CompressionSpec keeps it <= 1); quantize the kept values (8/4 bits) or keep fp32;
    bound what is sent by
    clip_norm; new residual = clipped acc - what the receiver will decode (None without error
    feedback).
    """
    _check_spec(spec)
    acc = add_residual(delta, residual, spec)
    clipped, norm = clip_by_global_norm(acc, spec.clip_norm)
    sent, new_residual = compress_tensors(clipped, spec, rng)
    stats = CompressionStats(
        original_norm=norm,
        clipped=spec.clip_norm > 0 and norm > spec.clip_norm,
        kept_entries=sum(t.values.size for t in sent),
        total_entries=sum(t.size for t in clipped.values()),
    )
    return sent, new_residual, stats


def _compress_one(name: str, acc: np.ndarray, spec: CompressionSpec, rng: np.random.Generator) -> CompressedTensor:
    """Compress one float32 tensor."""
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
    else:
        values, scale = quantize_stochastic(kept, spec.quant_bits, rng)
    return CompressedTensor(name, tuple(int(d) for d in acc.shape), spec.quant_bits, scale, indices, values)


def decompress_update(tensors: list[CompressedTensor]) -> dict[str, np.ndarray]:
    """Dense float32 arrays, zeros where nothing was sent."""
    out: dict[str, np.ndarray] = {}
    for t in tensors:
        if t.name in out:
            raise ValueError(f"tensor {t.name!r} appears twice in one update")
        vals = t.values if t.bits == 32 else dequantize(t.values, t.scale)
        if t.indices is None:  # dense: the values themselves (a copy when they are the tensor's own)
            dense = vals.copy() if vals is t.values else vals
        else:
            dense = np.zeros(math.prod(t.shape), dtype=np.float32)
            dense[t.indices] = vals
        out[t.name] = dense.reshape(t.shape)
    return out
