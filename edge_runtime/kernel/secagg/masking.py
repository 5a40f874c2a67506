"""Masks that cancel in the sum, and their removal for the devices that dropped.

Device i sends, mod 2^m,

    y_i = v_i + PRG(b_i) + sum_{j in N(i), j shared, i < j} PRG(s_ij) - sum_{..., i > j} PRG(s_ij)

with b_i its self-mask seed and s_ij the pair seed both ends derive (keys.pair_secret with
purpose "mask"). Over the survivors S the pair terms of two survivors cancel; what is left is

    sum_S y = sum_S v + sum_S PRG(b_i) + sum_{i in S, j dropped, j in N(i)} +-PRG(s_ij)

The coordinator removes the self-masks (seeds reconstructed from survivors' shares) and the
dropped devices' pair masks (their mask keys reconstructed from shares): `unmask`. Why the
self-mask: a device that is slow, not dropped, would otherwise be unmasked by the dropped
pair masks the coordinator removes, and its late y_i read in the clear.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from .keys import pair_secret
from .prg import Expander, words

MASK_PURPOSE = "mask"
MASK_SEED_BYTES = 16  # AES-128-CTR (prg): 128-bit, as the X25519 agreement it comes from
# Below this many mask words (expansions x length) the unmask runs in the calling process:
# starting worker processes costs tens of milliseconds.
PARALLEL_MIN_WORDS = 50_000_000


def _field_mask(field_bits: int) -> np.uint32:
    if field_bits > 32:  # the words are uint32: a wider field's sum would wrap mod 2^32, silently
        raise ValueError(f"a {field_bits}-bit field does not fit the 32-bit mask words")
    return np.uint32((1 << field_bits) - 1) if field_bits < 32 else np.uint32(0xFFFFFFFF)


def sum_mod(vectors: Iterable[np.ndarray], field_bits: int, length: int) -> np.ndarray:
    """The sum mod 2^m (uint32 arithmetic wraps mod 2^32, and 2^m divides 2^32)."""
    total = np.zeros(length, dtype=np.uint32)
    for v in vectors:
        total += np.asarray(v, dtype=np.uint32)
    return total & _field_mask(field_bits)


def pair_mask(private: bytes | X25519PrivateKey, peer_public: bytes | X25519PublicKey, round_id: int, me: str,
              peer: str, length: int) -> np.ndarray:
    """The pair's mask as uint32 words mod 2^32 (prg.words): callers add and subtract masks
    mod 2^32 and reduce mod 2^m once, at the end."""
    return words(_pair_seed(private, peer_public, round_id, me, peer), length)


def _pair_seed(private, peer_public, round_id: int, me: str, peer: str) -> bytes:
    return pair_secret(private, peer_public, round_id, MASK_PURPOSE, me, peer, MASK_SEED_BYTES)


def mask_input(values: np.ndarray, me: str, self_seed: bytes, mask_private: bytes,
               peers: Mapping[str, bytes], round_id: int, field_bits: int) -> np.ndarray:
    """y_i: `values` (field elements) plus the self-mask and one pair mask per peer in `peers`
    (neighbour -> its mask public key: the neighbours that completed key sharing)."""
    values = np.asarray(values, dtype=np.uint32).reshape(-1)
    out = values + words(self_seed, values.size)
    mask_private = X25519PrivateKey.from_private_bytes(mask_private)  # once: loading costs an agreement
    for peer, public in peers.items():
        if peer == me:
            raise ValueError("a device is not its own neighbour")
        mask = pair_mask(mask_private, public, round_id, me, peer, values.size)
        if me < peer:
            out += mask
        else:
            out -= mask
    return out & _field_mask(field_bits)


def unmask(masked_sum: np.ndarray, self_seeds: Mapping[str, object], dropped_keys: Mapping[str, object],
           dropped_peers: Mapping[str, Mapping[str, bytes]], round_id: int, field_bits: int,
           workers: int = 1, resolve: Callable[[str, str, object], bytes] | None = None) -> np.ndarray:
    """sum_S v from sum_S y. self_seeds: survivor -> b_i (every survivor's); dropped_keys:
    dropped device -> its mask private key; dropped_peers: dropped device -> {survivor that
    masked with it: that survivor's mask public key}. With `resolve`, the values of self_seeds
    and dropped_keys are what resolve(kind, owner, value) turns into the seed ("self") or the
    private key ("mask"), in the worker: recovery.unmask_answers passes the Shamir shares, so
    the reconstruction runs on every core too (a module-level function or partial: it is
    pickled to the workers).

    workers > 1 splits the masks over that many processes when there are enough of them
    (PARALLEL_MIN_WORDS). Processes, not threads: AES-CTR and numpy's adds release the GIL, but
    the X25519 agreement and HKDF of every (dropped, survivor) pair hold it, and they are about
    a third of the work (36 + 4.5 of about 110 us per pair here). The result is the same:
    addition mod 2^32 does not depend on the order."""
    length = np.asarray(masked_sum).size
    seeds = list(self_seeds.items())
    dropped = [(gone, private, tuple(dropped_peers.get(gone, {}).items())) for gone, private in dropped_keys.items()]
    expansions = len(seeds) + sum(len(peers) for _, _, peers in dropped)
    total = np.asarray(masked_sum, dtype=np.uint32).copy()
    context = _fork_context()
    if workers > 1 and expansions * length >= PARALLEL_MIN_WORDS and context is not None:
        try:
            return (total - _removal_in_workers(length, round_id, seeds, dropped, resolve, workers, context)) \
                & _field_mask(field_bits)
        except (BrokenProcessPool, OSError):
            pass  # a worker died (out of memory, killed) or none could start: the same sum, here
    total -= _removal(length, round_id, seeds, dropped, resolve)
    return total & _field_mask(field_bits)


def _removal_in_workers(length: int, round_id: int, seeds: list, dropped: list, resolve, workers: int,
                        context) -> np.ndarray:
    parts = 4 * workers  # more parts than workers: a worker slowed by other load takes fewer
    split_seeds = [seeds[i::parts] for i in range(parts)]
    split_dropped: list[list] = [[] for _ in range(parts)]
    loads = [len(p) for p in split_seeds]
    for job in sorted(dropped, key=lambda j: -len(j[2])):  # greedy: the largest to the lightest part
        lightest = loads.index(min(loads))
        split_dropped[lightest].append(job)
        loads[lightest] += len(job[2])
    acc = np.zeros(length, dtype=np.uint32)
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        for part in pool.map(_removal, [length] * parts, [round_id] * parts, split_seeds, split_dropped,
                             [resolve] * parts):
            acc += part
    return acc


def _fork_context():
    """fork where the platform has it: a forked worker starts in milliseconds with every module
    loaded and needs nothing copied. The workers run only this module's numpy and
    `cryptography` code (no logging, no I/O), so the coordinator's other threads (MQTT) do not
    matter to them."""
    try:
        return multiprocessing.get_context("fork")
    except ValueError:
        return None


def _removal(length: int, round_id: int, seeds: list[tuple[str, object]], dropped: list,
             resolve: Callable[[str, str, object], bytes] | None = None) -> np.ndarray:
    """What to subtract from the masked sum: the self-masks of `seeds` ((survivor, seed)) plus,
    for each (dropped device, its mask private key, ((survivor, survivor's mask public key),
    ...)), the pair masks the survivors added (+ when survivor < dropped) or subtracted."""
    expander = Expander(length)
    plus = np.zeros(length, dtype=np.uint32)
    minus = np.zeros(length, dtype=np.uint32)
    for owner, seed in seeds:
        np.add(plus, expander.of(resolve("self", owner, seed) if resolve else seed), out=plus)
    loaded: dict[bytes, X25519PublicKey] = {}  # a survivor neighbours several dropped devices
    for gone, private, peers in dropped:
        key = X25519PrivateKey.from_private_bytes(resolve("mask", gone, private) if resolve else private)
        for survivor, public in peers:
            if public not in loaded:
                loaded[public] = X25519PublicKey.from_public_bytes(public)
            acc = plus if survivor < gone else minus
            np.add(acc, expander.of(_pair_seed(key, loaded[public], round_id, gone, survivor)), out=acc)
    plus -= minus
    return plus
