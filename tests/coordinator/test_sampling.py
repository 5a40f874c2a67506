"""Device sampling: reproducible from (seed, round), distinct, and sized with over-selection."""

from __future__ import annotations

import pytest

from fedge.coordinator.sampling import sample_devices, selection_size

FLEET = [f"dev-{i:03d}" for i in range(100)]


def test_same_seed_and_round_give_the_same_draw():
    a = sample_devices(FLEET, 13, seed=42, round_id=5)
    b = sample_devices(list(reversed(FLEET)), 13, seed=42, round_id=5)  # candidate order is irrelevant
    assert a == b


def test_draw_changes_across_rounds_and_seeds():
    draws = {tuple(sample_devices(FLEET, 10, seed=1, round_id=r)) for r in range(1, 21)}
    assert len(draws) == 20
    assert sample_devices(FLEET, 10, seed=1, round_id=3) != sample_devices(FLEET, 10, seed=2, round_id=3)


@pytest.mark.parametrize("count", [1, 13, 99])
def test_draw_is_distinct_members_of_the_fleet(count):
    got = sample_devices(FLEET, count, seed=0, round_id=1)
    assert len(got) == count
    assert len(set(got)) == count
    assert set(got) <= set(FLEET)


def test_asking_for_everyone_or_more_gives_everyone():
    assert sorted(sample_devices(FLEET[:7], 7, seed=0, round_id=1)) == sorted(FLEET[:7])
    assert sorted(sample_devices(FLEET[:7], 50, seed=0, round_id=1)) == sorted(FLEET[:7])


def test_draw_is_roughly_uniform():
    hits = dict.fromkeys(FLEET[:20], 0)
    for r in range(2000):
        for d in sample_devices(FLEET[:20], 5, seed=9, round_id=r):
            hits[d] += 1
    # Each device is expected 2000 * 5/20 = 500 times; sd ~ 19.
    assert all(400 < n < 600 for n in hits.values()), hits


@pytest.mark.parametrize(
    "wanted, over, available, expected",
    [
        (10, 1.3, 100, 13),  # 30% more
        (10, 1.3, 12, 12),  # capped by available
        (10, 1.3, 5, 5),
        (10, 1.0, 100, 10),
        (3, 1.1, 100, 4),  # ceil(3.3)
        (1, 1.3, 100, 2),  # ceil(1.3)
        (20, 1.5, 100, 30),
        (7, 2.0, 100, 14),
    ],
)
def test_selection_size(wanted, over, available, expected):
    assert selection_size(wanted, over, available) == expected
