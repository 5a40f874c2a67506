import math

import pytest

from fedge.edge_runtime.kernel.secagg.graph import (
    _tail_below,
    choose_parameters,
    neighbour_graph,
    packing_for,
    threshold_floor,
)


@pytest.mark.parametrize("n,k", [(50, 10), (101, 20), (30, 2), (7, 6), (7, 10)])
def test_the_graph_is_k_regular_symmetric_and_the_same_for_every_party(n, k):
    devices = [f"d{i:03d}" for i in range(n)]
    g = neighbour_graph(devices, k, seed=5)
    degree = min(k, n - 1)
    assert set(g) == set(devices)
    assert all(len(nb) == degree and d not in nb for d, nb in g.items())
    assert all(d in g[p] for d, nb in g.items() for p in nb)
    assert g == neighbour_graph(list(reversed(devices)), k, seed=5)
    if k < n - 1:
        assert g != neighbour_graph(devices, k, seed=6)


def test_odd_k_below_complete_is_refused():
    with pytest.raises(ValueError):
        neighbour_graph([str(i) for i in range(10)], 3, 0)


def test_documented_parameters():
    got = {n: (p.neighbours, p.threshold, p.packing) for n in (20, 100, 205, 206, 500, 1000, 10_000)
           for p in [choose_parameters(n)]}
    assert got == {20: (19, 10, 1), 100: (99, 50, 1), 205: (204, 103, 1), 206: (204, 104, 2), 500: (214, 109, 2),
                   1000: (222, 113, 2), 10_000: (248, 126, 2)}
    assert (choose_parameters(1000, corrupt=0.01).neighbours, choose_parameters(1000, corrupt=0.01).threshold) \
        == (334, 182)


@pytest.mark.parametrize("n", [500, 1000, 5000])
def test_the_parameters_meet_their_bounds_and_grow_with_log_n(n):
    p = choose_parameters(n)
    k, t = p.neighbours, p.threshold
    assert p.packing == packing_for(k, n) == 2  # sparse: packed shares, private only below t - 1 of them
    # of one kind the coordinator holds at most c + floor((k - c) / 2); packed shares reveal nothing below t - 1
    assert p.corrupt_bound + (k - p.corrupt_bound) // 2 <= t - 2 and t >= threshold_floor(k, n)
    assert n * _tail_below(k, 0.7, t) <= 2.0 ** -20  # every dropped device recoverable
    assert n * 0.3 ** (k // 2) <= 2.0 ** -40  # honest survivors stay connected
    assert k < 30 * math.log2(n)  # n log n, not n^2


@pytest.mark.parametrize("n,corrupt", [(10, 0.0), (150, 0.0), (150, 0.01), (150, 0.05), (600, 0.0), (600, 0.01),
                                       (3000, 0.0)])
def test_what_the_coordinator_can_collect_of_one_kind_stays_below_what_reveals_anything(n, corrupt):
    """Rule 2 against the sharing's own privacy threshold (t - 1 plain shares reveal nothing,
    t - 2 packed ones do): the colluders' c plus the honest half of the rest, for either kind."""
    p = choose_parameters(n, corrupt=corrupt)
    k, t, c = p.neighbours, p.threshold, p.corrupt_bound
    private_below = t - p.packing  # at most this many shares reveal nothing
    assert c + (k - c) // 2 <= private_below and t <= k
    assert p.packing == packing_for(k, n) and (p.packing == 2) == (k < n - 1)
    assert t >= threshold_floor(k, n)


@pytest.mark.parametrize("cohort,neighbours,threshold,corrupt", [
    (1000, 500, 0, 0.01), (1000, 700, 0, 0.05), (1000, 20, 11, 0.0), (100, 20, 0, 0.0), (15, 20, 0, 0.0),
    (1000, 300, 151, 0.01),
])
def test_a_configured_graph_never_runs_below_rule_2_with_the_assumed_colluders(cohort, neighbours, threshold,
                                                                             corrupt):
    """SecAggConfig.graph_for with k (and t) set by hand: t is raised to rule 2 for that k, with c
    from an independent binomial tail (scipy) and one more share where the graph is sparse."""
    from scipy.stats import binom

    from fedge.coordinator.secagg.config import SecAggConfig

    k, t = SecAggConfig(enabled=True, neighbours=neighbours, threshold=threshold, corrupt=corrupt).graph_for(cohort)
    assert k == min(neighbours, cohort - 1)
    c = next(c for c in range(k + 1) if cohort * binom.sf(c, k, corrupt) <= 2.0**-40) if corrupt else 0
    plain = k == cohort - 1
    assert t >= (k + c) // 2 + (1 if plain else 2) and t >= threshold
    assert t == max(threshold, (k + c) // 2 + (1 if plain else 2))  # and raised no further than needed
