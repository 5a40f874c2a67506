"""Attacks on federated aggregation, for simulation only: pure numpy, RNG passed in.

Update-level (delta = the attacker's honestly trained delta, (d,) float64; honest = (k, d)
matrix of the honest deltas the colluders know):

    sign_flip       -scale * delta
    scale_replace   delta * n / eta                     model replacement (Bagdasaryan et al. 2020)
    gaussian        N(0, sigma^2 I), ignoring delta
    alie            mean - z_max * std                  "A little is enough" (Baruch et al. 2019)
    ipm             -epsilon * mean                     inner product manipulation (Xie et al. 2019)
    min_max/min_sum mean + gamma * p, p in {unit, std, sign}, gamma by search
                                                        (Shejwalkar & Houmansadr, NDSS 2021)
    nan_update      all NaN; nan_frame: the same as a well-formed wire frame (the honest encoder
                    refuses NaN, so a NaN attacker writes its own bytes)
    huge_weight     the claimed example count times a factor

Data-level (the attacker's local training set before it trains):

    label_flip      y -> C - 1 - y (or any permutation)
    backdoor_data   stamp a trigger on a fraction of samples and relabel them to the target class;
                    with scale_replace on the resulting delta this is Bagdasaryan's attack

ALIE, IPM and min-max/min-sum need other deltas: colluders share theirs through a Collusion
object (a simulation-only side channel; real devices have none). It holds honest devices'
deltas too only when built omniscient.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from fedge.edge_runtime.kernel.update_codec import encode_dense

from .errors import AttackError


def _honest(honest) -> np.ndarray:
    x = np.asarray(honest, np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise AttackError(f"the colluders need at least one known delta as a (k, d) matrix, got {x.shape}")
    return x


# --- single-update attacks -----------------------------------------------------------------------


def sign_flip(delta, scale: float = 1.0) -> np.ndarray:
    return -float(scale) * np.asarray(delta, np.float64)


def scale_replace(delta, n: int, eta: float) -> np.ndarray:
    """Model replacement: X~ - G = (n / eta)(X - G), so the server's eta/n * sum lands on X."""
    if n < 1 or not eta > 0:
        raise AttackError(f"model replacement needs n >= 1 and eta > 0, got n={n}, eta={eta}")
    return np.asarray(delta, np.float64) * (n / eta)


def gaussian(delta, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0.0, sigma, size=np.shape(delta))


def nan_update(delta) -> np.ndarray:
    return np.full(np.shape(delta), np.nan)


_SENTINEL = np.float32(-1.2345678e-33)  # a bit pattern no header field of a frame holds


def nan_frame(shapes: dict[str, tuple[int, ...]]) -> bytes:
    """A dense fp32 update frame, CRC valid, every value NaN: it passes framing and reaches the
    receiver's finiteness check."""
    frame = encode_dense({n: np.full(s, _SENTINEL, np.float32) for n, s in shapes.items()})
    body = frame[:-4].replace(_SENTINEL.tobytes(), np.float32(np.nan).tobytes())
    return body + struct.pack("<I", zlib.crc32(body))


def huge_weight(weight: float, factor: float = 1e6) -> float:
    return float(weight) * factor


# --- colluding attacks -----------------------------------------------------------------------------


def alie_z_max(n: int, m: int) -> float:
    """Baruch et al.: s = floor(n/2 + 1) - m supporters needed; z_max = max z with Phi(z) < (n - s)/n."""
    s = math.floor(n / 2 + 1) - m
    p = (n - s) / n
    if not (0 < m < n and 0 < p < 1):
        raise AttackError(f"ALIE needs 0 < m < n and (n - s)/n in (0, 1): n={n}, m={m}, s={s}")
    return NormalDist().inv_cdf(p)


def alie(honest, n: int, m: int) -> np.ndarray:
    """mean_j - z_max * std_j per coordinate over the known honest deltas (population std)."""
    x = _honest(honest)
    return x.mean(axis=0) - alie_z_max(n, m) * x.std(axis=0)


def ipm(honest, epsilon: float) -> np.ndarray:
    """-epsilon * mean of the known honest deltas."""
    return -float(epsilon) * _honest(honest).mean(axis=0)


def perturbation(honest, kind: str) -> np.ndarray:
    """The NDSS'21 perturbation directions: -mean/||mean||, -std, -sign(mean)."""
    x = _honest(honest)
    mu = x.mean(axis=0)
    if kind == "unit":
        norm = np.linalg.norm(mu)
        return -mu / norm if norm > 0 else np.zeros_like(mu)
    if kind == "std":
        return -x.std(axis=0)
    if kind == "sign":
        return -np.sign(mu)
    raise AttackError(f"perturbation {kind!r}: use 'unit', 'std' or 'sign'")


def _pairwise_sq(x: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", x, x)
    return np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)


def gamma_search(ok, gamma_init: float = 10.0, tol: float = 1e-5) -> float:
    """The paper's halving search for the largest gamma with ok(gamma); finds at most 2 * gamma_init."""
    gamma, step, best = gamma_init, gamma_init, 0.0
    while abs(best - gamma) > tol:
        if ok(gamma):
            best = gamma
            gamma += step / 2
        else:
            gamma -= step / 2
        step /= 2
    return best


def min_max(honest, kind: str = "std", gamma_init: float = 10.0, tol: float = 1e-5) -> tuple[np.ndarray, float]:
    """mean + gamma p with max_i ||mal - x_i|| <= max_{i,j} ||x_i - x_j||; returns (mal, gamma)."""
    x = _honest(honest)
    mu, p = x.mean(axis=0), perturbation(x, kind)
    limit = _pairwise_sq(x).max()

    def ok(g: float) -> bool:
        return float(np.max(np.sum((x - (mu + g * p)) ** 2, axis=1))) <= limit

    g = gamma_search(ok, gamma_init, tol)
    return mu + g * p, g


def min_sum(honest, kind: str = "std", gamma_init: float = 10.0, tol: float = 1e-5) -> tuple[np.ndarray, float]:
    """mean + gamma p with sum_i ||mal - x_i||^2 <= max_i sum_j ||x_i - x_j||^2; returns (mal, gamma).

    The bound is the max over benign i, as the paper states the objective; copies of the
    authors' released code compare against the min over i instead (a smaller gamma)."""
    x = _honest(honest)
    mu, p = x.mean(axis=0), perturbation(x, kind)
    limit = _pairwise_sq(x).sum(axis=1).max()

    def ok(g: float) -> bool:
        return float(np.sum((x - (mu + g * p)) ** 2)) <= limit

    g = gamma_search(ok, gamma_init, tol)
    return mu + g * p, g


@dataclass
class Collusion:
    """Simulation-only side channel: the deltas colluders know, per round.

    Attackers deposit their own honestly trained deltas. Honest devices' deposits are kept only
    when `omniscient` (the attack's strongest, full-knowledge setting); otherwise dropped here,
    so no caller can leak them by mistake."""

    omniscient: bool = False
    _rounds: dict[int, dict[str, tuple[np.ndarray, bool]]] = field(default_factory=dict)

    def deposit(self, round_id: int, device: str, delta, attacker: bool) -> None:
        if attacker or self.omniscient:
            known = self._rounds.setdefault(round_id, {})
            known[device] = (np.asarray(delta, np.float64).copy(), attacker)
        for old in [r for r in self._rounds if r < round_id - 1]:
            del self._rounds[old]  # only the current round matters; keep memory bounded

    def known(self, round_id: int) -> np.ndarray:
        """(k, d) honest deltas visible to the colluders this round, in deposit order."""
        rows = [d for d, _ in self._rounds.get(round_id, {}).values()]
        if not rows:
            raise AttackError(f"no deltas deposited for round {round_id}")
        return np.stack(rows)

    def attackers(self, round_id: int) -> int:
        return sum(a for _, a in self._rounds.get(round_id, {}).values())


# --- data-level attacks ------------------------------------------------------------------------------


def label_flip(y, num_classes: int, mapping=None) -> np.ndarray:
    """y -> num_classes - 1 - y, or mapping[y] for a given permutation of the classes."""
    y = np.asarray(y)
    if mapping is None:
        return (num_classes - 1 - y).astype(y.dtype)
    mapping = np.asarray(mapping)
    if sorted(mapping.tolist()) != list(range(num_classes)):
        raise AttackError("label_flip: mapping must be a permutation of the classes")
    return mapping[y].astype(y.dtype)


@dataclass(frozen=True)
class Trigger:
    """A pixel-pattern backdoor: these flat feature indices are set to `value`; the label becomes target."""

    indices: tuple[int, ...]
    value: float
    target: int

    def __post_init__(self) -> None:
        if not self.indices or min(self.indices) < 0:
            raise AttackError("trigger needs at least one feature index, all >= 0")

    def stamp(self, x) -> np.ndarray:
        x = np.array(x, copy=True)
        flat = x.reshape(x.shape[0], -1)
        flat[:, list(self.indices)] = self.value
        return flat.reshape(x.shape)


def corner_trigger(input_shape: tuple[int, ...], target: int, size: int = 3, value: float = 1.0) -> Trigger:
    """A size x size square in the bottom-right corner of a (H, W) image (for 1-D inputs, the
    last size x size features), at `value` (1.0: the max of images in [0, 1])."""
    if size < 1 or (size > min(input_shape[-2:]) if len(input_shape) >= 2 else size * size > np.prod(input_shape)):
        raise AttackError(f"backdoor: a trigger of side {size} does not fit inputs of shape {tuple(input_shape)}; "
                          "give a smaller trigger_size")
    if len(input_shape) >= 2:
        h, w = input_shape[-2], input_shape[-1]
        idx = tuple(r * w + c for r in range(h - size, h) for c in range(w - size, w))
    else:
        n = int(np.prod(input_shape))
        idx = tuple(range(n - size * size, n))
    return Trigger(idx, float(value), target)


def backdoor_data(x, y, trigger: Trigger, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stamp and relabel a random `fraction` of the samples; the rest stay clean (keeps main accuracy)."""
    if not 0 < fraction <= 1:
        raise AttackError(f"backdoor fraction must be in (0, 1], got {fraction}")
    x, y = np.array(x, copy=True), np.array(y, copy=True)
    chosen = rng.choice(len(y), size=max(1, round(fraction * len(y))), replace=False)
    x[chosen] = trigger.stamp(x[chosen])
    y[chosen] = trigger.target
    return x, y


def backdoor_success(predicted_on_stamped, y_true, target: int) -> float:
    """Share of test samples not of the target class that the model, given stamped inputs, calls target."""
    keep = np.asarray(y_true) != target
    if not keep.any():
        return 0.0
    return float(np.mean(np.asarray(predicted_on_stamped)[keep] == target))
