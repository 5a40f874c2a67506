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
* ROBUST_OPTIONS: robust/aggregators.make_aggregator, the only reader of these three keys.
* SWITCHED_TABLES' settings without the table's `enabled`: read only when it is true.
"""

from __future__ import annotations

from contextvars import ContextVar

from fedge.edge_runtime.kernel.errors import ConfigError

from .strategies import STRATEGY_OPTIONS

# [coordinator.robust] keys and the aggregators that read them (robust/aggregators._make).
ROBUST_OPTIONS: dict[str, tuple[str, ...]] = {
    "byzantine_fraction": ("trimmed_mean", "krum"), "cc_tau": ("centered_clipping",),
    "cc_iterations": ("centered_clipping",)}


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
    robust = written.get("robust", {})
    for key, aggregators in ROBUST_OPTIONS.items():
        if key in robust and cfg.aggregator not in aggregators:
            raise UnreadKey(f"robust.{key}", f"robust.{key} applies to aggregator "
                                             f"{' or '.join(map(repr, aggregators))}, not {cfg.aggregator!r}: "
                                             f"drop it or change aggregator")
