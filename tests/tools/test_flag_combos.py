"""Pairs of `fedge simulate` options where one changes nothing under the other (the combinations red
team: each pair once ran to the end and reported a setting it never used). Each is now one named line
before anything is built; the control column shows the same option taken where it applies."""

from __future__ import annotations

import pytest

from fedge.tools.cli import main

SECAGG = "[secure_aggregation]\nenabled = true\n[compression]\nclip_norm = 1.0\n"


@pytest.mark.parametrize("argv, words", [
    # adversary.malicious_delta reads the scale for sign_flip, scale and backdoor only
    (["--attack", "gaussian", "--attack-scale", "3"], ("--attack-scale applies to", "not gaussian")),
    (["--attack", "nan", "--attack-scale", "3"], ("--attack-scale applies to", "not nan")),
    # only the colluders (alie, ipm, min_max, min_sum) look at other devices' deltas
    (["--attack", "sign_flip", "--omniscient"], ("--omniscient applies to the colluding attacks", "not sign_flip")),
    (["--attack", "label_flip", "--omniscient"], ("--omniscient applies", "not label_flip")),
    # finetune's model has no personal head for the global one to seed
    (["--personalization", "finetune", "--personal-head-from-global"],
     ("--personal-head-from-global", "finetune keeps no personal head")),
    # config.effective_hyper sends momentum 0 to AdamW and to the ort-training backend
    (["--optimizer", "adamw", "--momentum", "0.5"], ("--momentum applies to SGD", "not --optimizer adamw")),
    (["--backend", "ort-training", "--momentum", "0.5"], ("--momentum applies to SGD", "not --backend ort-training")),
    # secure rounds send every coordinate in the shared field, with no error feedback
    (["--config", "{secagg}", "--quant-bits", "32"], ("--quant-bits with secure aggregation",)),
    (["--config", "{secagg}", "--topk", "1.0"], ("--topk with secure aggregation",)),
    (["--config", "{secagg}", "--no-error-feedback"], ("--no-error-feedback with secure aggregation",)),
    # FedAdagrad's v sums the squared deltas: no second-moment decay to set
    (["--strategy", "fedadagrad", "--server-beta2", "0.5"],
     ("--server-beta2 applies to --strategy fedadam or fedyogi", "not fedadagrad")),
    # a whole fp32 update leaves no residual
    (["--quant-bits", "32", "--no-error-feedback"], ("--no-error-feedback with --quant-bits 32",)),
])
def test_an_option_that_changes_nothing_beside_another_is_refused(argv, words, tmp_path, capsys):
    (tmp_path / "secagg.toml").write_text(SECAGG)
    argv = [a.format(secagg=tmp_path / "secagg.toml") for a in argv]
    out = tmp_path / "out"
    code = main(["simulate", "--dataset", "digits", "--devices", "4", "--rounds", "1", "--quiet", *argv,
                 "--json", str(out / "run.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("fedge: error: ConfigError"), err
    for word in words:
        assert word in err[0], err[0]
    assert not out.exists()  # refused before the run: nothing written


@pytest.mark.parametrize("argv", [
    ["--attack", "sign_flip", "--attack-scale", "3"],
    ["--attack", "alie", "--omniscient"],
    ["--personalization", "head", "--personal-head-from-global"],
    ["--optimizer", "sgd", "--momentum", "0.5", "--backend", "numpy"],
    ["--optimizer", "adamw", "--momentum", "0"],  # what AdamW runs with
    ["--backend", "ort-training", "--momentum", "0"],
    ["--quant-bits", "8", "--no-error-feedback"],
    ["--strategy", "fedyogi", "--server-beta2", "0.5"],
    ["--quant-bits", "32", "--topk", "0.5", "--no-error-feedback"],
])
def test_the_same_options_where_they_apply_pass_the_checks(argv):
    """The control: each option above is taken with the value it applies to (only the checks run)."""
    import argparse

    from fedge.tools.simulate.cli import COORDINATOR_FLAGS, TYPED_ONLY, add_arguments, build_config
    from fedge.tools.simulate.flag_checks import check_options_apply

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--dataset", "digits", "--devices", "4", *argv])
    typed = {n for n in (*COORDINATOR_FLAGS, *TYPED_ONLY) if getattr(args, n) is not None}
    check_options_apply(build_config(args, "out"), typed)


@pytest.mark.parametrize("attack", ["alie", "ipm", "min_max", "min_sum"])
def test_a_colluding_attack_under_secure_aggregation_is_refused_before_the_run(attack, tmp_path, capsys):
    """The colluders rewrite the Update frames they hold (conspiracy.py); a secure round publishes masked
    inputs instead, which passed through untouched: --attack min_max over 6 devices ran with the same
    accuracies and bytes as no attack at all (losses equal to 2e-7)."""
    (tmp_path / "secagg.toml").write_text(SECAGG)
    out = tmp_path / "out"
    code = main(["simulate", "--dataset", "digits", "--devices", "6", "--rounds", "1", "--quiet", "--partition", "iid",
                 "--config", str(tmp_path / "secagg.toml"), "--attack", attack, "--attackers", "0.34",
                 "--json", str(out / "run.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("fedge: error: ConfigError"), err
    assert f"--attack {attack} with secure aggregation" in err[-1], err[-1]
    assert not out.exists()


def test_non_colluding_attacks_and_colluders_without_secure_aggregation_still_fit():
    from fedge.tools.simulate.adversary import AttackSpec, check_attack_fits

    check_attack_fits(AttackSpec("sign_flip"), "memory", 4, secure=True)  # rewritten before masking (malicious.py)
    check_attack_fits(AttackSpec("min_max"), "memory", 4, secure=False)
