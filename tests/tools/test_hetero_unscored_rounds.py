"""A round that no device scored (simulate/scoring.py reports its personalized mean as null, since
3bb0621) in the curves the adapter-vs-full comparison reads: bytes_to_reach skips it as
rounds_to_target and final_accuracy do, where `None >= level` raised TypeError and ended the
benchmark's assembly after the whole grid had run."""

from __future__ import annotations

import pytest

from fedge.tools.bench import hetero_metrics as m


def test_bytes_to_reach_skips_an_unscored_round_but_counts_its_bytes():
    curve, sent = [0.2, None, 0.7, 0.9], [100, 100, 100, 100]
    total = 0
    for acc, up in zip(curve, sent):  # the docstring as a plain loop: bytes up to the first round >= level
        total += up
        if acc is not None and acc >= 0.7:
            break
    assert m.bytes_to_reach(curve, sent, 0.7) == total == 300
    assert m.bytes_to_reach([None, None], [5, 5], 0.1) is None


def test_upload_comparison_reads_curves_with_an_unscored_round():
    adapters = {"personalized_accuracy_curve": [0.5, None, 0.9, 0.9, 0.9], "bytes_up_curve": [100] * 5,
                "bytes_up_per_round": 100.0, "model": {"shared_params": 10}}
    full = {"personalized_accuracy_curve": [None, 0.9, 0.95, 0.95, 0.95], "bytes_up_curve": [800] * 5,
            "bytes_up_per_round": 800.0, "model": {"shared_params": 80}}
    c = m.upload_comparison(adapters, full)
    assert c["equal_accuracy_level"] == pytest.approx(0.9)
    assert c["full"]["bytes_to_level"] == 1600 and c["adapters"]["bytes_to_level"] == 300
    assert c["ratio_at_equal_accuracy"] == pytest.approx(1600 / 300)


def _pers(algorithm, mean, worst, global_acc=0.5):
    return {"dataset": "d", "partition": "dirichlet-0.1", "algorithm": algorithm, "personalization": True,
            "personalized_accuracy_mean": mean, "personalized_accuracy_min": worst, "final_global_accuracy": global_acc}


def test_the_personalization_target_passes_over_a_run_whose_final_rounds_nobody_scored():
    """final_accuracy is None when every round of the final window went unscored; target (2)
    compared that None with a float (TypeError) after the whole grid had run."""
    base = {"dirichlet-0.1": {"local_only": {"accuracy_mean": 0.5}}}
    unscored = _pers("fedprox", None, None)
    t = m.target_personalized([unscored, _pers("fedavg", 0.6, 0.9, global_acc=None)], [], base, "d")
    assert t["candidate"] == "fedavg, adapters" and t["met"] is True and "its own global model -" in t["detail"]
    alone = m.target_personalized([unscored], [], base, "d")
    assert alone["met"] is None and alone["detail"].startswith("not measured")


def test_the_tail_target_reads_p10_from_scored_rounds_and_prints_a_dash_for_an_unscored_mean():
    """heterogeneity._finals reads p10 from the scored rounds alone, so a run whose final window
    nobody scored has a p10 but no mean or worst device: the detail prints '-' for them."""
    unscored = dict(_pers("fedprox", None, None), personalized_accuracy_p10=0.9)
    scored = dict(_pers("fedavg", 0.95, 0.8), personalized_accuracy_p10=0.9)
    t = m.target_tail([unscored, scored], "d")
    assert t["best"] == "fedavg" and t["met"] is True  # a tie on p10 goes to the scored mean
    alone = m.target_tail([unscored], "d")
    assert alone["met"] is True and alone["detail"].endswith("worst device -, mean -")


def test_upload_comparison_of_a_run_whose_final_rounds_nobody_scored_has_no_level():
    """min(None, 0.9) raised TypeError; with no final accuracy there is no level both runs reach."""
    adapters = {"personalized_accuracy_curve": [0.5, 0.9, None, None, None], "bytes_up_curve": [100] * 5,
                "bytes_up_per_round": 100.0, "model": {"shared_params": 10}}
    full = {"personalized_accuracy_curve": [0.9] * 5, "bytes_up_curve": [800] * 5,
            "bytes_up_per_round": 800.0, "model": {"shared_params": 80}}
    c = m.upload_comparison(adapters, full)
    assert c["equal_accuracy_level"] is None and c["ratio_at_equal_accuracy"] is None
    assert c["adapters"]["bytes_to_level"] is None and c["full"]["bytes_to_level"] is None
    assert c["ratio_per_round"] == 8.0
    t = m.target_adapters(c)
    assert t["met"] is False and "personalized mean -: n/a" in t["detail"]
