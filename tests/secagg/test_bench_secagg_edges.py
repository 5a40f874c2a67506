"""`fedge bench secagg`'s figures where rounding decides: the packed-field floor is ceil(d m / 8)
bytes (d m not a multiple of 8), and a dropout fraction drops the nearest whole number of devices."""

from __future__ import annotations

import math

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
