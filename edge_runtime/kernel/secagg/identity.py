"""Signed key advertisements: without them the coordinator, which relays every public key,
could hand each device keys of its own and read every share and every masked input.

Each device holds an Ed25519 identity key provisioned out of band; every device holds the
fleet's directory of identity public keys (device id -> 32 bytes), from the same trusted
source as its broker credentials, never from the coordinator. A device signs its round keys
together with the round and the model hash it trained from (the transcript below), and checks
each neighbour's signature against the directory before it shares anything, so a substituted
key or a neighbour shown another model fails by name.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def generate_identity() -> tuple[bytes, bytes]:
    """(raw private key, raw public key), 32 bytes each."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    return private, key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def transcript(round_id: int, device_id: str, cipher_public: bytes, mask_public: bytes, model_sha256: str) -> bytes:
    """What a device signs: its two round keys, bound to the round, its id and the model hash."""
    ident = device_id.encode()
    return (b"fedge-secagg/v1/advertise\0" + round_id.to_bytes(8, "big") + len(ident).to_bytes(2, "big") + ident
            + cipher_public + mask_public + model_sha256.encode())


def sign(identity_private: bytes, message: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(identity_private).sign(message)


def verify(identity_public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(identity_public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
