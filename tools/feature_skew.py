"""Feature skew: every client sees its inputs through its own fixed transform (pure; the RNG
is passed in).

Label skew (tools/partition.py) changes *which* examples a client holds; feature skew keeps
the labels IID and changes *how they look*, like cameras mounted at different angles, with
different exposure and sensor noise:

    angle     rotation in degrees, counter-clockwise about the image centre (images only;
              bilinear, zero fill outside the source image)
    contrast  x -> m + contrast * (x - m), m = the example's mean value
    noise     additive Gaussian noise with this std, drawn per example and feature

Applied in that order; image values are then clipped to [0, 1], the range the shipped
datasets are scaled to. A client's transform is drawn once (deterministic from the RNG) and
applies to its training and held-out examples alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FeatureTransform:
    angle: float = 0.0  # degrees
    contrast: float = 1.0
    noise: float = 0.0  # std, in feature units

    def apply(self, x: np.ndarray, image_shape: tuple[int, int, int] | None, rng: np.random.Generator) -> np.ndarray:
        """x (n, features) float32 -> transformed copy, same shape and dtype."""
        out = np.asarray(x, dtype=np.float32)
        if image_shape is not None and self.angle:
            # out.shape, not (n, -1): a device of 2 examples can hold none out, and numpy cannot
            # infer -1 from a size-0 array (a traceback from `simulate --partition feature`)
            out = rotate(out.reshape(len(out), *image_shape), self.angle).reshape(out.shape)
        mean = out.mean(axis=1, keepdims=True)
        out = mean + np.float32(self.contrast) * (out - mean)
        if self.noise:
            out = out + rng.normal(0.0, self.noise, size=out.shape).astype(np.float32)
        if image_shape is not None:
            out = np.clip(out, 0.0, 1.0)
        return out.astype(np.float32)


@dataclass(frozen=True)
class FeatureSkew:
    """Ranges the per-client transforms are drawn from (uniformly)."""

    max_angle: float = 45.0  # degrees, either way
    min_contrast: float = 0.5
    max_contrast: float = 1.5
    max_noise: float = 0.2

    def __post_init__(self) -> None:
        if not 0 <= self.max_angle <= 180:
            raise ValueError(f"max_angle must be in [0, 180] degrees, got {self.max_angle}")
        if not 0 < self.min_contrast <= self.max_contrast:
            raise ValueError(f"need 0 < min_contrast <= max_contrast, got {self.min_contrast}, {self.max_contrast}")
        if self.max_noise < 0:
            raise ValueError(f"max_noise must be >= 0, got {self.max_noise}")


def draw_transforms(num_clients: int, rng: np.random.Generator, image: bool,
                    skew: FeatureSkew = FeatureSkew()) -> list[FeatureTransform]:
    """One transform per client; no rotation for non-image features."""
    angles = rng.uniform(-skew.max_angle, skew.max_angle, num_clients) if image else np.zeros(num_clients)
    contrasts = rng.uniform(skew.min_contrast, skew.max_contrast, num_clients)
    noises = rng.uniform(0.0, skew.max_noise, num_clients)
    return [FeatureTransform(float(a), float(c), float(s)) for a, c, s in zip(angles, contrasts, noises)]


def rotate(images: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate (n, C, H, W) images counter-clockwise about their centre, bilinear, zero fill."""
    n, c, h, w = images.shape
    theta = np.deg2rad(degrees)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    # Inverse map: the output pixel (y, x) samples the source at the point rotated back by theta.
    # Rows grow downwards, so a counter-clockwise turn on screen is clockwise in (row, col).
    sy = cy + (yy - cy) * np.cos(theta) + (xx - cx) * np.sin(theta)
    sx = cx - (yy - cy) * np.sin(theta) + (xx - cx) * np.cos(theta)
    y0, x0 = np.floor(sy).astype(np.int64), np.floor(sx).astype(np.int64)
    fy, fx = (sy - y0).astype(np.float32), (sx - x0).astype(np.float32)
    out = np.zeros_like(images, dtype=np.float32)
    for dy, dx, weight in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        ys, xs = y0 + dy, x0 + dx
        inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        src = images[:, :, np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)]  # (n, C, H, W)
        out += src * (weight * inside)[None, None]
    return out
