"""`[coordinator.async]`: FedBuff's settings, and the coordinator settings async mode refuses.

    [coordinator]
    mode = "async"
    [coordinator.async]
    concurrency = 100       # slots: tasks training at once; tasks out (released ones too) <= 2x this
    buffer_size = 10        # K: accepted updates per server step (one new model version)
    max_staleness = 20      # updates trained on a model more versions behind are rejected: stale_update
    staleness = "polynomial"   # weight (1 + s)^-staleness_exponent; "constant": weight 1
    staleness_exponent = 0.5

Refusals (AsyncConflict, a ConfigError with a `reason`):

* async_secure_aggregation: pairwise masks cancel only within one cohort that trained on
  one model version; a buffer mixes versions and devices that never met. Buffered SecAgg
  (masks per buffer) is a later step.
* async_scaffold: SCAFFOLD's control variates assume every device of a step started
  from the same c; a buffer's updates started from different ones.
* async_model_parts: a task's params travel inline; retained model parts hold one
  version, and a slow device may still need the one before.
* async_postgres: the buffer's journal (journal.py) lives in the SQLite state_db file;
  with state_dsn it would fall back to memory and lose buffered updates on a restart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedge.edge_runtime.kernel.errors import ConfigError, NamedConfigError

from ..limits import MAX_FLEET

MODES = ("sync", "async")
STALENESS = ("polynomial", "constant")


class AsyncConflict(NamedConfigError):
    """A coordinator setting that async mode cannot honour."""


@dataclass(frozen=True)
class AsyncConfig:
    concurrency: int = 100
    buffer_size: int = 10
    max_staleness: int = 20
    staleness: str = "polynomial"
    staleness_exponent: float = 0.5

    def __post_init__(self) -> None:
        if not 1 <= self.concurrency <= MAX_FLEET:
            raise ConfigError(f"async.concurrency must be in [1, {MAX_FLEET:,}] (task slots; tasks out <= 2x)")
        if not 1 <= self.buffer_size <= MAX_FLEET:
            raise ConfigError(f"async.buffer_size must be in [1, {MAX_FLEET:,}] (K updates per model version)")
        if self.max_staleness < 0:
            raise ConfigError("async.max_staleness must be >= 0 (0 = only updates on the current model)")
        if self.staleness not in STALENESS:
            raise ConfigError(f"async.staleness {self.staleness!r}: choose one of {STALENESS}")
        if not (self.staleness_exponent >= 0 and math.isfinite(self.staleness_exponent)):
            raise ConfigError("async.staleness_exponent must be >= 0 and finite")
        if not (1.0 + self.max_staleness) ** -self.exponent > 0:  # the aggregators refuse f = 0 (staleness.py)
            raise ConfigError(f"async.staleness_exponent {self.staleness_exponent:g} weights an update at "
                              f"max_staleness {self.max_staleness} by (1 + s)^-a = 0.0 in float64: lower one of them")

    @property
    def exponent(self) -> float:
        """a in (1 + s)^-a; 0 for the constant weight."""
        return self.staleness_exponent if self.staleness == "polynomial" else 0.0


def check_mode(cfg) -> None:
    """Raise for an unknown mode, or an AsyncConflict for a CoordinatorConfig async cannot run."""
    if cfg.mode not in MODES:
        raise ConfigError(f"mode {cfg.mode!r}: choose one of {MODES}")
    if cfg.mode != "async":
        return
    conflicts = [
        (cfg.secure_aggregation.enabled, "async_secure_aggregation",
         "secure aggregation needs one cohort on one model version, and masks from different versions do not "
         "cancel; turn one of them off"),
        (cfg.strategy == "scaffold", "async_scaffold", "scaffold's control variates need every update of a step "
                                                       "to start from the same c"),
        (bool(cfg.state_dsn), "async_postgres", "the async journal is kept in SQLite only: use state_db, "
                                                "or mode = 'sync' with state_dsn"),
        (cfg.model_part_bytes > 0, "async_model_parts", "async tasks carry their params inline: "
                                                        "set model_part_bytes = 0"),
    ]
    for bad, reason, message in conflicts:
        if bad:
            raise AsyncConflict(reason, f"mode = 'async' ({reason}): {message}")
