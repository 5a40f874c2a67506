"""Coordinator configuration (TOML: `fedge coordinator serve --config coordinator.toml`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.configfile import from_dict, load_toml
from fedge.edge_runtime.kernel.errors import ConfigError, MalformedPayload
from fedge.edge_runtime.kernel.protocol import MAX_EXAMPLES, CompressionSpec, Pace, TaskHyper, TrainTask
from fedge.edge_runtime.kernel.wire_fields import bounded

from . import unread_keys
from .aggregate import AGGREGATORS
from .async_mode.config import AsyncConfig, check_mode
from .dp import config as dp_config
from .dp.config import PrivacyConfig, check_coordinator
from .evaluation import EvalConfig
from .limits import MAX_FLEET, MAX_REGISTRY
from .robust.aggregators import KEEP_ALL, RobustConfig  # importing it registers the robust rules
from .secagg import config as secagg_config
from .secagg.config import SecAggConfig, check_compatible
from .sharding.config import check_sharding
from .strategies import STRATEGIES
from .weights import WEIGHTINGS

# Asking more than 100 times the devices a round wants is a typo, not a plan (and inf would
# overflow the selection count).
MAX_OVER_SELECTION = 100.0
# A server step 100 times the mean delta is a typo, not a plan (the adaptive-optimizer papers'
# grids stop at 10): --server-lr 1e30 ran every round into a model of NaN or Inf and exited 0.
MAX_SERVER_LR = 100.0
MAX_SERVER_TAU = 1.8e19  # tau² stays a finite float32 (its largest is 3.4e38)
# A round's task seed is seed * SEED_STRIDE + round (task_seed), a non-negative 64-bit field on
# the wire, and a secure round's neighbour graph takes twice that, its rotation one more
# (secagg/shell.py). seed < 2**42 keeps all three under 2**63 for every round id under 10**17
# (seed * SEED_STRIDE < 4.4e18); the bound 2**63 // SEED_STRIDE let seeds past 4.6e12 load, and
# every secure round then failed at its first stage, its SecAggTask out of the wire's range.
SEED_STRIDE = 1_000_003
MAX_SEED = 2**42 - 1


# Privacy and secure aggregation refuse the default aggregator (norm_bound) and weighting
# (examples): a file that turns either on and leaves the key out gets the value below
# (CoordinatorConfig.from_toml), and the service says so at start; a file that writes another
# value is refused by name. The reasons are those of the refusals (dp/config.py, secagg/config.py).
IMPLIED = {
    "aggregator": ("mean", {"privacy": dp_config.WHY_MEAN, "secure aggregation": secagg_config.WHY_MEAN}),
    "weighting": ("equal", {"privacy": dp_config.WHY_EQUAL, "secure aggregation": secagg_config.WHY_EQUAL}),
}


def task_seed(seed: int, round_id: int) -> int:
    """The seed every task of round `round_id` carries (the device mixes it into its own RNG)."""
    return seed * SEED_STRIDE + round_id


@dataclass(frozen=True)
class CoordinatorConfig:
    clients_per_round: int = 10  # reports wanted per round
    over_selection: float = 1.3  # ask this many times more devices than reports wanted
    min_reports: int = 0  # quorum at the deadline; 0 = ceil(clients_per_round / 2)
    round_deadline_s: float = 600.0
    # Aggregation (coordinator/strategies): fedavg, fedprox, scaffold, fedavgm, fedadagrad, fedadam, fedyogi.
    strategy: str = "fedavg"
    # η on the aggregated delta; 0 = the strategy's default: 1.0, fedavgm 1 - server_momentum,
    # fedadagrad 0.1, fedadam and fedyogi 0.03 (coordinator/strategies/server_opt.py says why).
    server_lr: float = 0.0
    server_momentum: float = 0.9  # fedavgm: β of the server momentum
    server_beta1: float = 0.9  # fedadagrad/fedadam/fedyogi: first-moment decay
    server_beta2: float = 0.99  # fedadam/fedyogi: second-moment decay
    server_tau: float = 1e-3  # fedadagrad/fedadam/fedyogi: adaptivity floor τ (v starts at τ²)
    prox_mu: float = 0.01  # fedprox: the proximal weight sent as the tasks' mu (other strategies send hyper.mu)
    control_norm_bound: float = 0.0  # scaffold: reject a Δc_i with a larger L2 norm; 0 = off
    # How a round's accepted deltas combine (coordinator/robust/aggregators.py): mean, norm_bound,
    # median, trimmed_mean, krum, centered_clipping; [robust] holds their parameters. The default
    # clips each update to 2x the median update norm and caps each claimed weight at the median
    # claim (robust/norm_bound.py): one device cannot outweigh or outrun a typical one, memory
    # stays O(model), and on our runs without attackers it cost nothing (README, Robust aggregation).
    aggregator: str = "norm_bound"
    robust: RobustConfig = field(default_factory=RobustConfig)
    seed: int = bounded(0, MAX_SEED, 0)  # numpy takes no negative seed; the bound: MAX_SEED
    # Any inbound message over this is refused unread, with no Ack (validation.decode_report); a
    # value below the model's largest honest update is refused at start (update_fits.py).
    max_update_bytes: int = 16 << 20
    norm_bound: float = 0.0  # reject updates with a larger L2 norm; 0 = off
    hyper: TaskHyper = field(default_factory=TaskHyper)
    compression: CompressionSpec = field(default_factory=CompressionSpec)
    # Persistence: SQLite file holding the model, strategy state and the open round; "" = memory only.
    state_db: str = ""
    # ... or PostgreSQL (coordinator/pg_store.py; needs fedge[postgres]), e.g.
    # "postgresql://fedge@127.0.0.1:5432/fedge": one leader among coordinators sharing it
    # (coordinator/leadership.py), the others wait as standbys. Exclusive with state_db.
    state_dsn: str = ""
    keep_versions: int = 3  # committed model versions kept in state_db / state_dsn (older ones are pruned)
    # Closed rounds whose rows (record, selected devices, task ids) and evaluation records the store
    # keeps; older ones are deleted as each round closes. 0 = keep all, the default: nothing fedge runs
    # reads them back (a restart needs the open round and the latest round id, dedupe the update keys
    # of keep_key_rounds rounds, the privacy report the ledger, never pruned), so they are the
    # operator's only history of past rounds, and a finite default would delete existing history at
    # the first round after an upgrade. About 1 KB a round (README, state database).
    keep_rounds: int = 0
    # Model directory (with manifest.json) served to devices that ask for missing files; "" = none.
    artifacts_dir: str = ""
    fetch_interval_s: float = 60.0  # at most one artifact transfer per device per this many seconds
    # Pace steering: when a device that has nothing to do should check in again (seconds).
    pace_idle_s: float = 60.0  # no round open
    pace_declined_s: float = 600.0  # the device declined or is not eligible
    pace_jitter_s: float = 10.0  # spread devices over [0, jitter) on top, so they do not return at once
    pace_max_s: float = 3600.0
    task_resend_s: float = 30.0  # a selected device that checks in again gets its task again, this often at most
    # Check-ins one device may send: a burst of checkin_burst, then one every checkin_refill_s
    # seconds (coordinator/checkin_limit.py); more are refused as checkin_too_often. 0 = no limit.
    checkin_burst: int = 10
    checkin_refill_s: float = 6.0
    # Devices the registry may hold: a check-in from a new device id past this many is refused as
    # registry_full (known devices are unaffected; none is evicted). The default is the most one
    # round may ask for; coordinator/registry_cap.py says why and what a full registry costs.
    max_devices: int = bounded(1, MAX_REGISTRY, MAX_FLEET)
    # Publish each round's params (and SCAFFOLD's c) once, as retained parts of at most this many
    # bytes, instead of inside every task; 0 = inline in every task (the default). Parts cut the
    # coordinator's publishing from N copies of the params to one, which matters when it reaches
    # the broker over a WAN; next to the broker, inline was faster (bench mqtt: a part costs each
    # device a SUBSCRIBE round trip). 262144 is a good value; keep it below the broker's
    # max_packet_size (1 MiB in the shipped configs): a part cannot be chunked.
    model_part_bytes: int = 0
    # Prometheus endpoint for `fedge coordinator serve`; port 0 = off.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    # An update's aggregation weight (coordinator/weights.py says why these defaults): "examples" =
    # its claimed num_examples capped at max_examples; "equal" = the same for every update.
    weighting: str = "examples"
    max_examples: int = 100_000
    # After n abandoned rounds in a row the next begins abandon_backoff_s * 2**(n-1) seconds later,
    # at most abandon_backoff_max_s (coordinator/backoff.py): a fleet that cannot finish a round
    # is not asked again at once.
    abandon_backoff_s: float = 1.0
    abandon_backoff_max_s: float = 300.0
    # Model guard (coordinator/guard.py, holdout.py): with guard_set (an .npz of x and y for the
    # model's input) a round is abandoned when its new model's loss on that set exceeds
    # guard_max_loss_ratio times the current model's, and the default aggregator (norm_bound)
    # leaves out the updates that make the round's mean worse on it ([robust.screen];
    # robust/screening.py). "" = off (non-finite models are refused always).
    guard_set: str = ""
    guard_max_loss_ratio: float = 1.5
    # Federated evaluation after commits ([coordinator.evaluation]; coordinator/evaluation.py).
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    # User-level differential privacy ([coordinator.privacy]; coordinator/dp): DP-FedAvg with a
    # budget. Needs aggregator = "mean" and weighting = "equal" (coordinator/dp/config.py says why),
    # which a file that leaves them out gets (IMPLIED).
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    # Secure aggregation ([coordinator.secure_aggregation]; coordinator/secagg/config.py): the
    # coordinator learns only the cohort's sum. Refuses settings that need individual updates
    # (a file that leaves out aggregator and weighting gets "mean" and "equal": IMPLIED).
    secure_aggregation: SecAggConfig = field(default_factory=SecAggConfig)
    # "sync": rounds (clients_per_round, deadlines); "async": FedBuff, a new model version every
    # buffer_size updates, [coordinator.async] (coordinator/async_mode/config.py).
    mode: str = "sync"
    async_: AsyncConfig = field(default_factory=AsyncConfig, metadata={"toml": "async"})
    # Sharded ingest (coordinator/sharding): K aggregator workers (`fedge coordinator serve --role
    # worker`) validate and sum the updates, each on its shard's topic; the leader merges the K
    # sums. 0 = off: the coordinator ingests every update itself (the single-machine path).
    # Needs state_dsn; sharding/config.py lists what it refuses. The leader assigns each selected
    # device its home shard (crc32 mod K) when that shard has a live worker, else the least-loaded
    # live one (sharding/assign.py), and a round with no live shard does not begin.
    shards: int = 0
    # Seconds a shard may go without a live worker mid-round (no spare took its lease) before the
    # leader moves its uncounted devices to live shards and sends them their task again.
    shard_takeover_s: float = 5.0
    # What from_toml chose for keys the file left out (IMPLIED), one note a key; not a TOML key.
    implied: tuple[str, ...] = field(default=(), init=False, compare=False, repr=False)

    @classmethod
    def from_toml(cls, written: dict, **kwargs) -> CoordinatorConfig:
        """The config of a file's keys (configfile.from_dict calls it; `written`: the table as
        read): with privacy or secure aggregation on, an aggregator or weighting the file leaves
        out is the value IMPLIED names, not the default those modes refuse, and with both on a
        privacy.mechanism it leaves out is "distributed", the only one secure aggregation takes;
        `implied` says which, and why. A key the file sets that this configuration never reads
        (a strategy's option under another strategy, ...) is refused: unread_keys.UnreadKey."""
        modes = [mode for mode, table in (("privacy", kwargs.get("privacy")),
                                          ("secure aggregation", kwargs.get("secure_aggregation")))
                 if table is not None and table.enabled]
        notes = []
        for key, (value, why) in IMPLIED.items():
            if modes and key not in kwargs:
                kwargs[key] = value
                notes.append(f"{key} = {value!r} ({'; '.join(f'{mode}: {why[mode]}' for mode in modes)})")
        if len(modes) == 2 and "mechanism" not in written.get("privacy", {}):
            kwargs["privacy"] = replace(kwargs["privacy"], mechanism="distributed")
            notes.append(f"privacy.mechanism = 'distributed' (secure aggregation: {secagg_config.WHY_DISTRIBUTED})")
        cfg = cls(**kwargs)
        if unread_keys.CHECKING.get():
            unread_keys.check_written(written, cfg)
        object.__setattr__(cfg, "implied", tuple(notes))
        return cfg

    def __post_init__(self) -> None:
        if not 1 <= self.clients_per_round <= MAX_FLEET:
            raise ConfigError(f"clients_per_round must be in [1, {MAX_FLEET:,}], got {self.clients_per_round}")
        if not 1.0 <= self.over_selection <= MAX_OVER_SELECTION:  # NaN fails this too
            raise ConfigError(f"over_selection must be in [1.0, {MAX_OVER_SELECTION}] (1.3 = ask 30% more devices), "
                              f"got {self.over_selection}")
        if self.min_reports < 0 or self.min_reports > self.clients_per_round:
            raise ConfigError("min_reports must be between 0 and clients_per_round")
        if self.round_deadline_s <= 0:
            raise ConfigError("round_deadline_s must be > 0")
        if not 0 <= self.seed <= MAX_SEED:  # from_dict checks a file's; a seed set in code (simulate --seed) too
            raise ConfigError(f"seed must be in [0, {MAX_SEED}] (2**42 - 1: a secure round's seeds stay 64-bit "
                              f"fields on the wire), got {self.seed}")
        self._check_strategy()  # hyper and compression validate themselves (kernel/protocol.py)
        if not self.norm_bound >= 0:
            raise ConfigError("norm_bound must be >= 0 (0 = off)")
        if self.max_update_bytes < 1:
            raise ConfigError("max_update_bytes must be >= 1")
        if self.aggregator not in AGGREGATORS:
            raise ConfigError(f"aggregator {self.aggregator!r}: choose one of {sorted(AGGREGATORS)}")
        if self.robust.bucket_size > 1 and self.aggregator not in KEEP_ALL:
            raise ConfigError(f"robust.bucket_size works in front of {', '.join(KEEP_ALL)}, not {self.aggregator!r}")
        inputs, of = ((self.async_.buffer_size, "async.buffer_size") if self.mode == "async"
                      else (self.clients_per_round, "clients_per_round"))
        if self.robust.bucket_size > 1 and 2 * self.robust.bucket_size > inputs:
            # one bucket: the rule would see one input, the plain mean of the round
            raise ConfigError(f"robust.bucket_size {self.robust.bucket_size} makes fewer than 2 buckets of "
                              f"{of} {inputs} reports: use at most {inputs // 2}")
        sign = self.robust.sign
        if sign.enabled and self.aggregator != "norm_bound":  # else it would be on paper only
            raise ConfigError(f"robust.sign.gap works with the norm_bound aggregator, not {self.aggregator!r}")
        if sign.enabled and sign.min_inputs > inputs:
            raise ConfigError(f"robust.sign.min_inputs {sign.min_inputs} is more than {of} {inputs}: the sign "
                              f"split would never run")
        if self.state_db and self.state_dsn:
            raise ConfigError("state_db and state_dsn are exclusive: keep the state in SQLite or in PostgreSQL")
        if self.state_dsn and not self.state_dsn.startswith(("postgresql://", "postgres://")):
            raise ConfigError("state_dsn must be a postgresql:// URI (postgresql://user@host:port/database)")
        if self.keep_versions < 1:
            raise ConfigError("keep_versions must be >= 1 (the current model is always kept)")
        if self.keep_rounds < 0:
            raise ConfigError(f"keep_rounds must be 0 (keep every closed round) or >= 1 (a restart numbers the next "
                              f"round after the latest closed one, so at least 1 is kept), not {self.keep_rounds}")
        for name in ("fetch_interval_s", "pace_idle_s", "pace_declined_s", "pace_jitter_s", "task_resend_s"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0 seconds")
        if self.checkin_burst < 1:
            raise ConfigError("checkin_burst must be >= 1")
        if not 0 <= self.checkin_refill_s < math.inf:
            raise ConfigError("checkin_refill_s must be >= 0 seconds (0: no limit)")
        self._check_max_devices()
        if self.model_part_bytes < 0 or 0 < self.model_part_bytes < 256:
            raise ConfigError("model_part_bytes must be 0 (params inline in every task) or >= 256")
        if not self.pace_max_s > 0:
            raise ConfigError("pace_max_s must be > 0 seconds")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError("metrics_port must be in [0, 65535]; 0 turns the endpoint off")
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"weighting {self.weighting!r}: choose one of {WEIGHTINGS}")
        if not 1 <= self.max_examples <= MAX_EXAMPLES:
            raise ConfigError(f"max_examples must be in [1, {MAX_EXAMPLES}]")
        if not 0 <= self.abandon_backoff_s < math.inf:
            raise ConfigError("abandon_backoff_s must be >= 0 seconds")
        if not self.abandon_backoff_s <= self.abandon_backoff_max_s < math.inf:
            raise ConfigError(f"abandon_backoff_max_s must be at least abandon_backoff_s = {self.abandon_backoff_s} "
                              "seconds")
        if not (self.guard_max_loss_ratio >= 1.0 and math.isfinite(self.guard_max_loss_ratio)):
            raise ConfigError("guard_max_loss_ratio must be >= 1 (1.5 = refuse a model 50% worse on the guard set)")
        check_mode(self)  # first: async rules out whole features, whose own finer rules would come first
        check_coordinator(self)  # privacy's rules for the rest of this config
        if self.privacy.enabled:  # the device clips to S: the bound travels in every task's compression
            object.__setattr__(self, "compression", replace(self.compression, clip_norm=self.privacy.clip_norm))
        self._check_wire()
        check_compatible(self)
        check_sharding(self)
        self._check_fleet_fits_cap()

    def _check_wire(self) -> None:
        """What the coordinator will send must pass the codec's range checks: refuse it here,
        at start, not as an encode error in the middle of a round."""
        # fedprox sends prox_mu as every task's mu (strategies/fedavg.py): a value past the wire's
        # range once passed here and failed each task's encoding, the run ending with no round
        hyper = replace(self.hyper, mu=self.prox_mu) if self.strategy == "fedprox" else self.hyper
        task = TrainTask(0, "", "", "probe", 0, b"", hyper=hyper, compression=self.compression,
                         deadline_s=self.round_deadline_s, seed=task_seed(self.seed, 0))
        for msg in (task, Pace("", self.pace_max_s)):
            try:
                encode_message(msg)
            except MalformedPayload as exc:
                raise ConfigError(f"a value the coordinator would send is out of range: {exc}") from None

    def _check_max_devices(self) -> None:
        if not 1 <= self.max_devices <= MAX_REGISTRY:  # from_dict checks a file's; one set in code too
            raise ConfigError(f"max_devices must be in [1, {MAX_REGISTRY:,}] (devices the registry may hold), "
                              f"got {self.max_devices}")

    def _check_fleet_fits_cap(self) -> None:
        """After the features' own checks (a config unusable for another reason says that first).
        Not below clients_per_round: a sync round asks min(clients_per_round, eligible) devices and
        commits on fewer. But a secure round begins only with its quorum eligible (server.py,
        begin_round), and under central DP an async device gives one update per buffer
        (async_mode/server.py, _per_device_limit): a cap below either means no round ever."""
        if self.mode == "sync" and self.secure_aggregation.enabled and self.max_devices < self.quorum:
            raise ConfigError(f"max_devices {self.max_devices} is below the quorum {self.quorum} with secure "
                              "aggregation on: a secure round begins only with its quorum eligible, so none could; "
                              "raise max_devices or lower min_reports / clients_per_round")
        if self.mode == "async" and self.privacy.enabled and self.max_devices < self.async_.buffer_size:
            raise ConfigError(f"max_devices {self.max_devices} is below async.buffer_size {self.async_.buffer_size} "
                              "with [privacy] on: each device gives one update per buffer, so no buffer could fill; "
                              "raise max_devices or lower buffer_size")

    def _check_strategy(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy {self.strategy!r}: choose one of {sorted(STRATEGIES)}")
        if not 0 <= self.server_lr <= MAX_SERVER_LR:  # NaN fails this too
            raise ConfigError(f"server_lr must be in [0, {MAX_SERVER_LR:g}] (0 = the strategy's default), "
                              f"got {self.server_lr}")
        for name in ("server_momentum", "server_beta1", "server_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1)")
        # the adaptive strategies start v at tau² in float32: a larger tau overflowed (a traceback
        # past 1.3e154) or made every round's model non-finite
        if not 0 < self.server_tau <= MAX_SERVER_TAU:
            raise ConfigError(f"server_tau must be > 0 and at most {MAX_SERVER_TAU:g}, got {self.server_tau}")
        if not (self.prox_mu >= 0 and math.isfinite(self.prox_mu)):
            raise ConfigError("prox_mu must be >= 0 (0 = FedAvg's local objective)")
        if not self.control_norm_bound >= 0:
            raise ConfigError("control_norm_bound must be >= 0 (0 = off)")
        if self.strategy == "scaffold" and self.hyper.optimizer != "sgd":
            # Option II estimates c_i from (x - y_i) / (K lr), which is a mean gradient only for SGD.
            raise ConfigError("strategy 'scaffold' needs hyper.optimizer = 'sgd' (see edge_runtime/local_training.py)")

    @property
    def quorum(self) -> int:
        return self.min_reports or max(1, -(-self.clients_per_round // 2))


def load_coordinator_config(path, check_unread: bool = True) -> CoordinatorConfig:
    """The CoordinatorConfig of a TOML file: its [coordinator] table when it has one (the file
    `fedge coordinator serve` reads, whose [broker] and [service] tables are not read here),
    else the whole file. `fedge simulate --config` reads the same files. check_unread=False: keys
    the file's own configuration does not read load (unread_keys.CHECKING: the caller checks)."""
    table, name = coordinator_table(path)
    token = unread_keys.CHECKING.set(check_unread)
    try:
        return from_dict(CoordinatorConfig, table, Path(path).name, name)
    finally:
        unread_keys.CHECKING.reset(token)


def coordinator_table(path) -> tuple[dict, str]:
    """A coordinator TOML file's settings as read, and where they are: ("coordinator", its
    [coordinator] table) in a service file, ("", the whole file) in a plain config."""
    data = load_toml(path)
    if "coordinator" in data:  # never a key of a plain config: CoordinatorConfig has no such field
        # a service file's other tables are [broker] and [service]; any other was meant for the
        # coordinator ([secure_aggregation] for [coordinator.secure_aggregation]) and would be lost
        stray = sorted(set(data) - {"coordinator", "broker", "service"})
        if stray:
            raise ConfigError(f"{Path(path).name}: {', '.join(stray)} beside [coordinator] is not read; a service "
                              f"file has [coordinator], [broker] and [service] (coordinator settings go in "
                              f"[coordinator] or its subtables, e.g. [coordinator.{stray[0]}])")
        return data["coordinator"], "coordinator"
    return data, ""
