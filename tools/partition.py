"""Split a dataset's indices over simulated clients (pure; the RNG is passed in).

Every function returns one int64 index array per client. The arrays are disjoint and
together cover every index exactly once; each array is sorted ascending.

    iid                    uniform random split, sizes differ by at most one
    dirichlet_label_skew   per-class Dirichlet(alpha) shares (Yurochkin et al. 2019); small alpha -> few labels;
                           for many small clients, per-client Dir(alpha) label mixes (dirichlet_per_client)
    shards                 McMahan et al. 2017: label-sorted shards, classes_per_client shards per client
    quantity_skew          IID labels, lognormal client sizes
    feature                IID indices (as iid); the skew is in the inputs: tools/datasets.py gives
                           every client its own fixed transform (tools/feature_skew.py)
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("fedge.partition")

SCHEMES = ("iid", "dirichlet", "shards", "quantity", "feature")
_MAX_TRIES = 1000  # Dirichlet resamples before giving up


def _check(n: int, num_clients: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if num_clients > n:
        raise ValueError(f"num_clients ({num_clients}) exceeds the number of examples ({n})")


def _finish(parts: list[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Non-negative integers proportional to weights that sum exactly to total."""
    # Rounding the cumulative share (not each share) keeps the sum exact and every count >= 0.
    bounds = np.round(np.cumsum(weights) / np.sum(weights) * total).astype(np.int64)
    bounds[-1] = total
    return np.diff(bounds, prepend=0)


def _auto_min_size(min_size: int, n: int, num_clients: int) -> int:
    # Asking every client for min_size examples is hopeless when that is close to the
    # average share: cap it at a tenth of the average, but not below 2 (one train and one
    # test example) unless the caller asked for less.
    return min(min_size, max(2, n // (10 * num_clients)))


def iid(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle 0..n-1 and cut into num_clients near-equal parts."""
    _check(n, num_clients)
    return _finish(np.array_split(rng.permutation(n), num_clients))


def dirichlet_label_skew(
    y: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator, min_size: int = 10
) -> list[np.ndarray]:
    """Give each class's examples to clients in Dirichlet(alpha) proportions.

    As in Yurochkin et al. 2019 / FedLab / Flower's DirichletPartitioner: per class, draw
    p ~ Dir(alpha * 1), zero the share of clients already above the average size (keeps
    sizes from exploding), and cut the shuffled class at the cumulative shares. The whole
    draw is repeated until every client holds >= min_size examples; min_size is lowered
    to n // (10 * num_clients) (but not below 2) when that is smaller.

    Small alpha with many small clients makes every such draw fail (alpha=0.1, 10 classes,
    200 clients on 5,000 examples: no draw in 1,000 gives every client 2 examples). Then the
    split is drawn per client instead (dirichlet_per_client: each client's label mix
    ~ Dir(alpha), sizes as even as n allows), and a warning says so. Configurations whose
    per-class draw succeeds are split exactly as before.
    """
    y = np.asarray(y)
    n = len(y)
    _check(n, num_clients)
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    need = _auto_min_size(min_size, n, num_clients)
    # By np.unique's inverse, not y == label: NaN == NaN is False, so float labels holding NaN lost
    # those examples (every NaN is one label here, as in dirichlet_per_client and shards).
    _, inverse = np.unique(y, return_inverse=True)
    by_class = [np.flatnonzero(inverse == c) for c in range(int(inverse.max()) + 1)]
    for _ in range(_MAX_TRIES):
        cut: list[tuple[np.ndarray, np.ndarray]] = []  # per class: (shuffled members, cut positions)
        sizes = np.zeros(num_clients, dtype=np.int64)
        for members in by_class:
            idx = rng.permutation(members)
            p = rng.dirichlet(np.full(num_clients, alpha)) * (sizes < n / num_clients)
            if p.sum() <= 0:  # every open client drew ~0 (tiny alpha): share evenly among them
                p = (sizes < n / num_clients).astype(float)
            cuts = (np.cumsum(p / p.sum()) * len(idx)).astype(np.int64)[:-1]
            cut.append((idx, cuts))
            sizes += np.diff(cuts, prepend=0, append=len(idx))  # what np.split(idx, cuts) gives each client
        if sizes.min() >= need:  # only the draw that fits is cut into arrays (most of the cost at 1,000s)
            buckets: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
            for idx, cuts in cut:
                for k, part in enumerate(np.split(idx, cuts)):
                    buckets[k].append(part)
            return _finish([np.concatenate(b) for b in buckets])
    log.warning("dirichlet partition: no per-class draw in %d gave every one of %d clients >= %d examples "
                "(alpha=%g, n=%d); drawing each client's label mix from Dir(alpha) instead",
                _MAX_TRIES, num_clients, need, alpha, n)
    return dirichlet_per_client(y, num_clients, alpha, rng, min_size=need)


def dirichlet_per_client(y: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator,
                         min_size: int = 1) -> list[np.ndarray]:
    """Label skew for many small clients: client k's label mix is q_k ~ Dir(alpha * 1_C).

    After Hsu et al. 2019 (per-client label mixes; as FedLab's client_inner_dirichlet_partition).
    Sizes are as even as n allows (n // num_clients or one more), so each client holds at least
    n // num_clients examples by construction, however small alpha is (ValueError when that is
    below min_size: no split can do better). Clients are filled in a
    random order: client k draws its size from Multinomial(q_k), capped by what is left of each
    class, and draws again over the classes it still wants until it is full; once its classes
    are used up it takes from what is left. So early clients follow q_k exactly as a
    multinomial, the last ones get the remainder (every example is given out).
    """
    y = np.asarray(y)
    n = len(y)
    _check(n, num_clients)
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if min_size > n // num_clients:
        raise ValueError(f"dirichlet partition: {n} examples cannot give each of {num_clients} clients "
                         f"{min_size}; use at most {n // min_size} clients")
    labels, inverse = np.unique(y, return_inverse=True)
    q = rng.dirichlet(np.full(len(labels), alpha), size=num_clients)  # (clients, classes)
    sizes = np.array([len(a) for a in np.array_split(np.arange(n), num_clients)], dtype=np.int64)
    left = np.bincount(inverse, minlength=len(labels))
    counts = np.zeros((num_clients, len(labels)), dtype=np.int64)
    for k in rng.permutation(num_clients):
        want = sizes[k]
        while want:
            w = q[k] * (left > 0)
            if w.sum() <= 0:  # its classes are used up (or its mix underflowed): whatever is left
                w = (left > 0).astype(float)
            got = np.minimum(rng.multinomial(want, w / w.sum()), left)  # >= 1 example per pass: w > 0 only where left
            counts[k] += got
            left -= got
            want -= int(got.sum())
    members = [rng.permutation(np.flatnonzero(inverse == c)) for c in range(len(labels))]
    starts = np.zeros(len(labels), dtype=np.int64)
    parts = []
    for k in range(num_clients):
        mine = []
        for c in np.flatnonzero(counts[k]):
            mine.append(members[c][starts[c]:starts[c] + counts[k, c]])
            starts[c] += counts[k, c]
        parts.append(np.concatenate(mine) if mine else np.zeros(0, np.int64))
    return _finish(parts)


def shards(
    y: np.ndarray, num_clients: int, classes_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """McMahan-style pathological split: each client gets classes_per_client label shards.

    Unlike a plain cut of the label-sorted array, shards never straddle two classes:
    each class is cut into a number of shards proportional to its size (at least one),
    and shards are dealt so a client's shards come from distinct classes. Every client
    gets exactly classes_per_client labels when classes_per_client <= num_classes: a class
    is cut into at most min(num_clients, its size) shards, so no client needs two of one
    class and no shard is empty (a larger class gets larger shards), and a split where that
    cannot hold (a class smaller than the clients it must reach) is a ValueError. With
    classes_per_client > num_classes some clients get repeated labels. With fewer shards
    than classes it falls back to the plain sorted cut (shards then mix labels).
    """
    y = np.asarray(y)
    n = len(y)
    _check(n, num_clients)
    if classes_per_client < 1:
        raise ValueError(f"classes_per_client must be >= 1, got {classes_per_client}")
    total = num_clients * classes_per_client
    if total > n:
        raise ValueError(
            f"shards: {num_clients} clients x {classes_per_client} shards = {total} shards "
            f"but only {n} examples; use fewer clients or classes_per_client"
        )
    # Shuffle first so the stable sort leaves a random order inside each class.
    order = rng.permutation(n)
    order = order[np.argsort(y[order], kind="stable")]
    labels, sizes = np.unique(y, return_counts=True)
    if total < len(labels):
        pieces = np.array_split(order, total)
        owner = rng.permutation(np.arange(total) % num_clients)
        return _finish([np.concatenate([pieces[s] for s in np.flatnonzero(owner == k)])
                        for k in range(num_clients)])
    counts = 1 + _apportion(total - len(labels), sizes.astype(float))
    if classes_per_client <= len(labels):
        # Two shards of one class on one client, or an empty shard, would cost a client a label.
        caps = np.minimum(sizes, num_clients)
        if caps.sum() < total:
            raise ValueError(f"shards: {num_clients} clients x {classes_per_client} distinct labels need {total} "
                             f"shards, but a class can give at most one per client and one per example "
                             f"({int(caps.sum())} in all; smallest class: {int(sizes.min())} examples); "
                             f"use fewer clients or classes_per_client")
        counts = _cap(counts, caps, sizes.astype(float))
    pieces, shard_class = [], []
    for c, (members, cnt) in enumerate(zip(np.split(order, np.cumsum(sizes)[:-1]), counts)):
        pieces.extend(np.array_split(members, cnt))
        shard_class.extend([c] * cnt)  # class position 0..C-1, not the label value
    slots = _deal(np.asarray(shard_class), num_clients, classes_per_client, rng)  # (clients, cpc)
    return _finish([np.concatenate([pieces[s] for s in row]) for row in slots])


def _cap(counts: np.ndarray, caps: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """counts with none above its cap, the excess moved to the others in proportion to weights
    (same sum; needs sum(caps) >= sum(counts)). A class cut into more shards than there are
    clients puts two of them on one client (digits' largest class, 183 of 1,797, got 21 shards
    over 20 clients at 10 per client: one client held 9 labels), and one cut into more shards
    than it has examples gives empty ones. Each pass caps at least one more class."""
    counts = counts.copy()
    while (counts > caps).any():
        over = counts > caps
        spare = int((counts[over] - caps[over]).sum())
        counts[over] = caps[over]
        room = counts < caps
        counts[room] += _apportion(spare, weights[room])
    return counts


def _deal(shard_class: np.ndarray, num_clients: int, per: int, rng: np.random.Generator) -> np.ndarray:
    """Shard -> client table (clients, per) with, where class sizes allow, distinct classes per row."""
    slots = rng.permutation(len(shard_class)).reshape(num_clients, per)
    for _ in range(4 * slots.size):
        cls = shard_class[slots]
        dup = np.argwhere((cls[:, :, None] == cls[:, None, :]).sum(axis=2) > 1)  # (row, slot) pairs
        if len(dup) == 0:
            return slots
        a, j = dup[rng.integers(len(dup))]
        c = cls[a, j]
        # Swap with a shard (b, k) whose class is new to row a, into a row b without class c.
        ok = (cls != c) & ~np.isin(cls, np.delete(cls[a], j)) & ~(cls == c).any(axis=1)[:, None]
        cand = np.argwhere(ok)
        if len(cand) == 0:
            break
        b, k = cand[rng.integers(len(cand))]
        slots[a, j], slots[b, k] = slots[b, k], slots[a, j]
    # Repair got stuck (e.g. per == num_classes). Deal round-robin instead: with shards
    # grouped by class, client k takes positions k, k + K, k + 2K, ..., which are distinct
    # classes whenever no class has more than K shards. Less random pairings, same guarantee.
    rank = rng.permutation(int(shard_class.max()) + 1)
    grouped = np.argsort(rank[shard_class], kind="stable")
    return grouped.reshape(per, num_clients).T[rng.permutation(num_clients)]


def quantity_skew(
    n: int, num_clients: int, rng: np.random.Generator, sigma: float = 1.0, min_size: int = 10
) -> list[np.ndarray]:
    """IID examples, but client sizes drawn as min_size + lognormal(0, sigma) shares of the rest.

    min_size is lowered to n // num_clients when that is smaller, so it always fits.
    """
    _check(n, num_clients)
    floor = min(min_size, n // num_clients)
    sizes = floor + _apportion(n - floor * num_clients, rng.lognormal(0.0, sigma, num_clients))
    return _finish(np.split(rng.permutation(n), np.cumsum(sizes)[:-1]))


def partition(
    scheme: str,
    y: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    *,
    alpha: float = 0.1,
    classes_per_client: int = 2,
) -> list[np.ndarray]:
    """Dispatch on scheme name; y is only used for its length by "iid", "quantity" and "feature"."""
    y = np.asarray(y)
    _check(len(y), num_clients)
    if scheme in ("iid", "feature"):
        return iid(len(y), num_clients, rng)
    if scheme == "dirichlet":
        return dirichlet_label_skew(y, num_clients, alpha, rng)
    if scheme == "shards":
        return shards(y, num_clients, classes_per_client, rng)
    if scheme == "quantity":
        return quantity_skew(len(y), num_clients, rng)
    raise ValueError(f"unknown partition scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
