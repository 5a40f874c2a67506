"""Simulation settings: defaults are the demo (MNIST-5k, 20 devices, Dirichlet 0.1).

One config system: what the coordinator does (sampling, deadline, aggregation, the devices'
training hyperparameters and compression) is a `CoordinatorConfig`, the very type and file
`fedge coordinator serve` reads, embedded as `SimConfig.coordinator`; the devices'
eligibility rules and agent timings are the device config's `EligibilityPolicy` and
`AgentConfig` ([eligibility] and [agent] of a device TOML). SimConfig itself holds only what
exists in simulation: the data, the fleet, the transport, personalization, baselines.

The simulator's preset (SIM_COORDINATOR) is the coordinator's defaults with the demo's local
training (2 epochs of SGD, batch 20, lr 0.02, momentum 0.9). What the simulator always sets,
whatever the config says (fleet.prepare): the coordinator's seed (SimConfig.seed), its
artifacts_dir (the run's own), state_db "" (a simulation never touches an ops database),
clients_per_round at most the number of devices, and momentum 0 for AdamW and on the
ort-training backend (its SGD has no momentum; devices would decline every task).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.robust.aggregators import RobustConfig
from fedge.edge_runtime.device_config import AgentConfig
from fedge.edge_runtime.eligibility import EligibilityPolicy
from fedge.edge_runtime.kernel.configfile import from_dict, load_toml
from fedge.edge_runtime.kernel.errors import ConfigError, FedgeError
from fedge.edge_runtime.kernel.protocol import CompressionSpec, TaskHyper
from fedge.tools.cli_args import MAX_COUNT
from fedge.tools.standardizing import STATISTICS

PARTITIONS = ("iid", "dirichlet", "shards", "quantity", "feature")
DATASETS = ("mnist5k", "digits", "synthetic")
# --alpha and --beta when not given: the Dirichlet partition's concentration, and synthetic(α, β)'s
# (tools/synthetic.py; 0.5, 0.5 is the FedProx paper's middle setting and `fedge bench privacy`'s).
DIRICHLET_ALPHA = 0.1
SYNTHETIC_ALPHA = SYNTHETIC_BETA = 0.5
# Why a split flag is refused with synthetic data (SimConfig, and flag_checks when typed at its default).
SYNTHETIC_SPLIT = ("--partition and --classes-per-client do not apply to --dataset synthetic: each device draws "
                   "its own data (set how it differs with --alpha and --beta)")
# What a device keeps to itself (tools/simulate/personalization.py has the details).
PERSONALIZATION = ("adapters", "head", "finetune", "full", "none")

SIM_COORDINATOR = CoordinatorConfig(hyper=TaskHyper(epochs=2, batch_size=20, lr=0.02, momentum=0.9))
MQTT_ROUND_DEADLINE_S = 30.0  # the preset's deadline over a real broker (real seconds, not simulated)
# The device agents' timings per transport (seconds). In memory, time is simulated and never
# waits; over a broker, on real time, devices check in and resend sooner than a board would.
AGENT_PRESETS = {
    "memory": AgentConfig(fetch_timeout_s=120.0),
    "mqtt": AgentConfig(checkin_s=30.0, republish_s=5.0, fetch_timeout_s=120.0),
}


@dataclass(frozen=True)
class SimConfig:
    devices: int = 20
    rounds: int = 20
    seed: int = 0  # data split, sampling (also the coordinator's seed) and training
    dataset: str = "mnist5k"
    data_dir: str | None = None  # a folder of per-client .npz files replaces `dataset`
    # Every device standardizes its features (tools/standardizing.py): True, False, or None =
    # auto: a --data folder's when they are far from standardized, a shipped dataset's never.
    standardize: bool | None = None
    # Whose statistics standardizing uses (tools/standardizing.STATISTICS): "fleet" (pooled over every
    # device's training split) or "device" (each its own); None = fleet, or device with privacy or secure
    # aggregation on, whose protections the pooled statistics would go around (standardize_using).
    standardize_with: str | None = None
    partition: str = "dirichlet"  # synthetic: none, each device draws its own data
    alpha: float | None = None  # Dirichlet concentration, or synthetic's α; None: split_alpha's default
    beta: float | None = None  # synthetic's β only; None: SYNTHETIC_BETA
    classes_per_client: int = 2
    test_fraction: float = 0.2
    model: str | None = None  # spec file, built-in name or built folder; None = a default for the data
    # A shipped dataset's stratified share that no device gets: the proxy split `fedge pretrain`
    # trains on with the same seed (tools/pretrain.proxy_positions), so a pretrained --model
    # starts from data the fleet does not hold. 0 = every example goes to a device.
    proxy_fraction: float = 0.0
    # Another stratified share that no device gets, handed to the coordinator as its guard set
    # ([coordinator] guard_set): the model guard's loss check and norm_bound's screening of
    # each round's updates (coordinator/robust/screening.py). 0 = the coordinator holds no data.
    guard_fraction: float = 0.0
    backend: str = "auto"
    coordinator: CoordinatorConfig = SIM_COORDINATOR  # what `fedge coordinator serve` would run
    eligibility: EligibilityPolicy = field(default_factory=EligibilityPolicy)  # mqtt profiles' devices
    agent: AgentConfig | None = None  # the device agents' timings; None = AGENT_PRESETS[transport]
    baselines: tuple[str, ...] = ()
    out_dir: str = "runs/sim"
    transport: str = "memory"  # "memory" (one process, simulated time) or "mqtt" (a real broker)
    broker_url: str | None = None  # mqtt: this broker; None = start a local Mosquitto
    profiles: tuple[str, ...] = ()  # mqtt: device profiles assigned round-robin (hardware/profiles)
    personalization: str = "adapters"
    finetune_steps: int = 20  # finetune: head-only local steps before each evaluation
    new_devices: int = 0  # the last K devices never train; scored on the final global model
    new_device_steps: int = 20  # then fine-tune a copy of the global head this many steps (0 = none)
    # Robustness (tools/simulate/adversary.py): attack name or None, the attacking share of
    # the population, whether colluders see honest deltas. The defence is the coordinator's
    # (coordinator.aggregator, coordinator.robust).
    attack: str | None = None
    attackers: float = 0.2
    omniscient: bool = False
    attack_scale: float = 0.0  # AttackSpec.scale: sign_flip's factor, scale/backdoor's boost; 0 = the attack's own
    local_epochs: int | None = None  # local-only baseline epochs; None = rounds * hyper.epochs
    central_epochs: int | None = None  # centralized baseline epochs; None = the fleet's total compute

    @property
    def standardize_using(self) -> str:
        """Whose statistics a standardizing run uses: standardize_with, or by default the fleet's
        unless privacy or secure aggregation is on (the pooled statistics would be released outside
        the DP accountant and the masked sum; tools/standardizing.py)."""
        if self.standardize_with is not None:
            return self.standardize_with
        guarded = self.coordinator.privacy.enabled or self.coordinator.secure_aggregation.enabled
        return "device" if guarded else "fleet"

    def __post_init__(self) -> None:
        if self.devices < 1 or self.rounds < 1:
            raise ConfigError("--devices and --rounds must be >= 1")
        for name in ("devices", "rounds", "finetune_steps", "new_device_steps", "local_epochs", "central_epochs"):
            if (getattr(self, name) or 0) > MAX_COUNT:  # 10**30 once started a run that could never end
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)}: at most {MAX_COUNT:,}")
        if self.data_dir is not None and not str(self.data_dir).strip():  # "" would mean the default data set
            raise ConfigError("--data: an empty path; name the folder with one .npz per client")
        if self.seed < 0:  # numpy's generators take no negative seed
            raise ConfigError(f"--seed {self.seed}: must be >= 0")
        if self.data_dir is None and self.dataset not in DATASETS:
            raise ConfigError(f"--dataset {self.dataset!r}: choose one of {DATASETS}, or pass --data DIR")
        if not 0.0 <= self.proxy_fraction <= 0.5 or (self.proxy_fraction and (self.data_dir or self.synthetic)):
            raise ConfigError(f"proxy_fraction {self.proxy_fraction}: in [0, 0.5], and only for a shipped "
                              f"dataset (a --data DIR or synthetic data has no proxy split)")
        if not 0.0 <= self.guard_fraction <= 0.5 or (self.guard_fraction and (self.data_dir or self.synthetic)):
            raise ConfigError(f"guard_fraction {self.guard_fraction}: in [0, 0.5], and only for a shipped "
                              f"dataset (a --data DIR or synthetic data has no guard split)")
        if self.standardize is not None and not isinstance(self.standardize, bool):  # "no" or "auto" turned it on
            raise ConfigError(f"standardize {self.standardize!r}: True (--standardize), False (--no-standardize) or "
                              f"None (auto)")
        if self.standardize_with is not None and self.standardize_with not in STATISTICS:
            raise ConfigError(f"--standardize-with {self.standardize_with!r}: choose one of {STATISTICS}")
        if self.standardize_with is not None and self.standardize is False:
            raise ConfigError("--standardize-with with --no-standardize: nothing is standardized; drop one")
        if self.guard_fraction and (self.standardize or self.partition == "feature"):
            # the guard set is the shipped inputs as they are; these devices see them transformed
            raise ConfigError("guard_fraction with --standardize or --partition feature: the devices' inputs are "
                              "transformed, and a guard set of raw inputs would not stand for them")
        if self.partition not in PARTITIONS:
            raise ConfigError(f"--partition {self.partition!r}: choose one of {PARTITIONS}")
        if self.synthetic:
            if self.partition != SimConfig.partition or self.classes_per_client != SimConfig.classes_per_client:
                raise ConfigError(SYNTHETIC_SPLIT)
            # inf once ran on to a late "data: contains NaN or Inf"; NaN fails this too
            if not (0 <= self.split_alpha < math.inf and 0 <= self.split_beta < math.inf):
                raise ConfigError(f"--alpha {self.split_alpha} --beta {self.split_beta}: synthetic(α, β) needs "
                                  f"both >= 0 and finite (0 = close to iid, 1 = strongly non-iid)")
        elif self.beta is not None:
            raise ConfigError("--beta applies only to --dataset synthetic (synthetic(α, β)'s input shift)")
        unknown = set(self.baselines) - {"local", "central"}
        if unknown:
            raise ConfigError(f"--baselines: unknown {sorted(unknown)}; use local, central or local,central")
        if self.transport not in ("memory", "mqtt"):
            raise ConfigError(f"--transport {self.transport!r}: use memory or mqtt")
        if self.profiles and self.transport != "mqtt":
            raise ConfigError("--profiles needs --transport mqtt (traces run on real time)")
        if self.personalization not in PERSONALIZATION:
            raise ConfigError(f"--personalization {self.personalization!r}: choose one of {PERSONALIZATION}")
        if self.finetune_steps < 0 or self.new_device_steps < 0:
            raise ConfigError("--finetune-steps and --new-device-steps must be >= 0")
        if self.new_devices < 0 or (self.data_dir is None and self.new_devices >= self.devices):
            raise ConfigError(f"--new-devices must be in [0, --devices) = [0, {self.devices})")
        if self.attack is not None:
            _ = self.attack_spec  # validates the name, the fraction and the scale
        elif self.attack_scale:
            raise ConfigError("--attack-scale needs --attack")
        for name in ("local_epochs", "central_epochs"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.coordinator.mode != "sync":  # its fleet drives rounds; it would run sync and say nothing
            raise ConfigError("fedge simulate runs sync rounds only: mode = 'async' runs under `fedge coordinator "
                              "serve`, and `fedge bench async` compares the two modes")
        sa = self.coordinator.secure_aggregation
        if sa.enabled and sa.directory_file:  # simulated devices hold no identity key
            raise ConfigError("coordinator.secure_aggregation.directory_file: fedge simulate's devices have no "
                              "identity keys, so the coordinator would refuse every key advertisement "
                              "(secagg_no_identity) and no round could commit; drop the key (it is for `fedge "
                              "coordinator serve` with provisioned devices)")

    @property
    def synthetic(self) -> bool:
        return self.data_dir is None and self.dataset == "synthetic"

    @property
    def split_alpha(self) -> float:
        """--alpha as it applies: synthetic's α, or the Dirichlet concentration."""
        if self.alpha is not None:
            return self.alpha
        return SYNTHETIC_ALPHA if self.synthetic else DIRICHLET_ALPHA

    @property
    def split_beta(self) -> float:
        return SYNTHETIC_BETA if self.beta is None else self.beta

    @property
    def attack_spec(self):
        """The AttackSpec for --attack, or None."""
        if self.attack is None:
            return None
        from .adversary import AttackSpec
        from .errors import AttackError

        try:
            return AttackSpec(self.attack, fraction=self.attackers, omniscient=self.omniscient, scale=self.attack_scale)
        except AttackError as exc:
            raise ConfigError(f"--attack: {exc}") from None

    @property
    def agent_timings(self) -> AgentConfig:
        return self.agent or AGENT_PRESETS[self.transport]


def with_options(cfg: CoordinatorConfig, **options) -> CoordinatorConfig:
    """`cfg` with fields changed by name wherever they sit: `lr` is hyper.lr, `quant_bits` is
    compression.quant_bits, `strategy` is the coordinator's own (the three share no name).

    Raises ConfigError for a name none of them has, or a value one of them refuses.
    """
    nested = {"hyper": TaskHyper, "compression": CompressionSpec, "robust": RobustConfig}
    parts: dict[str, dict] = {"": {}, **{name: {} for name in nested}}
    owner = {f.name: "" for f in fields(CoordinatorConfig) if f.name not in nested}
    owner.update({f.name: part for part, cls in nested.items() for f in fields(cls)})
    for name, value in options.items():
        if name not in owner:
            raise ConfigError(f"{name!r} is not a coordinator, hyper, compression or robust setting")
        parts[owner[name]][name] = value
    try:
        changed = {part: replace(getattr(cfg, part), **values) for part, values in parts.items() if part and values}
        return replace(cfg, **parts[""], **changed)
    except (TypeError, ValueError, FedgeError) as exc:  # a __post_init__ check of a nested config
        raise ConfigError(str(exc)) from None


def sim_config(base: SimConfig | None = None, **options) -> SimConfig:
    """A SimConfig from flat options: SimConfig's own fields, and any coordinator, hyper or
    compression field by name (with_options), on top of `base` (default: the preset).

        sim_config(dataset="digits", devices=8, clients_per_round=4, lr=0.1, quant_bits=4)
    """
    base = base or SimConfig()
    own = {f.name for f in fields(SimConfig)}
    mine = {k: v for k, v in options.items() if k in own}
    rest = {k: v for k, v in options.items() if k not in own}
    coordinator = with_options(mine.pop("coordinator", base.coordinator), **rest)
    return replace(base, coordinator=coordinator, **mine)


def load_device_tables(path: str | Path) -> tuple[EligibilityPolicy, AgentConfig | None]:
    """A device TOML's [eligibility] and [agent] tables, for every simulated device (the rest of
    a device's file names one board); no [agent] table: None, the transport's preset."""
    data, name = load_toml(path), Path(path).name
    policy = from_dict(EligibilityPolicy, data.get("eligibility", {}), name, "eligibility")
    agent = from_dict(AgentConfig, data["agent"], name, "agent") if "agent" in data else None
    return policy, agent


def effective_hyper(hyper: TaskHyper, backend: str) -> TaskHyper:
    """The hyperparameters a simulated device gets: no momentum where it means nothing (AdamW)
    or cannot run (the ort-training backend's SGD)."""
    if hyper.optimizer != "sgd" or backend == "ort-training":
        return replace(hyper, momentum=0.0)
    return hyper
