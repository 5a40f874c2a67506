"""Keys a coordinator config file writes that its own configuration never reads, refused by
name (UnreadKey): `strategy = "fedavg"` with `prox_mu = 0.1` once loaded, and the user believed
FedProx's proximal term was on. `fedge simulate` refuses the same options typed as flags
(tools/simulate/flag_checks.py) from the same table (strategies.STRATEGY_OPTIONS).

Only keys verified to be read by nothing in the configuration are refused; a key written at its
default is refused too (it still says the file expects it to act). Each entry's reader:

* STRATEGY_OPTIONS: strategies.strategy_from_config and records.open_round (control_norm_bound).
* hyper.mu with strategy = "fedprox": FedProx.configure sends prox_mu as every task's mu in its place.
* [coordinator.async] with mode = "sync": only service.py's in-flight count and config.py's
  bucket check read it, both under mode = "async"; the sync Coordinator never does.
* ROBUST_OPTIONS: robust/aggregators.make_aggregator, the only reader of these four keys.
* NORM_READERS ([robust.norm]): make_aggregator (norm_bound; centered_clipping's default
  radius), aggregators.advance (every rule but mean records the history with window) and
  records._device_clip (device_clip, in sync mode only).
* [robust.screen]: make_aggregator builds the screen for norm_bound with a guard set only.
* [robust.sign]: norm_bound only (config.py refuses gap > 0 under the others), and its settings
  act only with gap > 0: switched by gap as SWITCHED_TABLES by enabled.
* SWITCHED_TABLES' settings without the table's `enabled`: read only when it is true.
* shard_takeover_s: sharding/leader.py only, which runs with shards > 0.
* SYNC_ONLY in mode = "async": clients_per_round and min_reports are read by the sync round
  (server.begin_round), the service's sync in-flight count and the secure round's checks
  (refused in async); a buffer takes async.buffer_size and async.concurrency instead.
"""

from __future__ import annotations

from contextvars import ContextVar

from fedge.edge_runtime.kernel.errors import ConfigError

from .robust.aggregators import AGGREGATORS, KEEP_ALL
from .strategies import STRATEGY_OPTIONS

# [coordinator.robust] keys and the aggregators that read them (robust/aggregators._make).
ROBUST_OPTIONS: dict[str, tuple[str, ...]] = {
    "byzantine_fraction": ("trimmed_mean", "krum"), "cc_tau": ("centered_clipping",),
    "cc_iterations": ("centered_clipping",), "bucket_size": KEEP_ALL}

# [robust.norm] keys and the aggregators that read them; the rest of its keys: norm_bound only.
# Every rule but mean records the round's norms and claims into the history, cut to window
# (aggregators.advance: what a later norm_bound or centered_clipping starts from);
# centered_clipping's radius with cc_tau = 0 is the history's median (window, min_history).
NORM_READERS: dict[str, tuple[str, ...]] = {"window": AGGREGATORS[1:], "min_history": ("norm_bound",
                                                                                      "centered_clipping")}

# Keys a sync round reads and a buffer does not (mode = "async": async.buffer_size, concurrency).
SYNC_ONLY = ("clients_per_round", "min_reports")


# Whether CoordinatorConfig.from_toml checks the file's keys against the config it built (the
# service's loader: yes). `fedge simulate --config` and `fedge bench heterogeneity --config` load
# with it off (load_coordinator_config(check_unread=False)): their flags or grid cells set the
# strategy and aggregator over the file's, so a key is checked against the run's final config
# (simulate) or set alike for every cell (the benchmark), not against the file's own choice.
CHECKING: ContextVar[bool] = ContextVar("fedge_unread_keys_checking", default=True)


# Tables whose settings act only when the table's `enabled` is true (dp/config.check_coordinator and
# the secure round return at once otherwise). A file that writes their settings and no `enabled`
# believed the mode on: `[coordinator.privacy] target_epsilon = 3` alone trained with no noise, no
# clipping and no ledger, and said nothing. An explicit `enabled = false` is a table turned off on
# purpose (the documented way to run a round without it) and loads.
SWITCHED_TABLES = {"privacy": "differential privacy", "secure_aggregation": "secure aggregation"}


class UnreadKey(ConfigError):
    """A key the file sets that the configuration it describes never reads."""

    reason = "unread_key"

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def check_written(written: dict, cfg) -> None:
    """Raise UnreadKey for the first key of `written` (a [coordinator] table as read) that `cfg`
    (the CoordinatorConfig built from it) does not read. The message starts with the key's path
    so that configfile locates it in the file."""
    for table, what in SWITCHED_TABLES.items():
        keys = sorted(written.get(table, {}))
        if keys and "enabled" not in keys:  # enabled = false written: a table kept and turned off on purpose
            raise UnreadKey(f"{table}.{keys[0]}", f"{table}.{keys[0]}: the [coordinator.{table}] table sets "
                                                  f"{', '.join(keys)} but not enabled, so {what} is off (enabled "
                                                  f"defaults to false) and none of them is used; write enabled = "
                                                  f"true to turn it on, or enabled = false to keep the table off")
    for key, strategies in STRATEGY_OPTIONS.items():
        if key in written and cfg.strategy not in strategies:
            raise UnreadKey(key, f"{key} applies to strategy {' or '.join(map(repr, strategies))}, not "
                                 f"{cfg.strategy!r}: {cfg.strategy} never reads it; drop it or change strategy")
    if cfg.strategy == "fedprox" and "mu" in written.get("hyper", {}):  # FedProx.configure replaces it
        raise UnreadKey("hyper.mu", "hyper.mu applies to strategies other than 'fedprox': fedprox sends prox_mu as "
                                    "every task's mu; write prox_mu instead")
    buffered = [f"async.{key}" for key in written.get("async", {})]
    if buffered and cfg.mode != "async":  # named key by key: configfile locates the first
        raise UnreadKey(buffered[0], f"{', '.join(buffered)} (the [coordinator.async] table) applies to "
                                     f"mode = 'async', not {cfg.mode!r}: rounds never read it; drop it or set "
                                     f"mode = 'async'")
    _check_robust(written.get("robust", {}), cfg)
    if "shard_takeover_s" in written and not cfg.shards:
        raise UnreadKey("shard_takeover_s", "shard_takeover_s applies to sharded ingest (shards > 0), not shards = 0: "
                                            "no leader moves devices between shards; drop it or set shards")
    synced = [key for key in SYNC_ONLY if key in written]
    if synced and cfg.mode == "async":
        raise UnreadKey(synced[0], f"{synced[0]} applies to mode = 'sync', not 'async': a buffer takes "
                                   f"async.buffer_size updates from up to async.concurrency tasks; drop it or set "
                                   f"mode = 'sync'")


def _check_robust(robust: dict, cfg) -> None:
    """The [robust] table's keys and its [robust.norm], [robust.screen] and [robust.sign] tables'."""
    for key, aggregators in ROBUST_OPTIONS.items():
        if key in robust and cfg.aggregator not in aggregators:
            _not_aggregator(f"robust.{key}", aggregators, cfg.aggregator)
    for key in robust.get("norm", {}):
        _not_aggregator(f"robust.norm.{key}", NORM_READERS.get(key, ("norm_bound",)), cfg.aggregator)
        if key == "device_clip" and cfg.mode != "sync":  # records._device_clip: a buffer may mix bounds
            raise UnreadKey("robust.norm.device_clip", "robust.norm.device_clip applies to mode = 'sync', not "
                                                       f"{cfg.mode!r}: an async update may land in a later buffer, "
                                                       f"with another bound; drop it")
    screen = sorted(robust.get("screen", {}))
    if screen and robust["screen"].get("enabled") is not False:  # enabled = false written: off on purpose
        _not_aggregator(f"robust.screen.{screen[0]}", ("norm_bound",), cfg.aggregator)
        if not cfg.guard_set:
            raise UnreadKey(f"robust.screen.{screen[0]}", f"robust.screen.{screen[0]}: the [robust.screen] table "
                                                          f"applies with a guard set, and guard_set is not set: "
                                                          f"nothing is screened; drop it or set guard_set")
    sign = sorted(robust.get("sign", {}))
    if sign and robust["sign"].get("gap", None) != 0:  # gap = 0 written: the split kept and turned off on purpose
        _not_aggregator(f"robust.sign.{sign[0]}", ("norm_bound",), cfg.aggregator)
        if "gap" not in sign:
            raise UnreadKey(f"robust.sign.{sign[0]}", f"robust.sign.{sign[0]}: the [robust.sign] table sets "
                                                      f"{', '.join(sign)} but not gap, so the sign split is off (gap "
                                                      f"defaults to 0) and none of them is used; write gap > 0 to "
                                                      f"turn it on, or gap = 0 to keep the table off")


def _not_aggregator(key: str, aggregators: tuple[str, ...], chosen: str) -> None:
    if chosen not in aggregators:
        raise UnreadKey(key, f"{key} applies to aggregator {' or '.join(map(repr, aggregators))}, not {chosen!r}: "
                             f"drop it or change aggregator")
