"""TaskHyper: the local-training hyperparameters a TrainTask carries (protocol.py re-exports it;
the codec checks its ranges on the wire, a config loader in a [hyper] table)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .wire_fields import bounded

OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class TaskHyper:
    """Local-training hyperparameters for one task."""

    epochs: int = bounded(1, 1_000_000, 1)
    batch_size: int = bounded(1, 2**31 - 1, 32)
    lr: float = bounded(0.0, 1e6, 0.05)
    optimizer: str = "sgd"  # "sgd" (torch semantics, with momentum) or "adamw" (torch semantics)
    momentum: float = bounded(0.0, 1.0, 0.0)  # below 1 (1 is refused: the SGD buffer would never decay)
    weight_decay: float = bounded(0.0, 1e6, 0.0)
    beta1: float = bounded(0.0, 1.0, 0.9)  # below 1 (1 is refused: AdamW's bias correction divides by 1 - beta1)
    beta2: float = bounded(0.0, 1.0, 0.999)  # below 1 (1 is refused: AdamW's bias correction divides by 1 - beta2)
    eps: float = bounded(0.0, 1.0, 1e-8)
    mu: float = bounded(0.0, 1e6, 0.0)  # FedProx proximal weight; 0 = plain FedAvg local training
    max_steps: int = bounded(0, 2**31 - 1, 0)  # 0 = no cap beyond epochs
    # Carry the local optimizer's state (momentum, Adam moments) over from the device's last
    # task. Off: every task starts fresh, as in FedAvg. Momentum built on an older global model
    # then pushes the new one off course; under quantity skew it made small devices diverge and
    # collapsed FedAvgM's global model for good (heterogeneity benchmark, round 42).
    keep_optimizer_state: bool = False
    # Local-training guards (0 turns each off). max_grad_norm: each step's gradient is scaled to
    # this global L2 norm at most, so one bad batch or a too-high lr moves the params a bounded
    # step (trainer backends say how they apply it). divergence_factor: a task whose batch loss
    # turns non-finite or exceeds this multiple of its first loss (at least 1 nat) is declined as
    # `diverged` instead of sending a huge delta.
    max_grad_norm: float = bounded(0.0, 1e30, 10.0)
    divergence_factor: float = bounded(0.0, 1e30, 10.0)
    # A device's first task starts its personal head from the fleet's global head (same shapes)
    # instead of the model's initial values. Off by default. On for fleets where a device takes
    # part rarely: a random head trained a few steps a task stays near chance for many rounds
    # (README, Installing the device runtime). Left out of the frame while off, for devices built before it.
    personal_head_from_global: bool = field(default=False, metadata={"omit_default": True})

    def __post_init__(self) -> None:
        # ValueError: the codec turns it into MalformedPayload, a config loader into ConfigError.
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"hyper.optimizer {self.optimizer!r}: use one of {OPTIMIZERS}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"hyper.{name} must be >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError("hyper.lr must be > 0")
        if self.optimizer == "adamw" and not self.eps > 0:  # m / (sqrt(v) + eps) is 0 / 0 where a gradient is 0
            raise ValueError("hyper.eps must be > 0 with optimizer 'adamw' (1e-8 is torch's default)")
        # As the server optimizers' (coordinator config): at 1 the SGD buffer never decays (and
        # the step bound has no finite value), and AdamW's bias correction divides by 1 - 1 = 0.
        for name in ("momentum", "beta1", "beta2"):
            if not getattr(self, name) < 1:
                raise ValueError(f"hyper.{name} must be in [0, 1), got {getattr(self, name)!r}")
