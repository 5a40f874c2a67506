"""Coordinator configuration (TOML: `fedge coordinator serve --config coordinator.toml`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_runtime.configfile import load_config
from edge_runtime.errors import ConfigError
from edge_runtime.protocol import CompressionSpec, TaskHyper


@dataclass(frozen=True)
class CoordinatorConfig:
    clients_per_round: int = 10  # reports wanted per round
    over_selection: float = 1.3  # ask this many times more devices than reports wanted
    min_reports: int = 0  # quorum at the deadline; 0 = ceil(clients_per_round / 2)
    round_deadline_s: float = 600.0
    strategy: str = "fedavg"
    server_lr: float = 1.0
    seed: int = 0
    max_update_bytes: int = 16 << 20
    norm_bound: float = 0.0  # reject updates with a larger L2 norm; 0 = off
    hyper: TaskHyper = field(default_factory=TaskHyper)
    compression: CompressionSpec = field(default_factory=CompressionSpec)

    def __post_init__(self) -> None:
        if self.clients_per_round < 1:
            raise ConfigError("clients_per_round must be >= 1")
        if self.over_selection < 1.0:
            raise ConfigError("over_selection must be >= 1.0 (1.3 = ask 30% more devices)")
        if self.min_reports < 0 or self.min_reports > self.clients_per_round:
            raise ConfigError("min_reports must be between 0 and clients_per_round")
        if self.round_deadline_s <= 0:
            raise ConfigError("round_deadline_s must be > 0")
        if self.hyper.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"hyper.optimizer {self.hyper.optimizer!r}: use 'sgd' or 'adamw'")
        if self.hyper.epochs < 1 or self.hyper.batch_size < 1 or not self.hyper.lr > 0:
            raise ConfigError("hyper: epochs and batch_size must be >= 1 and lr > 0")
        if self.compression.quant_bits not in (32, 8, 4):
            raise ConfigError("compression.quant_bits must be 32, 8 or 4")
        if not 0 < self.compression.topk_fraction <= 1:
            raise ConfigError("compression.topk_fraction must be in (0, 1]")

    @property
    def quorum(self) -> int:
        return self.min_reports or max(1, -(-self.clients_per_round // 2))


def load_coordinator_config(path) -> CoordinatorConfig:
    return load_config(CoordinatorConfig, path)
