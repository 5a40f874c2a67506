"""Key agreement and share encryption (all primitives from `cryptography`).

Each device of a round holds two X25519 key pairs: the *cipher* pair, whose agreement keys
the AEAD that protects its shares on their way through the coordinator, and the *mask* pair,
whose agreement seeds the pairwise masks. They are separate so that revealing a dropped
device's mask secret (to remove its masks) does not open the shares it sent or received.

Both agreements go through HKDF-SHA256 with an `info` naming the round, the purpose and the
pair in sorted order, so a seed is bound to one round and one pair: the same keys reused in
another round, or another pair's seed, give unrelated values.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
TAG_BYTES = 16  # Poly1305
# The nonce is not sent: it is the direction of the pair (0 from the smaller id, 1 from the
# larger). Safe because a cipher key is fresh per round and pair (new X25519 keys every round)
# and encrypts one message each way; session.shares_for_neighbours refuses to run twice, and
# the device resends its first ciphertexts rather than encrypting again.
_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class ShareDecryptionFailed(ValueError):
    """A ciphertext that does not open under the pair's key: forged, altered or misrouted."""


@dataclass(frozen=True)
class KeyPair:
    private: bytes  # raw X25519 private key (32 bytes); never leaves the device
    public: bytes  # raw X25519 public key (32 bytes)


def generate_keypair() -> KeyPair:
    key = X25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    return KeyPair(private, key.public_key().public_bytes(*_RAW))


def keypair_from_seed(seed: bytes) -> KeyPair:
    """The mask key pair a 16-byte seed stands for (HKDF to the 32-byte private key): the seed
    is what is Shamir-shared, so a dropped device's shares give its mask key back."""
    private = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                   info=b"fedge-secagg/v1/mask-key").derive(seed)
    return KeyPair(private, public_of(private))


# Any fixed scalar: X25519 clamps every scalar to a multiple of the cofactor 8, so a point of
# small order (32 zero bytes is one of eight encodings) gives the all-zero agreement with every
# private key, which `cryptography` refuses. One trial agreement tells them all.
_PROBE = X25519PrivateKey.from_private_bytes(bytes(range(1, KEY_BYTES + 1)))


def contributory(public: bytes) -> bool:
    """Whether agreements with this public key are usable: False for a small-order point, with
    which every neighbour's agreement would fail (a device that advertised one made its whole
    cohort decline the mask stage)."""
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return False
    return True


def public_of(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(*_RAW)


def pair_secret(private: bytes | X25519PrivateKey, peer_public: bytes | X25519PublicKey, round_id: int,
                purpose: str, a: str, b: str, length: int = KEY_BYTES) -> bytes:
    """`length` bytes (32: a ChaCha20 key; 16: an AES-128 mask seed) both ends of the pair (a, b)
    derive alike: HKDF over their X25519 agreement,
    bound to the round, the purpose ("mask" or "cipher") and the unordered pair. The keys may
    come loaded (`cryptography` key objects): loading costs as much as the agreement, and the
    coordinator pairs one dropped device's key with a hundred survivors'."""
    if isinstance(peer_public, bytes):
        if len(peer_public) != KEY_BYTES:
            raise ValueError(f"a public key is {KEY_BYTES} bytes, got {len(peer_public)}")
        peer_public = X25519PublicKey.from_public_bytes(peer_public)
    if isinstance(private, bytes):
        private = X25519PrivateKey.from_private_bytes(private)
    shared = private.exchange(peer_public)
    lo, hi = sorted((a, b))
    info = f"fedge-secagg/v1/{purpose}/{round_id}/{lo}/{hi}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(shared)


def _associated(round_id: int, sender: str, receiver: str) -> bytes:
    # Direction is part of the authenticated data: a ciphertext from a to b cannot be replayed as b's to a.
    return f"fedge-secagg/v1/share/{round_id}/{sender}/{receiver}".encode()


def _nonce(sender: str, receiver: str) -> bytes:
    return bytes(11) + (b"\x00" if sender < receiver else b"\x01")


def encrypt_share(key: bytes, round_id: int, sender: str, receiver: str, plaintext: bytes) -> bytes:
    """Ciphertext and tag (len(plaintext) + 16 bytes); call once per key and direction."""
    return ChaCha20Poly1305(key).encrypt(_nonce(sender, receiver), plaintext, _associated(round_id, sender, receiver))


def decrypt_share(key: bytes, round_id: int, sender: str, receiver: str, ciphertext: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(_nonce(sender, receiver), ciphertext,
                                             _associated(round_id, sender, receiver))
    except (InvalidTag, ValueError) as exc:
        raise ShareDecryptionFailed(f"share {sender} -> {receiver} of round {round_id} does not open") from exc
