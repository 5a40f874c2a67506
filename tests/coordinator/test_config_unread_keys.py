"""A config file's key that its own configuration never reads is refused by name
(coordinator/unread_keys.py): `strategy = "fedavg"` with `prox_mu = 0.1` once loaded, and
nothing said FedProx's proximal term was off. Oracles: the README's strategy table written out
by hand, and the strategies themselves (a key a strategy does not read leaves the strategy
built from the config unchanged)."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig, load_coordinator_config
from fedge.coordinator.service import load_service_config
from fedge.coordinator.strategies import STRATEGIES, AggregateInput, strategy_from_config
from fedge.coordinator.unread_keys import UnreadKey
from fedge.edge_runtime.kernel.errors import ConfigError

ADAPTIVE = {"fedadagrad", "fedadam", "fedyogi"}
# README, "Aggregation strategies", the options column; control_norm_bound: "SCAFFOLD: refuse a Δc_i"
READERS = {"prox_mu": {"fedprox"}, "server_momentum": {"fedavgm"}, "server_beta1": ADAPTIVE,
           "server_beta2": {"fedadam", "fedyogi"}, "server_tau": ADAPTIVE, "control_norm_bound": {"scaffold"}}
VALUES = {"prox_mu": 0.1, "server_momentum": 0.5, "server_beta1": 0.8, "server_beta2": 0.95, "server_tau": 0.01,
          "control_norm_bound": 5.0}  # each a valid value other than the default


def _write(tmp_path, text: str):
    path = tmp_path / "coordinator.toml"
    path.write_text(text)
    return path


def test_fedavg_with_prox_mu_is_refused_naming_the_key_its_strategy_and_the_chosen_one(tmp_path):
    path = _write(tmp_path, '[coordinator]\nartifacts_dir = "a"\nstrategy = "fedavg"\nprox_mu = 0.1\n')
    with pytest.raises(UnreadKey, match=r"coordinator.toml: coordinator.prox_mu applies to strategy 'fedprox', "
                                        r"not 'fedavg'") as caught:
        load_coordinator_config(path)
    assert caught.value.key == "prox_mu" and caught.value.reason == "unread_key"
    with pytest.raises(ConfigError, match="prox_mu applies to strategy 'fedprox'"):  # `coordinator serve`'s loader
        load_service_config(path)


@pytest.mark.parametrize("key", sorted(READERS))
def test_a_strategy_option_loads_under_the_strategies_that_read_it_and_is_refused_under_the_rest(tmp_path, key):
    assert set(STRATEGIES) == {"fedavg", "fedprox", "scaffold", "fedavgm"} | ADAPTIVE
    for strategy in sorted(STRATEGIES):
        path = _write(tmp_path, f'strategy = "{strategy}"\n{key} = {VALUES[key]}\n')
        if strategy in READERS[key]:
            assert getattr(load_coordinator_config(path), key) == VALUES[key]
        else:
            with pytest.raises(UnreadKey, match=rf"coordinator.toml: {key} applies to strategy .*not '{strategy}'"):
                load_coordinator_config(path)


def _two_rounds(strategy) -> tuple:
    """What a strategy does with two rounds of fixed deltas: the tasks' hyper, then every array it holds."""
    state = strategy.init({"w": np.array([0.5, -1.0, 2.0], np.float32)})
    plan, arrays = strategy.configure(state), []
    for delta in ([0.1, -0.2, 0.3], [-0.05, 0.4, 0.02]):
        d = {"w": np.array(delta, np.float32)}
        state = strategy.apply(state, AggregateInput(d, 2, 4, mean_control=d))
        arrays += [state.params["w"].tobytes()] + [g[k].tobytes() for _, g in sorted(state.extra.items())
                                                   for k in sorted(g)]
    return plan.hyper, plan.correction is not None, arrays


@pytest.mark.parametrize("key", sorted(set(READERS) - {"control_norm_bound"}))  # read by the round, not the strategy
def test_the_table_is_what_the_strategies_do(key):
    """A key a strategy reads changes what it does in two rounds; one refused leaves it bit for bit."""
    for strategy in STRATEGIES:
        default, changed = (_two_rounds(strategy_from_config(CoordinatorConfig(strategy=strategy, **options)))
                            for options in ({}, {key: VALUES[key]}))
        assert (default != changed) == (strategy in READERS[key]), (key, strategy)


def test_hyper_mu_under_fedprox_is_refused_and_read_under_fedavg(tmp_path):
    """FedProx's tasks carry prox_mu as their mu (strategies/fedavg.py), whatever [hyper] mu says."""
    text = 'strategy = "{}"\n[hyper]\nmu = 0.2\n'
    with pytest.raises(UnreadKey, match=r"coordinator.toml: hyper.mu applies to strategies other than 'fedprox'"):
        load_coordinator_config(_write(tmp_path, text.format("fedprox")))
    fedavg = load_coordinator_config(_write(tmp_path, text.format("fedavg")))
    assert strategy_from_config(fedavg).configure(None).hyper.mu == 0.2  # FedAvg's tasks carry it
    fedprox = CoordinatorConfig(strategy="fedprox", hyper=fedavg.hyper, prox_mu=0.05)
    assert strategy_from_config(fedprox).configure(None).hyper.mu == 0.05  # the 0.2 never reaches a device


def test_an_async_table_under_sync_mode_is_refused_and_loads_under_async(tmp_path):
    text = '[coordinator]\nartifacts_dir = "a"\nmode = "{}"\n[coordinator.async]\nbuffer_size = 4\nconcurrency = 8\n'
    with pytest.raises(UnreadKey, match=r"coordinator.async.buffer_size, async.concurrency \(the "
                                        r"\[coordinator.async\] table\) applies to mode = 'async', not 'sync'"):
        load_coordinator_config(_write(tmp_path, text.format("sync")))
    assert load_coordinator_config(_write(tmp_path, text.format("async"))).async_.buffer_size == 4


@pytest.mark.parametrize("key, value, readers", [
    ("byzantine_fraction", 0.3, {"trimmed_mean", "krum"}),
    ("cc_tau", 0.5, {"centered_clipping"}),
    ("cc_iterations", 5, {"centered_clipping"}),
    ("bucket_size", 1, {"median", "trimmed_mean", "krum", "centered_clipping"}),  # 1: off, but only these read it
])
def test_a_robust_option_loads_under_the_aggregators_that_read_it_and_is_refused_under_the_rest(tmp_path, key, value,
                                                                                               readers):
    for aggregator in ("mean", "norm_bound", "median", "trimmed_mean", "krum", "centered_clipping"):
        path = _write(tmp_path, f'aggregator = "{aggregator}"\n[robust]\n{key} = {value}\n')
        if aggregator in readers:
            assert getattr(load_coordinator_config(path).robust, key) == value
        else:
            with pytest.raises(UnreadKey, match=rf"robust.{key} applies to aggregator .*not '{aggregator}'"):
                load_coordinator_config(path)


def test_a_file_that_leaves_the_options_out_loads_under_every_strategy(tmp_path):
    for strategy in STRATEGIES:
        assert load_coordinator_config(_write(tmp_path, f'strategy = "{strategy}"\n')).strategy == strategy


@pytest.mark.parametrize("text, flags, words", [
    ('strategy = "fedavg"\nprox_mu = 0.1\n', [], ("coordinator.toml: prox_mu applies to strategy 'fedprox'",)),
    # the file reads on its own; the flag changes the strategy under it
    ('strategy = "fedprox"\nprox_mu = 0.1\n', ["--strategy", "fedavg"],
     ("coordinator.toml: prox_mu applies to strategy 'fedprox', not 'fedavg'", "with the flags given")),
    ('aggregator = "krum"\n[robust]\nbyzantine_fraction = 0.3\n', ["--aggregator", "median"],
     ("robust.byzantine_fraction applies to aggregator 'trimmed_mean' or 'krum', not 'median'",)),
])
def test_simulate_refuses_a_file_key_its_run_would_not_read(tmp_path, capsys, text, flags, words):
    from fedge.tools.cli import main

    path = _write(tmp_path, text)
    assert main(["simulate", "--config", str(path), *flags, "--rounds", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedge: error:"), err
    for word in words:
        assert word in err[0], err[0]


@pytest.mark.parametrize("text, flags, read", [
    # the review's repros: a key the file's own strategy (or aggregator) does not read, made read by a flag
    ('clients_per_round = 4\nprox_mu = 0.1\n', ["--strategy", "fedprox"], ("prox_mu", 0.1)),
    ('[robust]\nbyzantine_fraction = 0.1\n', ["--aggregator", "trimmed_mean"], ("robust", 0.1)),
])
def test_simulate_runs_a_file_key_a_flag_makes_read(tmp_path, text, flags, read):
    """`--config` loads the file without its own check, then checks its keys against the run's
    config, flags applied: refused at load, a file's prox_mu stopped `--strategy fedprox` (exit 2)."""
    import argparse

    from fedge.tools.simulate.cli import add_arguments, build_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--config", str(_write(tmp_path, text)), *flags, "--rounds", "1"])
    cfg = build_config(args, str(tmp_path / "out")).coordinator
    key, value = read
    assert (cfg.robust.byzantine_fraction if key == "robust" else getattr(cfg, key)) == value


def test_the_heterogeneity_bench_loads_a_file_key_only_some_of_its_cells_read(tmp_path, monkeypatch):
    """Every cell sets its own strategy over the file's: server_beta1 is its fedadam and fedyogi
    cells' (refused at load, the file's fedavg stopped the bench)."""
    from fedge.tools.bench import heterogeneity

    path = _write(tmp_path, "server_beta1 = 0.5\n")
    ran = {}

    def fake_run(grid, json_path, report_dir, **kwargs):  # the grid main() built, not a run of it
        ran["grid"] = grid
        return {"targets": [], "wall_seconds": 0.0}

    monkeypatch.setattr(heterogeneity, "run", fake_run)
    assert heterogeneity.main(["--json", str(tmp_path / "h.json"), "--config", str(path)]) == 0
    assert ran["grid"].coordinator.server_beta1 == 0.5
    with pytest.raises(UnreadKey):  # the file's own check, on again after the bench's load without it
        load_coordinator_config(path)


@pytest.mark.parametrize("table, text", [
    ("privacy", "target_epsilon = 3.0\nrounds = 10\n"),
    ("secure_aggregation", "dropout = 0.2\nclip_range = 1.0\n"),
])
def test_a_switched_table_without_enabled_is_refused_and_loads_with_it_either_way(tmp_path, table, text):
    """`[coordinator.privacy] target_epsilon = 3` alone once trained with no noise, no clipping and no
    ledger entry, and said nothing: the table's settings act only with enabled = true."""
    head = '[coordinator]\nartifacts_dir = "a"\n'
    with pytest.raises(UnreadKey, match=rf"coordinator\.{table}\..*sets .* but not enabled, so .* is off") as caught:
        load_coordinator_config(_write(tmp_path, f"{head}[coordinator.{table}]\n{text}"))
    assert caught.value.key.startswith(f"{table}.")
    off = load_coordinator_config(_write(tmp_path, f"{head}[coordinator.{table}]\nenabled = false\n{text}"))
    assert getattr(off, table).enabled is False  # kept and turned off on purpose: loads
    on = load_coordinator_config(_write(tmp_path, f"{head}[coordinator.{table}]\nenabled = true\n{text}"))
    assert getattr(on, table).enabled is True


# --- the robust sub-tables, sharding, async ---------------------------------------------------------------

ALL_AGGREGATORS = ("mean", "norm_bound", "median", "trimmed_mean", "krum", "centered_clipping")
KEEP_ALL = ("median", "trimmed_mean", "krum", "centered_clipping")
# README, Robust aggregation: [robust.norm] is norm_bound's; every other rule but mean keeps the
# norm history (cut to window) that centered_clipping's default radius is the median of (min_history).
NORM_READERS = {"window": set(ALL_AGGREGATORS) - {"mean"}, "min_history": {"norm_bound", "centered_clipping"}}
NORM_VALUES = {"multiplier": 1.0, "window": 8, "min_history": 10, "initial_bound": 0.5, "weight_multiplier": 0.0,
               "exclude_multiplier": 0.0, "exclude_claim_allowance": 3.0}  # each valid, none the default


def _rounds(name, robust, guard_loss=None) -> list[bytes]:
    """Two rounds of one aggregator over fixed updates (one 10x the others' norm, claiming 10x the
    median weight; the second round's 3x the first's, so that a bound from the history binds):
    every result and the cross-round state it carries, as bytes."""
    from fedge.coordinator.robust.aggregators import RobustState, advance, make_aggregator

    rng, state, out = np.random.default_rng(5), RobustState(), []
    for growth in (1.0, 3.0):
        scales, weights = [1.0, 1.2, 0.8, 1.1, 0.9, 10.0], [10.0, 20.0, 30.0, 10.0, 20.0, 200.0]
        agg = make_aggregator(name, robust, state, np.random.default_rng(0), guard_loss)
        for scale, weight in zip(scales, weights):
            agg.add({"w": (growth * scale * rng.normal(size=5) / np.sqrt(5)).astype(np.float32)}, weight)
        out.append(agg.mean()["w"].tobytes())
        state = advance(state, agg, robust)
        out += [np.asarray(state.history.norms).tobytes(), np.asarray(state.claims.norms).tobytes()]
    return out


def _robust(**tables):
    from fedge.coordinator.robust.aggregators import RobustConfig
    from fedge.coordinator.robust.norm_bound import NormBoundConfig
    from fedge.coordinator.robust.screening import ScreenConfig
    from fedge.coordinator.robust.sign_split import SignSplitConfig

    kinds = {"norm": NormBoundConfig, "screen": ScreenConfig, "sign": SignSplitConfig}
    return RobustConfig(**{table: kinds[table](**keys) for table, keys in tables.items()})


@pytest.mark.parametrize("key", sorted(NORM_VALUES))
def test_a_robust_norm_key_loads_under_the_aggregators_that_read_it_and_is_refused_under_the_rest(tmp_path, key):
    readers = NORM_READERS.get(key, {"norm_bound"})
    for aggregator in ALL_AGGREGATORS:
        path = _write(tmp_path, f'aggregator = "{aggregator}"\n[robust.norm]\n{key} = {NORM_VALUES[key]}\n')
        if aggregator in readers:
            assert getattr(load_coordinator_config(path).robust.norm, key) == NORM_VALUES[key]
        else:
            with pytest.raises(UnreadKey, match=rf"coordinator.toml: robust.norm.{key} applies to aggregator "
                                                rf".*not '{aggregator}'") as caught:
                load_coordinator_config(path)
            assert caught.value.key == f"robust.norm.{key}"


@pytest.mark.parametrize("key", sorted(NORM_VALUES))
def test_the_norm_readers_are_what_the_aggregators_do(key):
    """A [robust.norm] key an aggregator reads changes its two rounds (result or carried history);
    one refused leaves them bit for bit."""
    for aggregator in ALL_AGGREGATORS:
        default, changed = (_rounds(aggregator, _robust(**tables))
                            for tables in ({}, {"norm": {key: NORM_VALUES[key]}}))
        assert (default != changed) == (aggregator in NORM_READERS.get(key, {"norm_bound"})), (key, aggregator)


def test_device_clip_is_read_by_norm_bound_in_sync_mode_only(tmp_path):
    """records._device_clip, its only reader, gives an async round's tasks no clip whatever it says."""
    from dataclasses import replace

    from fedge.coordinator.records import _device_clip
    from fedge.coordinator.robust.aggregators import StreamingAggregator

    text = 'aggregator = "{}"\nmode = "{}"\n[robust.norm]\ndevice_clip = false\n'
    assert load_coordinator_config(_write(tmp_path, text.format("norm_bound", "sync"))).robust.norm.device_clip is False
    with pytest.raises(UnreadKey, match="robust.norm.device_clip applies to mode = 'sync', not 'async'"):
        load_coordinator_config(_write(tmp_path, text.format("norm_bound", "async")))
    with pytest.raises(UnreadKey, match="robust.norm.device_clip applies to aggregator 'norm_bound', not 'median'"):
        load_coordinator_config(_write(tmp_path, text.format("median", "sync")))
    bounded = StreamingAggregator(bound=2.0)
    for mode in ("sync", "async"):
        on, off = (_device_clip(replace(CoordinatorConfig(mode=mode), robust=_robust(norm={"device_clip": clip})),
                                bounded) for clip in (True, False))
        assert (on is not None and on.clip_norm == 2.0, off) == ((True, None) if mode == "sync" else (False, None))


def test_robust_screen_is_read_by_norm_bound_with_a_guard_set_only(tmp_path):
    table = "[robust.screen]\nmin_keep = 1.0\n"
    guarded = load_coordinator_config(_write(tmp_path, f'guard_set = "guard.npz"\n{table}'))
    assert guarded.robust.screen.min_keep == 1.0
    with pytest.raises(UnreadKey, match=r"coordinator.toml: robust.screen.min_keep: .* applies with a guard set, "
                                        r"and guard_set is not set"):
        load_coordinator_config(_write(tmp_path, table))
    for aggregator in set(ALL_AGGREGATORS) - {"norm_bound"}:
        with pytest.raises(UnreadKey, match=rf"robust.screen.min_keep applies to aggregator 'norm_bound', not "
                                            rf"'{aggregator}'"):
            load_coordinator_config(_write(tmp_path, f'aggregator = "{aggregator}"\nguard_set = "g.npz"\n{table}'))
        # enabled = false written turns the table off on purpose: it loads without a guard set, under any rule
        off = load_coordinator_config(_write(tmp_path, f'aggregator = "{aggregator}"\n{table}enabled = false\n'))
        assert (off.aggregator, off.robust.screen.enabled) == (aggregator, False)
    # the aggregators: min_keep = 1 keeps the update the guard set would drop, under norm_bound with a guard only
    target = np.random.default_rng(9).normal(size=5)

    def guard(delta):
        return float(np.sum((delta["w"] - target) ** 2))

    for aggregator in ALL_AGGREGATORS:
        for loss in (guard, None):
            default, changed = (_rounds(aggregator, _robust(**tables), loss)
                                for tables in ({}, {"screen": {"min_keep": 1.0}}))
            assert (default != changed) == (aggregator == "norm_bound" and loss is not None), (aggregator, loss)


def test_robust_sign_is_norm_bounds_and_its_settings_need_gap(tmp_path):
    with pytest.raises(UnreadKey, match=r"robust.sign.round_clip: the \[robust.sign\] table sets round_clip, share "
                                        r"but not gap, so the sign split is off"):
        load_coordinator_config(_write(tmp_path, "[robust.sign]\nshare = 0.2\nround_clip = 1.0\n"))
    for gap in (0, 4):  # gap = 0 written: kept and turned off on purpose
        cfg = load_coordinator_config(_write(tmp_path, f"[robust.sign]\ngap = {gap}\nround_clip = 1.0\n"))
        assert (cfg.robust.sign.gap, cfg.robust.sign.round_clip) == (gap, 1.0)
    for aggregator in set(ALL_AGGREGATORS) - {"norm_bound"}:
        with pytest.raises(UnreadKey, match=rf"robust.sign.share applies to aggregator 'norm_bound', "
                                            rf"not '{aggregator}'"):
            load_coordinator_config(_write(tmp_path, f'aggregator = "{aggregator}"\n[robust.sign]\nshare = 0.2\n'))
        # gap = 0 written turns the table off on purpose, as enabled = false does the privacy table
        off = load_coordinator_config(_write(tmp_path, f'aggregator = "{aggregator}"\n[robust.sign]\ngap = 0\n'
                                                       f'share = 0.2\n'))
        assert (off.aggregator, off.robust.sign.gap) == (aggregator, 0)
    # the aggregator: round_clip acts with gap > 0 only, under norm_bound only
    for aggregator in ALL_AGGREGATORS:
        for gap in (0.0, 1e-9):
            base = {"gap": gap} if aggregator == "norm_bound" else {}
            default, changed = (_rounds(aggregator, _robust(sign={**base, **extra}))
                                for extra in ({}, {"round_clip": 1.0}))
            assert (default != changed) == (aggregator == "norm_bound" and gap > 0), (aggregator, gap)


def test_shard_takeover_s_is_refused_without_shards_and_loads_with_them(tmp_path):
    with pytest.raises(UnreadKey, match=r"coordinator.toml: coordinator.shard_takeover_s applies to sharded ingest "
                                        r"\(shards > 0\), not shards = 0") as caught:
        load_coordinator_config(_write(tmp_path, '[coordinator]\nartifacts_dir = "a"\nshard_takeover_s = 10.0\n'))
    assert caught.value.key == "shard_takeover_s"
    cfg = load_coordinator_config(_write(tmp_path, 'shards = 2\nstate_dsn = "postgresql://fedge@127.0.0.1/fedge"\n'
                                                   'shard_takeover_s = 10.0\n'))
    assert (cfg.shards, cfg.shard_takeover_s) == (2, 10.0)


@pytest.mark.parametrize("key, value", [("clients_per_round", 4), ("min_reports", 2)])
def test_a_sync_round_key_is_refused_in_async_mode_and_loads_in_sync(tmp_path, key, value):
    text = f'mode = "{{}}"\n{key} = {value}\n[async]\nbuffer_size = 2\n'
    with pytest.raises(UnreadKey, match=rf"coordinator.toml: {key} applies to mode = 'sync', not 'async': a buffer "
                                        rf"takes async.buffer_size"):
        load_coordinator_config(_write(tmp_path, text.format("async")))
    assert getattr(load_coordinator_config(_write(tmp_path, f"{key} = {value}\n")), key) == value


def test_the_keys_async_mode_still_reads_load(tmp_path):
    """over_selection sizes the service's inbound chunk budget in async mode too (service.coordinator_link),
    round_deadline_s is each task's deadline, task_resend_s and the paces steer its devices, and the
    loop's abandon backoff spaces begin_round after a buffer fails to open."""
    text = ('mode = "async"\nover_selection = 1.5\nround_deadline_s = 60\ntask_resend_s = 5\npace_idle_s = 30\n'
            'abandon_backoff_s = 2\n[async]\nbuffer_size = 2\n')
    cfg = load_coordinator_config(_write(tmp_path, text))
    assert (cfg.over_selection, cfg.round_deadline_s, cfg.abandon_backoff_s) == (1.5, 60, 2)


def test_simulate_guard_fraction_makes_a_files_robust_screen_read(tmp_path):
    import argparse

    from fedge.tools.simulate.cli import add_arguments, build_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    path = _write(tmp_path, "[robust.screen]\nmin_keep = 0.6\n")
    args = parser.parse_args(["--config", str(path), "--guard-fraction", "0.1", "--rounds", "1"])
    assert build_config(args, str(tmp_path / "out")).coordinator.robust.screen.min_keep == 0.6
    with pytest.raises(UnreadKey, match="robust.screen.min_keep: .*guard_set is not set"):
        build_config(parser.parse_args(["--config", str(path), "--rounds", "1"]), str(tmp_path / "out"))
