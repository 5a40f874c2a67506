"""`fedge bench secagg`'s figures where rounding decides: the packed-field floor is ceil(d m / 8)
bytes (d m not a multiple of 8), and a dropout fraction drops the nearest whole number of devices."""

from __future__ import annotations

import math

import pytest

from fedge.tools.bench import secagg


def test_the_floor_rounds_a_partial_byte_up():
    row = secagg.measure(4, 0.0, 8, 3)  # m = 8 + ceil(log2 4) = 10 bits: 30 bits are 4 bytes, not 3
    assert row["field_bits"] == 10 and row["floor_bytes_per_device"] == -(-3 * 10 // 8) == 4
    assert row["plain_bytes_per_device"] == 3 and row["exact"]


def test_the_dropped_devices_are_the_nearest_count(monkeypatch):
    seen = []
    real = secagg.unmask_answers

    def unmask(masked, answers, cohort, t, alive, dropped, *rest, **kw):
        seen.append(len(dropped))
        return real(masked, answers, cohort, t, alive, dropped, *rest, **kw)

    monkeypatch.setattr(secagg, "unmask_answers", unmask)
    row = secagg.measure(12, 0.3, 8, 16)  # 3.6 devices: 4 drop
    assert seen == [math.floor(0.3 * 12 + 0.5)] == [4] and row["exact"]


@pytest.mark.parametrize("seed", ["-1", str(2**32), "x"])
def test_a_seed_numpy_cannot_take_is_refused_by_its_flag(tmp_path, capsys, seed):
    """--seed -1 was refused as '--devices 10 --dropouts 0.0 --bits 8: expected non-negative
    integer' (numpy's error, blamed on the case it first ran); now argparse names --seed."""
    from fedge.tools.bench.secagg import main

    with pytest.raises(SystemExit) as stop:
        main(["--json", str(tmp_path / "s.json"), "--devices", "4", "--dimension", "10", "--seed", seed])
    assert stop.value.code == 2 and "argument --seed" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()
