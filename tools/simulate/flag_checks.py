"""`fedge simulate` flags that would change nothing in the run they are given to: refused by
name, so a run never reports a setting it did not use. Checked on the command line only: the
benchmarks and the Python API set every field of a grid alike, whether a cell reads it or not."""

from __future__ import annotations

from collections.abc import Collection

from fedge.coordinator.strategies import STRATEGY_OPTIONS
from fedge.edge_runtime.kernel.errors import ConfigError

from .config import SYNTHETIC_SPLIT, SimConfig


class DeadlineInMemory(ConfigError):
    """--round-deadline with --transport memory. In memory a device trains in no simulated time
    (the clock moves only when a round stalls: InMemoryFleet.run_round), so every device answers
    before any deadline, and which answer late is drawn from the seed (stragglers.py): the runs
    with --round-deadline 1 and 600 were the same, bit for bit. Over MQTT devices take real time
    (profiles add to it) and the deadline cuts off the slow ones."""

    reason = "round_deadline_in_memory"


def check_options_apply(cfg: SimConfig, typed: Collection[str]) -> None:
    """cfg: what the flags built; typed: the flags typed (by dest): the coordinator's (cli.COORDINATOR_FLAGS),
    and the ones a run may not use (cli.TYPED_ONLY), refused when typed even at their default value
    (`--attackers 0.2` without `--attack` once passed; `--attackers 0.3` did not)."""
    for flag, strategies in STRATEGY_OPTIONS.items():  # the table a config file's keys are held to
        if flag in typed and cfg.coordinator.strategy not in strategies:
            raise ConfigError(f"--{flag.replace('_', '-')} applies to --strategy {' or '.join(strategies)}, "
                              f"not {cfg.coordinator.strategy}")
    if cfg.attack is None and ("attackers" in typed or cfg.attackers != SimConfig.attackers or cfg.omniscient):
        raise ConfigError("--attackers and --omniscient need --attack")
    if cfg.synthetic and {"partition", "classes_per_client"} & set(typed):  # SimConfig sees only other values
        raise ConfigError(SYNTHETIC_SPLIT)
    split = cfg.data_dir is None and not cfg.synthetic
    if split:
        check_alpha_applies(cfg.partition, cfg.alpha, " and --dataset synthetic")
    if split and ("classes_per_client" in typed or cfg.classes_per_client != SimConfig.classes_per_client) \
            and cfg.partition != "shards":
        raise ConfigError(f"--classes-per-client applies to --partition shards, not {cfg.partition}")
    if ("finetune_steps" in typed or cfg.finetune_steps != SimConfig.finetune_steps) \
            and cfg.personalization != "finetune":
        raise ConfigError(f"--finetune-steps applies to --personalization finetune, not {cfg.personalization}")
    if ("new_device_steps" in typed or cfg.new_device_steps != SimConfig.new_device_steps) and not cfg.new_devices:
        raise ConfigError("--new-device-steps needs --new-devices")
    if cfg.standardize is False and cfg.data_dir is None:
        raise ConfigError("--no-standardize applies to --data: a shipped or synthetic dataset is standardized only "
                          "when --standardize asks")
    if cfg.standardize_with is not None and cfg.data_dir is None and not cfg.standardize:
        raise ConfigError("--standardize-with needs --standardize with a shipped or synthetic dataset: it is "
                          "standardized only when --standardize asks")
    if cfg.broker_url and cfg.transport != "mqtt":
        raise ConfigError("--broker needs --transport mqtt")
    if "round_deadline_s" in typed and cfg.transport == "memory":
        raise DeadlineInMemory("--round-deadline needs --transport mqtt: in memory a device trains in no simulated "
                               "time, so every device answers before any deadline (who answers late is drawn from "
                               "the seed) and the run would be the same with any deadline")
    for baseline in ("local", "central"):  # the epochs of a baseline the run does not train
        if getattr(cfg, f"{baseline}_epochs") is not None and baseline not in cfg.baselines:
            raise ConfigError(f"--{baseline}-epochs applies to --baselines {baseline}, not --baselines "
                              f"{','.join(cfg.baselines) or '(none)'}")
    if cfg.personalization in ("none", "finetune") and "personal_head_from_global" in typed:
        # finetune's model has the global head only: personal_start finds no personal head to seed
        raise ConfigError(f"--personal-head-from-global: --personalization {cfg.personalization} keeps no personal "
                          f"head (its model has the global head only)")
    check_attack_options(cfg)
    check_device_options(cfg, typed)


# Attacks that read --attack-scale (adversary.malicious_delta), and those --omniscient changes (the colluders).
SCALED_ATTACKS = ("sign_flip", "scale", "backdoor")


def check_attack_options(cfg: SimConfig) -> None:
    """--attack-scale and --omniscient with an attack that never reads them (each once ran silently)."""
    from .adversary import COLLUDING

    if cfg.attack is not None and cfg.attack_scale and cfg.attack not in SCALED_ATTACKS:
        raise ConfigError(f"--attack-scale applies to --attack {', '.join(SCALED_ATTACKS)}, not {cfg.attack}")
    if cfg.attack is not None and cfg.omniscient and cfg.attack not in COLLUDING:
        raise ConfigError(f"--omniscient applies to the colluding attacks ({', '.join(COLLUDING)}), not {cfg.attack}: "
                          f"it lets colluders see the honest devices' deltas")


COMPRESSION_FLAGS = {"quant_bits": "--quant-bits", "topk_fraction": "--topk", "error_feedback": "--no-error-feedback"}


def check_device_options(cfg: SimConfig, typed: Collection[str]) -> None:
    """Training and compression flags the devices would not use in this run (each once ran silently)."""
    hyper, compression = cfg.coordinator.hyper, cfg.coordinator.compression
    if "momentum" in typed and hyper.momentum and (hyper.optimizer != "sgd" or cfg.backend == "ort-training"):
        # config.effective_hyper sends momentum 0 to both (a typed 0 is what they run)
        what = f"--optimizer {hyper.optimizer}" if hyper.optimizer != "sgd" else "--backend ort-training"
        raise ConfigError(f"--momentum applies to SGD on the portable and numpy backends, not {what} (its devices "
                          f"train with momentum 0)")
    sketch = [flag for name, flag in COMPRESSION_FLAGS.items() if name in typed]
    if sketch and cfg.coordinator.secure_aggregation.enabled:
        raise ConfigError(f"{', '.join(sketch)} with secure aggregation: devices send every coordinate quantized "
                          f"into the shared field (secure_aggregation.bits), without error feedback; drop "
                          f"{'them' if len(sketch) > 1 else 'it'}")
    if "error_feedback" in typed and compression.quant_bits == 32 and compression.topk_fraction >= 1:
        raise ConfigError("--no-error-feedback with --quant-bits 32 and no --topk: the update is sent whole, so "
                          "nothing is left over to feed back")


# Flags that describe how a shipped dataset is split; a --data folder is already split.
SPLIT_FLAGS = ("devices", "dataset", "partition", "alpha", "beta", "classes_per_client")


def check_split_flags(cfg: SimConfig, typed: Collection[str]) -> None:
    """A user's --data run must not carry split settings it would silently ignore; `typed`: the
    flags given on the command line (by dest), so that one typed at its default is refused too
    (`--devices 20 --data DIR` once passed; `--devices 7` did not)."""
    given = [f"--{n.replace('_', '-')}" for n in SPLIT_FLAGS
             if n in typed or getattr(cfg, n) != getattr(SimConfig, n)]
    if cfg.data_dir and given:
        raise ConfigError(f"{', '.join(given)} do not apply with --data: each .npz file in {cfg.data_dir} is "
                          f"one device, split as you saved it; drop {'them' if len(given) > 1 else 'it'}")


def check_alpha_applies(partition: str, alpha: float | None, also: str = "") -> None:
    """A typed --alpha (alpha not None) with a partition that splits without a concentration:
    `simulate`, `data split` and `pretrain` refuse it alike (each once ignored it silently)."""
    if alpha is not None and partition != "dirichlet":
        raise ConfigError(f"--alpha applies to --partition dirichlet{also}, not --partition {partition} "
                          f"(it takes no concentration)")
