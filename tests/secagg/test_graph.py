import math

import pytest

from fedge.edge_runtime.kernel.secagg.graph import _tail_below, choose_parameters, neighbour_graph


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
    got = {n: (p.neighbours, p.threshold) for n in (20, 100, 500, 1000, 10_000) for p in [choose_parameters(n)]}
    assert got == {20: (19, 10), 100: (99, 50), 500: (204, 103), 1000: (212, 107), 10_000: (238, 120)}
    assert (choose_parameters(1000, corrupt=0.01).neighbours, choose_parameters(1000, corrupt=0.01).threshold) \
        == (318, 172)


@pytest.mark.parametrize("n", [500, 1000, 5000])
def test_the_parameters_meet_their_bounds_and_grow_with_log_n(n):
    p = choose_parameters(n)
    k, t = p.neighbours, p.threshold
    assert 2 * t > k + p.corrupt_bound and t > p.corrupt_bound  # never both kinds of share from honest ones
    assert n * _tail_below(k, 0.7, t) <= 2.0 ** -20  # every dropped device recoverable
    assert n * 0.3 ** (k // 2) <= 2.0 ** -40  # honest survivors stay connected
    assert k < 30 * math.log2(n)  # n log n, not n^2
