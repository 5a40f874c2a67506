"""Partitioners: exact coverage, reproducibility, and that each scheme skews what it claims to."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.tools.partition import (
    SCHEMES,
    dirichlet_label_skew,
    dirichlet_per_client,
    iid,
    partition,
    quantity_skew,
    shards,
)

# 10 balanced classes in shuffled order, like a benchmark's label vector.
Y = np.random.default_rng(123).permutation(np.repeat(np.arange(10), 200))


def _dominant_fraction(parts: list[np.ndarray], y: np.ndarray) -> float:
    """Mean over clients of the share held by the client's most common label."""
    return float(np.mean([np.bincount(y[p]).max() / len(p) for p in parts]))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("num_clients", [1, 7, 20])
def test_disjoint_and_covering(scheme: str, num_clients: int) -> None:
    parts = partition(scheme, Y, num_clients, np.random.default_rng(0))
    assert len(parts) == num_clients
    assert all(p.dtype == np.int64 for p in parts)
    merged = np.concatenate(parts)
    assert len(merged) == len(Y)  # no index twice
    np.testing.assert_array_equal(np.sort(merged), np.arange(len(Y)))  # every index once


@pytest.mark.parametrize("scheme", SCHEMES)
def test_seeded_reproducibility(scheme: str) -> None:
    a = partition(scheme, Y, 10, np.random.default_rng(7))
    b = partition(scheme, Y, 10, np.random.default_rng(7))
    c = partition(scheme, Y, 10, np.random.default_rng(8))
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))


def test_dirichlet_small_alpha_is_skewed_and_iid_is_not() -> None:
    rng = np.random.default_rng(0)
    assert _dominant_fraction(dirichlet_label_skew(Y, 10, 0.1, rng), Y) > 0.5
    assert _dominant_fraction(iid(len(Y), 10, rng), Y) < 0.3
    # Large alpha approaches IID.
    assert _dominant_fraction(dirichlet_label_skew(Y, 10, 100.0, rng), Y) < 0.3


def test_dirichlet_min_size_honoured_and_auto_reduced() -> None:
    for seed in range(5):
        parts = dirichlet_label_skew(Y, 10, 0.3, np.random.default_rng(seed), min_size=20)
        assert min(len(p) for p in parts) >= 20
    # A request above a tenth of the average share is capped there: 2000 // (10 * 20) = 10.
    parts = dirichlet_label_skew(Y, 20, 0.3, np.random.default_rng(0), min_size=500)
    assert min(len(p) for p in parts) >= 10
    # ... but never below 2: 2000 // (10 * 100) = 2.
    parts = dirichlet_label_skew(Y, 100, 0.5, np.random.default_rng(0), min_size=10)
    assert min(len(p) for p in parts) >= 2


def test_dirichlet_impossible_request_says_what_to_change() -> None:
    y = np.repeat([0, 1], 10)
    # 20 examples cannot give 15 clients 2 each, whatever the draw: one line that says what fits.
    with pytest.raises(ValueError) as err:
        dirichlet_label_skew(y, 15, 0.01, np.random.default_rng(0), min_size=2)
    assert str(err.value) == "dirichlet partition: 20 examples cannot give each of 15 clients 2; use at most 10 clients"
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_label_skew(y, 2, 0.0, np.random.default_rng(0))


@pytest.mark.parametrize("clients", [500, 1000])
def test_dirichlet_many_small_clients_all_get_their_share(clients: int, caplog) -> None:
    # Before: "no draw in 1000 tries gave every one of 500 clients >= 2 examples". The per-class
    # draw cannot fit these; the per-client draw gives every client n // clients or one more.
    parts = dirichlet_label_skew(Y, clients, 0.1, np.random.default_rng(0))
    assert "drawing each client's label mix" in caplog.text
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(Y)))
    assert {len(p) for p in parts} <= {len(Y) // clients, len(Y) // clients + 1}
    # alpha 0.1 still skews labels: well above an iid split into the same sizes
    assert _dominant_fraction(parts, Y) > _dominant_fraction(iid(len(Y), clients, np.random.default_rng(0)), Y) + 0.15


def test_dirichlet_per_client_follows_each_clients_own_draw() -> None:
    # Oracle: the label mixes q_k drawn independently here from the same seed (the function's
    # first draw is q ~ Dir(alpha * 1_C), one row per client). Each client's label counts are a
    # multinomial sample of its own q_k (until the classes run short, at the end), so they sit
    # much closer to their own q_k than to another client's.
    clients, alpha = 100, 0.5
    parts = dirichlet_per_client(Y, clients, alpha, np.random.default_rng(5))
    q = np.random.default_rng(5).dirichlet(np.full(10, alpha), size=clients)
    mix = np.array([np.bincount(Y[p], minlength=10) / len(p) for p in parts])
    own = 0.5 * np.abs(mix - q).sum(axis=1)  # total variation, per client
    other = 0.5 * np.abs(mix - np.roll(q, 1, axis=0)).sum(axis=1)
    assert np.median(own) < 0.25 and np.median(other) > 0.5, (np.median(own), np.median(other))
    assert {len(p) for p in parts} == {20}


def test_dirichlet_per_client_mixes_are_dirichlet() -> None:
    # Across many clients with ample data, the mean share of the client's top label matches the
    # expected largest coordinate of Dir(alpha * 1_10) (estimated by direct draws), for small and large alpha.
    y = np.random.default_rng(1).permutation(np.repeat(np.arange(10), 20_000))
    for alpha in (0.1, 1.0, 10.0):
        parts = dirichlet_per_client(y, 400, alpha, np.random.default_rng(2))
        top = _dominant_fraction(parts, y)
        expected = np.random.default_rng(3).dirichlet(np.full(10, alpha), size=20_000).max(axis=1).mean()
        assert abs(top - expected) < 0.05, (alpha, top, expected)


@pytest.mark.parametrize("num_clients,per", [(5, 2), (10, 2), (10, 3), (50, 2), (100, 1), (20, 5), (40, 10)])
def test_shards_give_exactly_classes_per_client_labels(num_clients: int, per: int) -> None:
    parts = shards(Y, num_clients, per, np.random.default_rng(num_clients + per))
    assert [len(np.unique(Y[p])) for p in parts] == [per] * num_clients
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= per  # shards of one class differ by at most one example


# digits' class sizes (174..183 of 1,797): not quite balanced, as real label vectors are.
DIGITS_LIKE = np.random.default_rng(7).permutation(
    np.repeat(np.arange(10), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]))


@pytest.mark.parametrize("num_clients,per", [(20, 10), (50, 10), (30, 9), (174, 10), (400, 4)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shards_give_exactly_the_labels_on_unequal_classes(num_clients: int, per: int, seed: int) -> None:
    # A class cut into more shards than clients put two on one client: at 20 x 10, digits'
    # largest class got 21 shards and a client held 9 labels (8 at 50 x 10).
    parts = shards(DIGITS_LIKE, num_clients, per, np.random.default_rng(seed))
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(DIGITS_LIKE)))
    assert [len(np.unique(DIGITS_LIKE[p])) for p in parts] == [per] * num_clients


def test_shards_refuse_a_class_smaller_than_the_clients_it_must_reach() -> None:
    # 30 clients x 2 labels over 2 classes: each class must reach all 30, and one has 10
    # examples. This once returned clients with 1 label (empty shards), silently.
    y = np.repeat([0, 1], [10, 200])
    with pytest.raises(ValueError, match="smallest class: 10 examples"):
        shards(y, 30, 2, np.random.default_rng(0))


def test_shards_fewer_shards_than_classes_still_cover() -> None:
    parts = shards(Y, 2, 2, np.random.default_rng(0))  # 4 shards over 10 labels: shards mix labels
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(Y)))


def test_shards_reject_more_shards_than_examples() -> None:
    with pytest.raises(ValueError, match="shards"):
        shards(np.arange(10) % 2, 10, 2, np.random.default_rng(0))


def test_quantity_skew_sizes_unequal_with_floor() -> None:
    parts = quantity_skew(2000, 20, np.random.default_rng(0), sigma=1.0, min_size=30)
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 30
    assert sizes.max() > 2 * sizes.min()
    # Labels stay IID: no client is dominated by one class.
    assert _dominant_fraction(parts, Y) < 0.35


def test_quantity_skew_min_size_lowered_when_it_cannot_fit() -> None:
    parts = quantity_skew(50, 10, np.random.default_rng(0), min_size=10)  # 10 x 10 > 50
    assert min(len(p) for p in parts) >= 5


def test_iid_sizes_match_array_split() -> None:
    parts = iid(103, 10, np.random.default_rng(0))
    assert sorted(len(p) for p in parts) == sorted(len(p) for p in np.array_split(np.arange(103), 10))


def test_dispatch_errors() -> None:
    with pytest.raises(ValueError, match="iid, dirichlet, shards, quantity"):
        partition("pathological", Y, 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="exceeds"):
        partition("iid", Y[:5], 6, np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_clients"):
        partition("iid", Y, 0, np.random.default_rng(0))


# Feature skew: IID indices, a fixed input transform per client (tools/feature_skew.py).

def test_feature_scheme_splits_like_iid() -> None:
    a = partition("feature", Y, 10, np.random.default_rng(3))
    b = partition("iid", Y, 10, np.random.default_rng(3))
    assert all(np.array_equal(p, q) for p, q in zip(a, b))


def test_rotate_matches_rot90_and_inverts() -> None:
    from fedge.tools.feature_skew import rotate

    x = np.random.default_rng(0).random((4, 2, 7, 7)).astype(np.float32)
    np.testing.assert_allclose(rotate(x, 0.0), x, atol=1e-6)
    for quarter in (1, 2, 3):  # oracle: numpy's exact quarter turns (counter-clockwise)
        np.testing.assert_allclose(rotate(x, 90.0 * quarter), np.rot90(x, quarter, axes=(2, 3)), atol=1e-5)
    # A small turn moves mass but keeps a centred blob's total roughly (bilinear, zero fill).
    blob = np.zeros((1, 1, 9, 9), np.float32)
    blob[0, 0, 3:6, 3:6] = 1.0
    turned = rotate(blob, 30.0)
    assert not np.allclose(turned, blob) and abs(turned.sum() - blob.sum()) < 0.5


def test_transform_of_no_examples_is_an_empty_batch_of_the_same_width() -> None:
    """A device of 2 examples can hold none out: its (0, 64) test split once raised ValueError
    (cannot reshape size 0 into (0, -1)) from `fedge simulate --dataset digits --devices 800
    --partition feature`. Oracle: the empty slice of the transformed batch."""
    from fedge.tools.feature_skew import FeatureTransform

    x = np.random.default_rng(1).random((3, 64)).astype(np.float32)
    t = FeatureTransform(angle=20.0, contrast=1.2, noise=0.0)
    empty = t.apply(x[:0], (1, 8, 8), np.random.default_rng(0))
    full = t.apply(x, (1, 8, 8), np.random.default_rng(0))
    assert empty.shape == (0, 64) and empty.dtype == np.float32
    np.testing.assert_array_equal(empty, full[:0])
    assert not np.allclose(full, x)  # the rotation did apply to the examples there are


def test_transforms_are_deterministic_and_differ_per_device() -> None:
    from fedge.tools.feature_skew import FeatureSkew, draw_transforms

    a = draw_transforms(8, np.random.default_rng(5), image=True)
    assert a == draw_transforms(8, np.random.default_rng(5), image=True)
    assert len(set(a)) == 8
    skew = FeatureSkew()
    for t in a:
        assert abs(t.angle) <= skew.max_angle and skew.min_contrast <= t.contrast <= skew.max_contrast
        assert 0 <= t.noise <= skew.max_noise
    assert all(t.angle == 0.0 for t in draw_transforms(4, np.random.default_rng(5), image=False))


def test_feature_skewed_dataset_keeps_labels_and_changes_inputs_per_device() -> None:
    from fedge.tools.datasets import build_federated

    skewed = build_federated("digits", 6, "feature", seed=4)
    plain = build_federated("digits", 6, "iid", seed=4)
    again = build_federated("digits", 6, "feature", seed=4)
    assert len(skewed.transforms) == 6 and len(set(skewed.transforms)) == 6
    for s, p, a, t in zip(skewed.clients, plain.clients, again.clients, skewed.transforms):
        np.testing.assert_array_equal(s.y_train, p.y_train)  # same examples, same labels
        np.testing.assert_array_equal(s.y_test, p.y_test)
        np.testing.assert_array_equal(s.x_train, a.x_train)  # deterministic from the seed
        assert s.x_train.shape == p.x_train.shape and s.x_train.dtype == np.float32
        assert 0.0 <= s.x_train.min() and s.x_train.max() <= 1.0
        # Each device's inputs are its own transform of the plain ones (noise aside).
        expected = type(t)(t.angle, t.contrast, 0.0).apply(p.x_test, skewed.image_shape, np.random.default_rng(0))
        assert np.abs(s.x_test - expected).mean() <= t.noise + 1e-6  # E|N(0, s)| = 0.8 s; clipping only shrinks it
    # Different devices see different transforms: the same image would look different.
    img = plain.clients[0].x_test[:1]
    looks = [t.apply(img, skewed.image_shape, np.random.default_rng(0)) for t in skewed.transforms]
    assert all(not np.allclose(looks[0], other) for other in looks[1:])
    assert skewed.subset(0, 4).transforms == skewed.transforms[:4]
