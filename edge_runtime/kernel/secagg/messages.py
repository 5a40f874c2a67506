"""Secure aggregation's wire messages (schema version 1, type codes 15-22).

They travel on the existing per-device topics, so the broker's ACL needs no change: requests
on the device's task channel, replies on its update channel. A stage a device cannot do is
answered with the ordinary Decline (task_id and a named reason, e.g. secagg_sets_overlap).

    stage       coordinator -> device (task)      device -> coordinator (update)
    advertise   SecAggTask (a TrainTask + spec)   KeyAdvertisement
    share       KeyDirectory                      EncryptedShares
    mask        ShareDelivery                     MaskedInput
    unmask      UnmaskRequest                     UnmaskResponse

Byte fields of fixed size (keys) are checked in __post_init__, and share boxes and values for
the sizes any round may use: the codec turns the ValueError into MalformedPayload, so no handler
sees a 31-byte key. The exact share sizes depend on the round's graph (plain or packed shares,
graph.packing_for) and are checked where the round is known (round_state.accept).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..protocol import TrainTask
from ..wire_fields import _NON_NEGATIVE, bounded, check_sha256_hex
from .shamir import PACKINGS, value_bytes

MAX_COHORT = 100_000  # devices in one round's cohort, at most
KEY_BYTES = 32
SIGNATURE_BYTES = 64  # Ed25519 (identity.py); here, so sizes are known without cryptography
TAG_BYTES = 16  # Poly1305's; the nonce is implied (keys.py)


def sealed_share_bytes(packing: int) -> int:
    """One neighbour's box: two share values (mask seed, self seed) and the tag: 48 bytes plain, 32 packed."""
    return 2 * value_bytes(packing) + TAG_BYTES


# The sharing scheme every party of a secure round speaks, carried (required) by SecAggTask.
# 1: seeds over 2^128 - 159, plain everywhere; 2: seeds over 2^64 - 59, packed on sparse graphs.
# Version 1's plain shares have the same sizes as version 2's (16-byte values, 48-byte boxes),
# so without this a mixed round on a complete graph would reconstruct wrong self-mask seeds and
# commit a wrong sum. A device from before version 2 refuses the SecAggTask (an unknown field)
# and never joins a cohort; this build refuses a SecAggTask without it (a missing field).
SHARING_VERSION = 2

# The sizes a message may carry whatever the round's packing (graph.packing_for: the round's
# graph decides it, so the exact size is checked where the round is known, round_state.accept).
SEALED_SIZES = tuple(sealed_share_bytes(p) for p in PACKINGS)  # (48, 32)
VALUE_UNIT = min(value_bytes(p) for p in PACKINGS)  # 8: every share value is a whole number of these
MAX_SEALED, MAX_VALUE = max(SEALED_SIZES), max(value_bytes(p) for p in PACKINGS)


def _check_len(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(value)}")


def _check_advertised(msg) -> None:
    """What KeyAdvertisement and PeerKeys carry alike: two keys, a model hash, a signature."""
    _check_sha(msg.model_sha256)
    _check_len("cipher_public", msg.cipher_public, KEY_BYTES)
    _check_len("mask_public", msg.mask_public, KEY_BYTES)
    if msg.signature and len(msg.signature) != 64:
        raise ValueError(f"signature must be empty or 64 bytes, got {len(msg.signature)}")


def _check_sha(value: str) -> None:
    check_sha256_hex("model_sha256", value)


@dataclass(frozen=True)
class SecAggSpec:
    """The round's shared encoding: what every device of the cohort quantizes alike."""

    bits: int = bounded(2, 24, 16)  # b: quantization levels 2^(b-1) - 1 each side of 0
    field_bits: int = bounded(2, 32, 26)  # m = b + ceil(log2 n selected): the sum never wraps
    clip_range: float = bounded(1e-30, 1e30, 0.01)  # c: the shared L-inf clip after the rotation
    rotation_seed: int = bounded(*_NON_NEGATIVE, 0)  # the rotation's and the subset's seed (public, per round)
    keep_fraction: float = bounded(1e-9, 1.0, 1.0)  # the shared random-k subset every device sends (subset.py)
    # Distributed DP (ddg.py), on when dp_gamma > 0: the device clips to dp_clip_norm (L2, real
    # units), scales by 1 / dp_gamma, rounds, adds N_Z(0, dp_sigma^2) and sends mod 2^field_bits
    # (bits is then unused). 0 = the plain b-bit offset codes.
    dp_gamma: float = bounded(0.0, 1e30, 0.0)
    dp_sigma: float = bounded(0.0, 1e9, 0.0)
    dp_clip_norm: float = bounded(0.0, 1e30, 0.0)
    # Adaptive clipping under distributed DP (ddg.count_coordinate), on when > 0: one more
    # coordinate after the subset, ±dp_count_scale / 2 (was the device's norm within
    # dp_clip_norm?) plus N_Z(0, dp_sigma^2), so the secure sum holds the noised, centred count.
    # Even, so ±scale / 2 is an integer. Left off the wire at 0 (peers built before it).
    dp_count_scale: int = bounded(0, 1 << 24, 0, omit_default=True)

    def __post_init__(self) -> None:
        if self.field_bits < self.bits:
            raise ValueError("field_bits must be at least bits")
        if (self.dp_gamma > 0) != (self.dp_clip_norm > 0) or (self.dp_sigma > 0 and not self.dp_gamma > 0):
            raise ValueError("distributed DP needs dp_gamma and dp_clip_norm together (and dp_sigma only with them)")
        if self.dp_count_scale and (self.dp_count_scale % 2 or not self.dp_sigma > 0):
            raise ValueError("dp_count_scale must be even, and needs dp_sigma > 0 (it is noised like the update)")

    @property
    def count_coordinates(self) -> int:
        """Coordinates sent after the subset: 1 for the clipped-count bit, else 0."""
        return 1 if self.dp_count_scale else 0

    @property
    def distributed_dp(self) -> bool:
        return self.dp_gamma > 0


@dataclass(frozen=True)
class SecAggTask:
    """Stage advertise: train on `task`, keep the encoded result, advertise fresh keys."""

    task: TrainTask
    spec: SecAggSpec = field(default_factory=SecAggSpec)
    sharing: int = bounded(SHARING_VERSION, SHARING_VERSION, kw_only=True)  # required: see SHARING_VERSION


@dataclass(frozen=True)
class KeyAdvertisement:
    device_id: str
    round_id: int = bounded(*_NON_NEGATIVE)
    task_id: str
    cipher_public: bytes
    mask_public: bytes
    model_sha256: str  # sha256 (hex) of the task's params: what the device trained from
    signature: bytes = b""  # Ed25519 over identity.transcript(...); empty: a device without an identity key

    def __post_init__(self) -> None:
        _check_advertised(self)


@dataclass(frozen=True)
class PeerKeys:
    device_id: str
    cipher_public: bytes
    mask_public: bytes
    model_sha256: str
    signature: bytes = b""  # the peer's own, relayed unchanged

    def __post_init__(self) -> None:
        _check_advertised(self)


@dataclass(frozen=True)
class KeyDirectory:
    """Stage share: the cohort (every device that advertised) and the keys of this device's
    neighbours. The device rebuilds the graph itself from cohort, neighbours and graph_seed."""

    device_id: str
    round_id: int = bounded(*_NON_NEGATIVE)
    task_id: str
    cohort: tuple[str, ...]
    neighbours: int = bounded(1, MAX_COHORT)  # k
    threshold: int = bounded(1, MAX_COHORT)  # t
    graph_seed: int = bounded(*_NON_NEGATIVE)
    keys: tuple[PeerKeys, ...] = ()

    def __post_init__(self) -> None:
        if len(self.cohort) > MAX_COHORT or len(self.keys) > MAX_COHORT:
            raise ValueError(f"at most {MAX_COHORT} devices in a cohort")


@dataclass(frozen=True)
class SealedShare:
    """One pair's shares, encrypted for the receiver (keys.encrypt_share): the coordinator
    relays it and cannot open it. `peer` is the receiver going up, the sender coming down."""

    peer: str
    ciphertext: bytes

    def __post_init__(self) -> None:
        if len(self.ciphertext) not in SEALED_SIZES:
            raise ValueError(f"ciphertext must be one of {SEALED_SIZES} bytes, got {len(self.ciphertext)}")


@dataclass(frozen=True)
class EncryptedShares:
    """One sealed box per neighbour whose keys the KeyDirectory carried, concatenated in
    neighbour-id order: ids and framing per neighbour would cost more than the box itself."""

    device_id: str
    round_id: int = bounded(*_NON_NEGATIVE)
    task_id: str
    boxes: bytes = b""

    def __post_init__(self) -> None:
        if len(self.boxes) % TAG_BYTES or len(self.boxes) > MAX_COHORT * MAX_SEALED:
            raise ValueError(f"boxes must be whole boxes ({SEALED_SIZES} bytes), at most {MAX_COHORT}")


@dataclass(frozen=True)
class ShareDelivery:
    """Stage mask: the shares addressed to this device, from the neighbours that shared."""

    device_id: str
    round_id: int = bounded(*_NON_NEGATIVE)
    task_id: str
    shares: tuple[SealedShare, ...] = ()


@dataclass(frozen=True)
class MaskedInput:
    device_id: str
    round_id: int = bounded(*_NON_NEGATIVE)
    task_id: str
    length: int = bounded(1, 2**31 - 1)  # d: coordinates
    field_bits: int = bounded(2, 32)
    data: bytes  # packing.pack(y, field_bits): exactly ceil(d m / 8) bytes
    num_examples: int = bounded(0, 2**32 - 1, 0)  # reported only; SecAgg sums with equal weights
    # Senders whose share did not open here (session.receive_shares): this device holds no share
    # of them. Off the wire while empty, so coordinators built before it still read the rest.
    unopened: tuple[str, ...] = field(default=(), metadata={"omit_default": True})

    def __post_init__(self) -> None:
        _check_len("data", self.data, (self.length * self.field_bits + 7) // 8)


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage unmask: who survived (their self-mask shares are wanted) and who dropped after
    sharing (their mask-key shares are wanted), for the model the cohort committed to."""

    device_id: str
    round_id: int = bounded(*_NON_NEGATIVE)
    task_id: str
    alive: tuple[str, ...]
    dropped: tuple[str, ...]
    model_sha256: str

    def __post_init__(self) -> None:
        _check_sha(self.model_sha256)
        if len(self.alive) + len(self.dropped) > 2 * MAX_COHORT:
            raise ValueError(f"at most {MAX_COHORT} devices in a cohort")


@dataclass(frozen=True)
class UnmaskResponse:
    """One share value (16 bytes plain, 8 packed) per owner the device holds shares of (the senders of its
    ShareDelivery) that the request lists, in owner-id order: the self-mask share for an alive
    owner, the mask-key share for a dropped one. The coordinator knows both lists."""

    device_id: str
    round_id: int = bounded(*_NON_NEGATIVE)
    task_id: str
    values: bytes = b""

    def __post_init__(self) -> None:
        if len(self.values) % VALUE_UNIT or len(self.values) > MAX_COHORT * MAX_VALUE:
            raise ValueError(f"values must be whole share values ({VALUE_UNIT} or {MAX_VALUE} bytes), "
                             f"at most {MAX_COHORT}")


SECAGG_MESSAGE_TYPES: dict[int, type] = {
    15: SecAggTask,
    16: KeyAdvertisement,
    17: KeyDirectory,
    18: EncryptedShares,
    19: ShareDelivery,
    20: MaskedInput,
    21: UnmaskRequest,
    22: UnmaskResponse,
}
