"""The activations a trainable dense layer may end in: names, and their numpy forward and
backward (the numpy backend's, and the oracle the graphs are tested against).

    relu        max(x, 0)
    tanh        tanh(x)
    sigmoid     1 / (1 + e^-x)
    leaky_relu  x if x > 0 else negative_slope * x      (torch.nn.LeakyReLU, ONNX LeakyRelu)
    gelu        x * Phi(x) = x / 2 * (1 + erf(x / sqrt 2))   (torch.nn.GELU(), the exact form;
                the tanh approximation is another function and is not this one)
    none        x

Backward at x == 0 follows torch: relu and leaky_relu take the x <= 0 branch.
"""

from __future__ import annotations

import math

import numpy as np

ACTIVATIONS = ("relu", "tanh", "sigmoid", "leaky_relu", "gelu", "none")
DEFAULT_NEGATIVE_SLOPE = 0.01  # torch.nn.LeakyReLU's and ONNX LeakyRelu's default alpha

_erf = np.vectorize(math.erf, otypes=[np.float64])  # numpy has no erf, and the device install has no scipy


def gelu_cdf(x: np.ndarray) -> np.ndarray:
    """Phi(x), the standard normal CDF, in float64."""
    return 0.5 * (1.0 + _erf(np.asarray(x, np.float64) / math.sqrt(2.0)))


def activate(activation: str, pre: np.ndarray, negative_slope: float = DEFAULT_NEGATIVE_SLOPE) -> np.ndarray:
    if activation == "relu":
        return np.maximum(pre, 0)
    if activation == "tanh":
        return np.tanh(pre)
    if activation == "sigmoid":
        return np.exp(-np.logaddexp(0.0, -pre))  # 1 / (1 + e^-pre), no overflow for pre << 0
    if activation == "leaky_relu":
        return np.where(pre > 0, pre, pre * pre.dtype.type(negative_slope))
    if activation == "gelu":
        return (pre * gelu_cdf(pre)).astype(pre.dtype)
    return pre


def activation_backward(activation: str, dh: np.ndarray, pre: np.ndarray, out: np.ndarray,
                        negative_slope: float = DEFAULT_NEGATIVE_SLOPE) -> np.ndarray:
    """d loss / d pre from d loss / d out, where out = activate(activation, pre)."""
    if activation == "relu":
        return dh * (pre > 0)
    if activation == "tanh":
        return dh * (1.0 - out * out)
    if activation == "sigmoid":
        return dh * out * (1.0 - out)
    if activation == "leaky_relu":
        return dh * np.where(pre > 0, 1.0, negative_slope).astype(dh.dtype)
    if activation == "gelu":  # d/dx x Phi(x) = Phi(x) + x phi(x)
        x = np.asarray(pre, np.float64)
        slope = gelu_cdf(x) + x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        return (dh * slope).astype(dh.dtype)
    return dh
