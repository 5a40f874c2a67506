"""A config file that turns on privacy or secure aggregation and leaves out `aggregator` and
`weighting` gets the values those modes need ("mean", "equal"; config.IMPLIED), not the defaults
they refuse (norm_bound, examples), and the service says so in one line at start; a value the
file writes that they refuse is still refused by name. Once such a file, the README's minimum,
was refused for an aggregator it never set."""

from __future__ import annotations

import logging

import pytest

from fedge.coordinator.config import CoordinatorConfig, load_coordinator_config
from fedge.coordinator.secagg.config import SecureAggregationConflict
from fedge.coordinator.service import say_implied
from fedge.edge_runtime.kernel.errors import ConfigError
from tests.coordinator.fleet import make_fleet
from tests.coordinator.test_dp_rounds import _round
from tests.tiny_model import build_tiny_model

# z given (no calibration at load); ε wide enough for a round of 4 devices out of 4
PRIVACY = "[coordinator.privacy]\nenabled = true\nnoise_multiplier = 1.0\nclip_norm = 0.05\ntarget_epsilon = 50.0\n"
SECURE = "[coordinator.compression]\nclip_norm = 1.0\n[coordinator.secure_aggregation]\nenabled = true\n"


def _load(tmp_path, text: str) -> CoordinatorConfig:
    (tmp_path / "c.toml").write_text(text)
    return load_coordinator_config(tmp_path / "c.toml")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def test_a_file_with_only_the_privacy_table_loads_and_a_dp_round_commits(model, tmp_path):
    cfg = _load(tmp_path, PRIVACY)
    assert (cfg.aggregator, cfg.weighting) == ("mean", "equal")
    # the fleet runs what the file loaded to, not make_fleet's own aggregator
    fleet = make_fleet(model, tmp_path, sizes=(30, 40, 25, 35), aggregator=cfg.aggregator, weighting=cfg.weighting,
                       privacy=cfg.privacy)
    assert fleet.coordinator.begin_round()
    record = _round(fleet)
    assert record.committed and record.reports == 4
    assert len(fleet.coordinator.store.privacy_ledger()) == 1


def test_secure_aggregation_without_an_aggregator_loads_with_the_mean(tmp_path):
    cfg = _load(tmp_path, SECURE)
    assert (cfg.aggregator, cfg.weighting) == ("mean", "equal") and cfg.secure_aggregation.enabled
    assert [note.split(" ", 1)[0] for note in cfg.implied] == ["aggregator", "weighting"]
    assert "masked sum" in cfg.implied[0] and "privacy" not in cfg.implied[0]


@pytest.mark.parametrize("written,error", [
    ('aggregator = "median"', ConfigError), ('weighting = "examples"', ConfigError),
    ('aggregator = "norm_bound"', ConfigError)])
def test_a_value_the_file_writes_is_still_refused_naming_its_key(tmp_path, written, error):
    key = written.split(" ", 1)[0]
    # located on the key the file wrote (not on [coordinator.privacy]), and says what privacy needs
    with pytest.raises(error, match=rf"^c\.toml: coordinator\.{key} '\w+' with privacy on: .*{key} = '(mean|equal)'"):
        _load(tmp_path, f"[coordinator]\n{written}\n{PRIVACY}")


def test_secure_aggregation_refuses_a_written_median_by_its_reason(tmp_path):
    with pytest.raises(SecureAggregationConflict, match="aggregator 'median'") as caught:
        _load(tmp_path, f"[coordinator]\naggregator = \"median\"\n{SECURE}")
    assert caught.value.reason == "secagg_robust_aggregator"


def test_with_both_off_the_defaults_stay(tmp_path):
    cfg = _load(tmp_path, "[coordinator]\nclients_per_round = 4\n[coordinator.privacy]\nenabled = false\n")
    assert (cfg.aggregator, cfg.weighting, cfg.implied) == ("norm_bound", "examples", ())
    assert cfg == CoordinatorConfig(clients_per_round=4)


def test_the_service_says_once_what_it_chose_and_why(tmp_path, caplog):
    written = _load(tmp_path, f'[coordinator]\naggregator = "mean"\n{PRIVACY}')
    assert written.implied == ("weighting = 'equal' (privacy: a device weighted by its claimed examples could move "
                               "the mean by more than S / W, beyond what the noise covers)",)
    with caplog.at_level(logging.INFO, logger="fedge.coordinator"):
        say_implied(_load(tmp_path, PRIVACY))
        say_implied(CoordinatorConfig())  # nothing chosen: nothing said
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1, lines
    assert "sets no aggregator or weighting" in lines[0] and "aggregator = 'mean' (privacy: " in lines[0]
    assert "sensitivity is not S" in lines[0] and "weighting = 'equal'" in lines[0]


BOTH = ("[coordinator.secure_aggregation]\nenabled = true\nclip_range = 0.05\n[coordinator.privacy]\nenabled = true\n"
        "noise_multiplier = 2.0\nclip_norm = 0.05\ntarget_epsilon = 50.0\ndelta = 1e-5\n")


def test_privacy_under_secure_aggregation_without_a_mechanism_is_distributed_and_a_round_commits(model, tmp_path):
    from tests.coordinator.test_dp_distributed import _run_round

    cfg = _load(tmp_path, BOTH)
    assert (cfg.aggregator, cfg.weighting, cfg.privacy.mechanism) == ("mean", "equal", "distributed")
    assert cfg.implied[2].startswith("privacy.mechanism = 'distributed' (secure aggregation: central DP would")
    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16, 24, 18), min_reports=3, aggregator=cfg.aggregator,
                       weighting=cfg.weighting, secure_aggregation=cfg.secure_aggregation, privacy=cfg.privacy)
    record = _run_round(fleet, cfg.secure_aggregation.stage_deadline_s)
    assert record.committed, record.why
    (charge,) = fleet.coordinator.store.privacy_ledger()
    assert charge["mechanism"] == "distributed"


def test_a_written_central_mechanism_under_secure_aggregation_is_still_refused(tmp_path):
    with pytest.raises(SecureAggregationConflict) as caught:
        _load(tmp_path, BOTH.replace("enabled = true\nnoise", 'enabled = true\nmechanism = "central"\nnoise'))
    assert caught.value.reason == "secagg_privacy"


def _walkthrough_file_with_the_readme_block(tmp_path, heading: str, edit=lambda text: text):
    """The walkthrough's coordinator file (with its [broker] credentials), changed by `edit`, and the
    first TOML block of the README's section `heading` appended as written: what an operator does."""
    from pathlib import Path

    from fedge.coordinator.service import load_service_config

    repo = Path(__file__).resolve().parents[2]
    readme = (repo / "README.md").read_text()
    section = readme[readme.index(heading):]
    start = section.index("```toml") + len("```toml")
    creds = '[broker]\nurl = "mqtt://127.0.0.1:1883"\nusername = "coordinator"\npassword = "secret"\n'
    (tmp_path / "coordinator.toml").write_text(edit((repo / "examples/ops/coordinator.toml").read_text()) + creds
                                               + section[start:section.index("```", start)])
    return load_service_config(tmp_path / "coordinator.toml").coordinator


def test_the_readme_privacy_block_appends_to_the_walkthrough_coordinator_file(tmp_path):
    """The README's central DP block, appended as written to the walkthrough's coordinator file
    (which has its own [coordinator]), loads: it once began with a [coordinator] table of its own,
    a duplicate table in TOML."""
    cfg = _walkthrough_file_with_the_readme_block(tmp_path, "### User-level differential privacy (central DP-FedAvg)")
    assert cfg.privacy.enabled and cfg.privacy.target_epsilon == 8.0
    assert (cfg.aggregator, cfg.weighting, cfg.clients_per_round) == ("mean", "equal", 2)  # the walkthrough's 2


def _secure_walkthrough(text: str) -> str:
    """The two [coordinator] changes the README's Secure aggregation section asks of the walkthrough's file."""
    assert "model_part_bytes = 262144" in text
    return text.replace("model_part_bytes = 262144", "model_part_bytes = 0\nmin_reports = 2")


def test_the_readme_secure_aggregation_block_appends_to_the_walkthrough_coordinator_file(tmp_path):
    """Likewise the Secure aggregation block (it too began with its own [coordinator] table), with
    the changes the sentence before it names; without them the file is refused, which is why it names them."""
    heading = "### Secure aggregation"
    cfg = _walkthrough_file_with_the_readme_block(tmp_path, heading, _secure_walkthrough)
    assert cfg.secure_aggregation.enabled and cfg.secure_aggregation.bits == 16 and cfg.compression.clip_norm == 4.0
    assert (cfg.aggregator, cfg.weighting, cfg.model_part_bytes, cfg.quorum) == ("mean", "equal", 0, 2)
    with pytest.raises(SecureAggregationConflict) as caught:
        _walkthrough_file_with_the_readme_block(tmp_path, heading)
    assert caught.value.reason in {"secagg_model_parts", "secagg_quorum"}
    with pytest.raises(SecureAggregationConflict, match="min_reports") as caught:
        _walkthrough_file_with_the_readme_block(tmp_path, heading, lambda text: text.replace(
            "model_part_bytes = 262144", "model_part_bytes = 0"))
    assert caught.value.reason == "secagg_quorum"
