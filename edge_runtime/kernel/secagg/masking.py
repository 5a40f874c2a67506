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

from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from .keys import pair_secret
from .prg import words

MASK_PURPOSE = "mask"


def _field_mask(field_bits: int) -> np.uint32:
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
    return words(pair_secret(private, peer_public, round_id, MASK_PURPOSE, me, peer), length)


def mask_input(values: np.ndarray, me: str, self_seed: bytes, mask_private: bytes,
               peers: Mapping[str, bytes], round_id: int, field_bits: int) -> np.ndarray:
    """y_i: `values` (field elements) plus the self-mask and one pair mask per peer in `peers`
    (neighbour -> its mask public key: the neighbours that completed key sharing)."""
    values = np.asarray(values, dtype=np.uint32).reshape(-1)
    out = values + words(self_seed, values.size)
    for peer, public in peers.items():
        if peer == me:
            raise ValueError("a device is not its own neighbour")
        mask = pair_mask(mask_private, public, round_id, me, peer, values.size)
        if me < peer:
            out += mask
        else:
            out -= mask
    return out & _field_mask(field_bits)


def unmask(masked_sum: np.ndarray, self_seeds: Mapping[str, bytes], dropped_keys: Mapping[str, bytes],
           dropped_peers: Mapping[str, Mapping[str, bytes]], round_id: int, field_bits: int,
           workers: int = 1) -> np.ndarray:
    """sum_S v from sum_S y. self_seeds: survivor -> b_i (every survivor's); dropped_keys:
    dropped device -> its mask private key; dropped_peers: dropped device -> {survivor that
    masked with it: that survivor's mask public key}. workers > 1 expands the masks in that
    many threads (AES-CTR and numpy's adds release the GIL); the result is the same, since
    addition mod 2^32 does not depend on the order."""
    length = np.asarray(masked_sum).size
    jobs = [(None, seed, None) for seed in self_seeds.values()]
    loaded: dict[bytes, X25519PublicKey] = {}  # each survivor's key is loaded once, not once per dropped neighbour
    for gone, private in dropped_keys.items():
        key = X25519PrivateKey.from_private_bytes(private)
        for survivor, public in dropped_peers.get(gone, {}).items():
            if public not in loaded:
                loaded[public] = X25519PublicKey.from_public_bytes(public)
            jobs.append((gone, key, (survivor, loaded[public])))

    def removal(part: list) -> np.ndarray:
        acc = np.zeros(length, dtype=np.uint32)  # what to subtract
        for gone, secret, peer in part:
            if gone is None:
                acc += words(secret, length)
                continue
            survivor, public = peer
            # the survivor added +mask when survivor < gone, -mask otherwise: undo that
            mask = pair_mask(secret, public, round_id, gone, survivor, length)
            if survivor < gone:
                acc += mask
            else:
                acc -= mask
        return acc

    total = np.asarray(masked_sum, dtype=np.uint32).copy()
    if workers <= 1 or len(jobs) < 2:
        total -= removal(jobs)
    else:
        with ThreadPoolExecutor(workers) as pool:
            for acc in pool.map(removal, [jobs[i::workers] for i in range(workers)]):
                total -= acc
    return total & _field_mask(field_bits)
