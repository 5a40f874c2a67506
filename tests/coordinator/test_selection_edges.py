"""Who is asked and when, at the documented edges (mutation4-rounds audit): a Poisson draw exactly
at its rate, the permanent decline reasons one by one, each re-check time of pace.RECHECK_S
uncapped, the fleet and centered-clipping bounds as the numbers the docs give, and a check-in
bucket that cannot hold one check-in, and the sidelining of a secure round's offender in the
numbers sidelined.py gives (10 minutes, doubling, at most a day)."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator import pace
from fedge.coordinator.backoff import is_permanent
from fedge.coordinator.checkin_limit import CheckInLimit
from fedge.coordinator.config import load_coordinator_config
from fedge.coordinator.sampling import poisson_sample
from fedge.coordinator.secagg.round_state import BAD_SIGNATURE
from fedge.coordinator.secagg.shell import SecAggRejected
from fedge.coordinator.sidelined import Sidelined
from fedge.edge_runtime.kernel.errors import ConfigError
from tests.coordinator.hostile import named_reasons

FLEET = [f"dev{i:02d}" for i in range(12)]


def _draws(seed: int, round_id: int) -> np.ndarray:
    """The documented draw: one uniform per candidate in sorted order, from (seed, round, 0x9015, 0)."""
    return np.random.default_rng([seed, round_id, 0x9015, 0]).random(len(FLEET))


@pytest.mark.parametrize("k", [0, 5, 11])
def test_a_candidate_whose_draw_equals_the_rate_is_left_out(k):
    # P(kept) = rate exactly only with u < rate: u == rate is left out. A plain loop is the oracle.
    u = _draws(3, 8)
    rate = float(u[k])
    want = [d for d, x in zip(sorted(FLEET), u) if x < rate]
    got = poisson_sample(list(reversed(FLEET)), rate, 3, 8)
    assert got == want and sorted(FLEET)[k] not in got


PERMANENT = {"bad_dataset", "backend_unavailable", "unsupported_by_backend", "bad_state"}  # backoff.py's list


def test_exactly_the_documented_declines_park_a_device():
    reasons = named_reasons() | set(pace.RECHECK_S) | {"uplink_backlog", "aborted:time_limit"}
    assert PERMANENT <= reasons  # each is a reason some error declares
    assert {r for r in reasons if is_permanent(r)} == PERMANENT


RECHECK = {"cpu_busy": 30.0, "low_memory": 60.0, "too_hot": 120.0, "not_charging": 120.0,
           "metered_link": 300.0, "link_not_allowed": 300.0, "battery_low": 600.0}  # pace.py's comment


@pytest.mark.parametrize("cause", sorted(RECHECK))
@pytest.mark.parametrize("reason", [pace.DECLINED, pace.INELIGIBLE])
def test_each_reason_rechecks_at_its_own_time_when_the_backoff_is_longer(reason, cause):
    knobs = dict(idle_s=30.0, declined_s=3600.0, jitter_s=0.0, max_s=7200.0, jitter=0.0)
    assert pace.retry_after(reason, 0.0, device_reason=cause, **knobs) == RECHECK[cause]
    assert pace.retry_after(reason, 0.0, device_reason=f"aborted:{cause}", **knobs) == RECHECK[cause]


@pytest.mark.parametrize(("table", "key", "largest"), [
    ("coordinator", "clients_per_round", 1_000_000),  # limits.py: "a million devices in one round"
    ("coordinator.robust", "cc_iterations", 100),
])
def test_the_count_bounds_are_the_documented_numbers(tmp_path, table, key, largest):
    def load(value):
        path = tmp_path / "c.toml"
        # cc_iterations is read by centered clipping only (coordinator/unread_keys.py refuses it elsewhere)
        head = "[coordinator]\n" + ("" if table == "coordinator" else f'aggregator = "centered_clipping"\n[{table}]\n')
        path.write_text(f"{head}{key} = {value}\n")
        return load_coordinator_config(path)

    load(largest)
    with pytest.raises(ConfigError, match=key):
        load(largest + 1)


def test_a_check_in_bucket_must_hold_at_least_one():
    with pytest.raises(ValueError, match="burst"):
        CheckInLimit(0, 1.0)
    limit = CheckInLimit(1, 1.0)
    assert limit.refusal("d", 0.0) is None and limit.refusal("d", 0.5) is not None


def test_an_offender_is_left_out_ten_minutes_then_twenty_and_at_most_a_day():
    s = Sidelined()
    s.offence("d", 1000.0)
    assert s.keep(["d", "e"], 1599.0) == ["e"] and s.keep(["d", "e"], 1600.0) == ["d", "e"]  # 600 s
    s.offence("d", 2000.0)
    assert "d" in s.active(3199.0) and "d" not in s.active(3200.0)  # 1,200 s
    for _ in range(20):
        s.offence("d", 0.0)
    assert s.until["d"] == 86_400.0


@pytest.mark.parametrize("reason", ["secagg_bad_key", "secagg_model_mismatch", "secagg_no_identity", "duplicate",
                                    "stale_round"])
def test_only_a_bad_signature_among_refused_replies_sidelines(reason):
    """A bad signature is the device's own doing, every round; a bad key or another model may be
    one broken build or a round change, and the unlisted are never selected (shell.selectable)."""
    s = Sidelined()
    other = SecAggRejected(reason, "x")
    assert s.after_refusal(other, "d", 0.0) is other and not s.active(0.0)
    signed = s.after_refusal(SecAggRejected(BAD_SIGNATURE, "x"), "d", 0.0)
    assert signed.reason == BAD_SIGNATURE and s.active(599.0) == {"d"} and not s.active(600.0)
    assert "d" in str(signed) and "600 s" in str(signed)


def test_a_pardon_lets_in_only_devices_whose_latest_offence_had_its_reason():
    """A directory reload re-keys devices (loop._reload_if_asked): one left out for a bad signature
    is let in; one left out for wrong shares is not (a new key says nothing about its shares), and
    a pardoned device's next offence doubles on from its count."""
    s = Sidelined()
    s.after_refusal(SecAggRejected(BAD_SIGNATURE, "x"), "signer", 0.0)
    s.offence("dealer", 0.0)  # wrong shares
    s.after_refusal(SecAggRejected(BAD_SIGNATURE, "x"), "served", -600.0)  # its time is up at 0
    assert s.pardon({"signer", "dealer", "stranger", "served"}, BAD_SIGNATURE, 1.0) == ["signer"]
    assert s.active(1.0) == {"dealer"}
    assert "1200 s" in str(s.after_refusal(SecAggRejected(BAD_SIGNATURE, "x"), "signer", 2.0))
