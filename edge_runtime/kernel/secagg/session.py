"""One device's part in one secure-aggregation round, as immutable state and pure steps.

    advertise   fresh cipher and mask key pairs and a self-mask seed (`start`)
    share       Shamir-share the mask key's seed and the self-mask seed to each neighbour
                (packed shares on a sparse graph, plain ones on a complete graph: graph.py),
                each pair's shares encrypted for that neighbour only (`shares_for_neighbours`)
    receive     open the neighbours' shares (`receive_shares`)
    mask        the masked input (`masking.mask_input`, with `masking_peers`)
    reveal      answer the coordinator's one unmask request (`reveal`), or decline by name

A neighbour's point on the Shamir polynomial is 1 + its index in the sorted cohort, so every
party knows which point a share belongs to without it travelling. Each step returns a new
state; the caller stores it before it sends what the step produced (a device answers at most
one unmask request per round, and a crash must not let it answer a second).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import identity, shamir
from .graph import packing_for
from .keys import (
    KeyPair,
    ShareDecryptionFailed,
    decrypt_share,
    encrypt_share,
    generate_keypair,
    keypair_from_seed,
    pair_secret,
)

CIPHER_PURPOSE = "cipher"


def share_plaintext_bytes(packing: int) -> int:
    """One neighbour's box before sealing: its mask-seed share, then its self-seed share."""
    return 2 * shamir.value_bytes(packing)


# Named declines of an unmask request (the device reveals nothing).
SETS_OVERLAP = "secagg_sets_overlap"  # a device both alive and dropped: would reveal both its secrets
TOO_FEW_NEIGHBOURS = "secagg_too_few_neighbours"  # < t neighbours with keys, or whose shares came, or alive among those
MODEL_MISMATCH = "secagg_model_mismatch"  # the round's model is not the one the cohort committed to
ALREADY_ANSWERED = "secagg_already_answered"  # one unmask answer per round
ALREADY_SHARED = "secagg_already_shared"  # one set of shares per round
NOT_IN_COHORT = "secagg_not_alive"  # the request does not count this device among the alive
# Named declines of the key-sharing step.
PEER_MODEL_MISMATCH = "secagg_peer_model_mismatch"  # a neighbour advertised another model hash
BAD_KEY = "secagg_bad_key"  # a neighbour's keys are malformed, or a share comes from no neighbour
BAD_SIGNATURE = "secagg_bad_signature"  # a neighbour's keys are not signed by its provisioned identity


class SecAggDecline(Exception):
    """The device refuses this step; `reason` is one of the names above."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Advertised:
    """What a device publishes in the first stage (and the coordinator relays to the cohort)."""

    cipher_public: bytes
    mask_public: bytes
    model_sha256: str
    signature: bytes = b""


@dataclass(frozen=True)
class DeviceSession:
    device_id: str
    round_id: int
    model_sha256: str
    cipher: KeyPair
    mask: KeyPair  # keys.keypair_from_seed(mask_seed)
    self_seed: bytes  # 16 bytes: the self-mask's AES-128 key, Shamir-shared
    mask_seed: bytes  # 16 bytes: the mask key pair's seed, Shamir-shared
    threshold: int = 0
    packing: int = 1  # graph.packing_for(k, n): 2 packed shares (sparse graph), 1 plain (complete)
    neighbours: tuple[str, ...] = ()
    cohort: tuple[str, ...] = ()  # sorted; sets the Shamir points
    peers: Mapping[str, Advertised] = field(default_factory=dict)  # neighbour -> its advertisement
    received: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # sender -> (mask share, self share)
    unopened: tuple[str, ...] = ()  # senders whose share did not open or was no share (receive_shares)
    answered: bool = False

    @property
    def advertised(self) -> Advertised:
        return Advertised(self.cipher.public, self.mask.public, self.model_sha256)


def point_of(device_id: str, cohort: tuple[str, ...]) -> int:
    return 1 + cohort.index(device_id)


def start(device_id: str, round_id: int, model_sha256: str) -> DeviceSession:
    mask_seed = shamir.random_secret()  # below the Shamir prime, so every seed can be shared
    return DeviceSession(device_id, round_id, model_sha256, generate_keypair(), keypair_from_seed(mask_seed),
                         shamir.random_secret(), mask_seed)


def _cipher_key(s: DeviceSession, peer: str, private: X25519PrivateKey | None = None) -> bytes:
    """The pair's share key. `private`: s.cipher.private loaded once per stage by the caller
    (loading costs as much as the agreement, and a device pairs with up to k neighbours)."""
    key = s.cipher.private if private is None else private
    return pair_secret(key, s.peers[peer].cipher_public, s.round_id, CIPHER_PURPOSE, s.device_id, peer)


def shares_for_neighbours(s: DeviceSession, cohort: tuple[str, ...], neighbours: tuple[str, ...], threshold: int,
                          advertised: Mapping[str, Advertised],
                          directory: Mapping[str, bytes] | None = None) -> tuple[DeviceSession, dict[str, bytes]]:
    """Encrypted shares, one per neighbour that advertised keys, in neighbour-id order. Declines when a neighbour
    committed to another model (the model-inconsistency attack), its keys are malformed, or,
    with a directory of identity keys, they are not signed by that neighbour's identity."""
    if s.peers:  # the AEAD nonces are per key and direction: never encrypt a second set of shares
        raise SecAggDecline(ALREADY_SHARED)
    cohort = tuple(sorted(cohort))
    peers = {n: advertised[n] for n in sorted(neighbours) if n in advertised and n != s.device_id}
    for peer, adv in peers.items():
        if adv.model_sha256 != s.model_sha256:
            raise SecAggDecline(PEER_MODEL_MISMATCH, f"{peer} advertised another model")
        if len(adv.cipher_public) != 32 or len(adv.mask_public) != 32:
            raise SecAggDecline(BAD_KEY, f"{peer}'s keys are not 32 bytes")
        if directory is not None and peer not in directory:  # stale directory, or a device it never had
            raise SecAggDecline(BAD_SIGNATURE, f"{peer} has no identity key in this device's directory "
                                               "(provision its identity and update the directory)")
        if directory is not None and not identity.verify(directory[peer], adv.signature, identity.transcript(
                s.round_id, peer, adv.cipher_public, adv.mask_public, adv.model_sha256)):
            raise SecAggDecline(BAD_SIGNATURE, f"{peer}'s keys are not signed by its identity")
    if len(peers) < threshold:
        raise SecAggDecline(TOO_FEW_NEIGHBOURS, f"{len(peers)} neighbours advertised keys, need {threshold}")
    packing = packing_for(len(set(neighbours) - {s.device_id}), len(cohort))
    s = replace(s, threshold=threshold, packing=packing, neighbours=tuple(sorted(neighbours)), cohort=cohort,
                peers=peers)
    at = {d: i for i, d in enumerate(cohort)}  # point_of for every peer, without a scan of the cohort each
    points = [1 + at[p] for p in peers]
    mask_shares = shamir.share_seed(s.mask_seed, threshold, points, packing)
    self_shares = shamir.share_seed(s.self_seed, threshold, points, packing)
    size = shamir.value_bytes(packing)
    out = {}
    private = X25519PrivateKey.from_private_bytes(s.cipher.private)
    for peer, ms, ss in zip(peers, mask_shares, self_shares):
        plain = ms.to_bytes(size, "big") + ss.to_bytes(size, "big")
        out[peer] = encrypt_share(_cipher_key(s, peer, private), s.round_id, s.device_id, peer, plain)
    return s, out


def receive_shares(s: DeviceSession, ciphertexts: Mapping[str, bytes]) -> DeviceSession:
    """Open the shares addressed to this device; shares from non-neighbours are refused.

    A share that does not open, or opens to no share, is the sender's doing or the relay's: the
    device holds no share of that sender (`unopened`, reported in its MaskedInput) and goes on.
    It used to decline the whole stage, so one device sending random bytes abandoned every
    secure round it was in. The device still masks with that sender (masking_peers), as the
    sender masks with it, so their pair masks cancel; the others' shares of the sender remain."""
    received, unopened = dict(s.received), set(s.unopened)
    private = X25519PrivateKey.from_private_bytes(s.cipher.private)
    for sender, blob in ciphertexts.items():
        if sender not in s.peers:
            raise SecAggDecline(BAD_KEY, f"a share from {sender}, who is not a neighbour with keys")
        pair = _open_share(s, sender, blob, private)
        if pair is None:
            unopened.add(sender)
        else:
            received[sender] = pair
    return replace(s, received=received, unopened=tuple(sorted(unopened - set(received))))


def _open_share(s: DeviceSession, sender: str, blob: bytes, private: X25519PrivateKey) -> tuple[int, int] | None:
    """(mask share, self share) from a sender's sealed share, or None when it is none."""
    try:
        plain = decrypt_share(_cipher_key(s, sender, private), s.round_id, sender, s.device_id, blob)
    except ShareDecryptionFailed:
        return None
    if len(plain) != share_plaintext_bytes(s.packing):
        return None
    half = shamir.value_bytes(s.packing)
    pair = (int.from_bytes(plain[:half], "big"), int.from_bytes(plain[half:], "big"))
    return pair if all(shamir.value_in_field(v, s.packing) for v in pair) else None


def check_masking_peers(s: DeviceSession) -> None:
    """SecAggDecline(TOO_FEW_NEIGHBOURS) unless at least t neighbours completed key sharing (their
    shares were delivered, opened or not). With fewer, the masked input would carry pair masks with
    fewer than t neighbours, with none at all for an empty delivery: the coordinator, which decides
    who is delivered, would unmask this device's input alone from its self-mask shares (SecAgg's
    "abort if |U2| < t", Bonawitz et al. 2017, round 2)."""
    peers = len(s.received) + len(s.unopened)
    if peers < s.threshold:
        raise SecAggDecline(TOO_FEW_NEIGHBOURS, f"shares of {peers} neighbours delivered, need {s.threshold}")


def masking_peers(s: DeviceSession) -> dict[str, bytes]:
    """Neighbour -> mask public key, for the neighbours whose shares the coordinator delivered,
    opened or not: the ones that completed key sharing and masked with this device, so the
    pair masks cancel and the coordinator can remove them if the neighbour drops."""
    return {p: s.peers[p].mask_public for p in (*s.received, *s.unopened)}


def reveal(s: DeviceSession, alive: tuple[str, ...], dropped: tuple[str, ...],
           model_sha256: str) -> tuple[DeviceSession, dict[str, tuple[str, int]]]:
    """owner -> ("self", share) for alive neighbours, ("mask", share) for dropped ones. The
    returned state has `answered` set: store it before sending the answer."""
    if s.answered:
        raise SecAggDecline(ALREADY_ANSWERED)
    alive_set, dropped_set = set(alive), set(dropped)
    if alive_set & dropped_set:
        raise SecAggDecline(SETS_OVERLAP, f"{len(alive_set & dropped_set)} devices are both alive and dropped")
    if model_sha256 != s.model_sha256:
        raise SecAggDecline(MODEL_MISMATCH, "the unmask request names another model")
    if s.device_id not in alive_set:
        raise SecAggDecline(NOT_IN_COHORT)
    # Only neighbours that masked with this device count (their shares were delivered, opened or
    # not): one whose shares never came is not in the masked sum, so listing it alive would pad t.
    masked_with = set(s.received) | set(s.unopened)
    alive_neighbours = [p for p in s.neighbours if p in alive_set and p in masked_with]
    if len(alive_neighbours) < s.threshold:
        raise SecAggDecline(TOO_FEW_NEIGHBOURS, f"{len(alive_neighbours)} neighbours alive that masked with "
                                                f"this device, need {s.threshold}")
    out: dict[str, tuple[str, int]] = {}
    for owner, (mask_share, self_share) in s.received.items():
        if owner in alive_set:
            out[owner] = ("self", self_share)
        elif owner in dropped_set:
            out[owner] = ("mask", mask_share)
    return replace(s, answered=True), out
