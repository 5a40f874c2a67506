"""Simulation settings: defaults are the demo (MNIST-5k, 20 devices, Dirichlet 0.1)."""

from __future__ import annotations

from dataclasses import dataclass

from fedge.edge_runtime.kernel.errors import ConfigError

PARTITIONS = ("iid", "dirichlet", "shards", "quantity", "feature")
DATASETS = ("mnist5k", "digits")
# What a device keeps to itself (tools/simulate/personalization.py has the details).
PERSONALIZATION = ("adapters", "head", "finetune", "full", "none")


@dataclass(frozen=True)
class SimConfig:
    devices: int = 20
    rounds: int = 20
    seed: int = 0
    dataset: str = "mnist5k"
    data_dir: str | None = None  # a folder of per-client .npz files replaces `dataset`
    partition: str = "dirichlet"
    alpha: float = 0.1
    classes_per_client: int = 2
    test_fraction: float = 0.2
    model: str | None = None  # spec file or built-in name; None = a default for the data
    backend: str = "auto"
    clients_per_round: int = 10
    over_selection: float = 1.3
    epochs: int = 2
    batch_size: int = 20
    lr: float = 0.02
    momentum: float | None = None  # None: 0.9, or 0 on ort-training (its SGD has no momentum)
    optimizer: str = "sgd"
    quant_bits: int = 8
    topk_fraction: float = 1.0
    error_feedback: bool = True
    baselines: tuple[str, ...] = ()
    out_dir: str = "runs/sim"
    transport: str = "memory"  # "memory" (one process, simulated time) or "mqtt" (a real broker)
    broker_url: str | None = None  # mqtt: this broker; None = start a local Mosquitto
    round_deadline_s: float = 600.0  # memory: simulated seconds; mqtt: real seconds
    profiles: tuple[str, ...] = ()  # mqtt: device profiles assigned round-robin (hardware/profiles)
    personalization: str = "adapters"
    finetune_steps: int = 20  # finetune: head-only local steps before each evaluation
    new_devices: int = 0  # the last K devices never train; scored on the final global model
    new_device_steps: int = 20  # then fine-tune a copy of the global head this many steps (0 = none)
    # Aggregation (coordinator/strategies); None = the coordinator's default for the option.
    strategy: str = "fedavg"
    prox_mu: float | None = None
    server_lr: float | None = None
    server_momentum: float | None = None
    server_beta1: float | None = None
    server_beta2: float | None = None
    server_tau: float | None = None
    # Robustness (tools/simulate/adversary.py): attack name or None, the attacking share of
    # the population, whether colluders see honest deltas, and the coordinator's aggregator.
    attack: str | None = None
    attackers: float = 0.2
    omniscient: bool = False
    aggregator: str = "mean"
    bucket_size: int = 0  # > 1: bucketing in front of a keep-all aggregator
    local_epochs: int | None = None  # local-only baseline epochs; None = rounds * epochs
    central_epochs: int | None = None  # centralized baseline epochs; None = the fleet's total compute

    def __post_init__(self) -> None:
        if self.devices < 1 or self.rounds < 1:
            raise ConfigError("--devices and --rounds must be >= 1")
        if self.data_dir is None and self.dataset not in DATASETS:
            raise ConfigError(f"--dataset {self.dataset!r}: choose one of {DATASETS}, or pass --data DIR")
        if self.partition not in PARTITIONS:
            raise ConfigError(f"--partition {self.partition!r}: choose one of {PARTITIONS}")
        unknown = set(self.baselines) - {"local", "central"}
        if unknown:
            raise ConfigError(f"--baselines: unknown {sorted(unknown)}; use local, central or local,central")
        if self.transport not in ("memory", "mqtt"):
            raise ConfigError(f"--transport {self.transport!r}: use memory or mqtt")
        if self.profiles and self.transport != "mqtt":
            raise ConfigError("--profiles needs --transport mqtt (traces run on real time)")
        if self.clients_per_round < 1:
            raise ConfigError("--clients-per-round must be >= 1")
        if self.personalization not in PERSONALIZATION:
            raise ConfigError(f"--personalization {self.personalization!r}: choose one of {PERSONALIZATION}")
        if self.finetune_steps < 0 or self.new_device_steps < 0:
            raise ConfigError("--finetune-steps and --new-device-steps must be >= 0")
        if self.new_devices < 0 or (self.data_dir is None and self.new_devices >= self.devices):
            raise ConfigError(f"--new-devices must be in [0, --devices) = [0, {self.devices})")
        if self.attack is not None:
            self.attack_spec  # validates the name and the fraction
        for name in ("local_epochs", "central_epochs"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")

    @property
    def attack_spec(self):
        """The AttackSpec for --attack, or None."""
        if self.attack is None:
            return None
        from .adversary import AttackSpec
        from .errors import AttackError

        try:
            return AttackSpec(self.attack, fraction=self.attackers, omniscient=self.omniscient)
        except AttackError as exc:
            raise ConfigError(f"--attack: {exc}") from None

    @property
    def strategy_options(self) -> dict:
        """The aggregation options set here, by CoordinatorConfig field name."""
        names = ("prox_mu", "server_lr", "server_momentum", "server_beta1", "server_beta2", "server_tau")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}
