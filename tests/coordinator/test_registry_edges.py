"""The registry's rules (coordinator/registry.py), against a plain recount and the store as
written: the eligible count after any sequence of check-ins, a changed example count written
through, last_seen moved into this process's clock at a restore, and a parked device that
stays parked across its own last will."""

from __future__ import annotations

import numpy as np

from fedge.coordinator.memory_store import MemoryStore
from fedge.coordinator.registry import Registry
from fedge.coordinator.stored import StoredDevice


def test_the_eligible_count_is_the_recount_after_any_check_ins():
    rng = np.random.default_rng(3)
    reg = Registry(MemoryStore())
    for step in range(300):
        device = f"d{rng.integers(6)}"
        reg.register(device, bool(rng.integers(2)), "", int(rng.integers(1, 4)), float(step), 1000.0 + step)
        assert reg.eligible == sum(d.eligible for d in reg.values())


def test_a_changed_example_count_is_written_to_the_store_and_restored():
    store = MemoryStore()
    reg = Registry(store)
    reg.register("a", True, "", 5, 0.0, 1000.0)
    reg.register("a", True, "", 9, 1.0, 1001.0)  # same eligibility and reason, more data
    assert store.devices["a"].num_examples == 9
    again = Registry(store)
    again.restore(0.0, 1002.0)
    assert again["a"].num_examples == 9


def test_restore_moves_last_seen_into_this_clock_by_its_wall_age():
    store = MemoryStore()
    store.save_device(StoredDevice("old", 1000.0, True, "", 3))
    store.save_device(StoredDevice("ahead", 1100.0, True, "", 3))  # written by a clock ahead of ours
    reg = Registry(store)
    reg.restore(now=50.0, wall=1030.0)
    for device in ("old", "ahead"):  # the rule as written: now - max(0, wall age)
        assert reg[device].last_seen == 50.0 - max(0.0, 1030.0 - store.devices[device].last_seen_wall)
    assert (reg["old"].last_seen, reg["ahead"].last_seen) == (20.0, 50.0)


def test_a_parked_device_stays_parked_across_its_last_will_until_it_says_something_new():
    reg = Registry(MemoryStore())
    reg.register("a", True, "", 5, 0.0, 1000.0, checkin="F")
    reg.park("a", "bad_dataset")
    reg.register("a", False, "offline", 5, 1.0, 1001.0)  # its last will (Status offline): no check-in
    reg.register("a", True, "", 5, 2.0, 1002.0, checkin="F")  # back, saying what it said before
    assert reg["a"].parked == "bad_dataset" and reg.eligible_devices() == []
    reg.register("a", True, "", 5, 3.0, 1003.0, checkin="G")  # something new
    assert reg["a"].parked == "" and reg.eligible_devices() == ["a"]
