"""Identity keys on disk: a device's Ed25519 private key (32 raw bytes, mode 0600) and the
fleet's directory of identity public keys (JSON: device id -> hex). `fedge provision identity`
writes both; a device reads its key and the directory at start ([secagg] in its config). The
directory reaches every device the way its broker credentials do, never via the coordinator."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError
from ..files import atomic_write_bytes, read_capped
from .identity import generate_identity


def write_identity(path: str | Path, *, overwrite: bool = False) -> bytes:
    """A new identity key at `path` (mode 0600); returns its public key."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; pass --force to replace this device's identity")
    private, public = generate_identity()
    atomic_write_bytes(path, private, mode=0o600)  # 0600 from its first byte (a chmod after left a moment)
    return public


def load_identity(path: str | Path) -> bytes:
    try:
        key = read_capped(path, 64)  # 32 bytes; a FIFO or /dev/zero is refused, not read
    except OSError as exc:
        raise ConfigError(f"secagg identity {path}: {exc}") from None
    if len(key) != 32:
        raise ConfigError(f"secagg identity {path}: an Ed25519 key is 32 bytes, got {len(key)}")
    return key


# A directory of a million devices is about 85 MB of JSON; past this it is no directory fedge wrote
MAX_DIRECTORY_BYTES = 256 << 20


def load_directory(path: str | Path) -> dict[str, bytes]:
    try:
        text = read_capped(path, MAX_DIRECTORY_BYTES)  # a FIFO or /dev/zero: refused, not read
        if not text.strip():  # said plainly: JSON's own error for it is "Expecting value: line 1 column 1"
            raise ConfigError(f"secagg directory {path} is empty: `fedge provision identity --directory` fills it")
        raw = json.loads(text)
        directory = {str(k): bytes.fromhex(v) for k, v in raw.items()}
    except RecursionError:  # `[[[[...` nested a few thousand deep
        raise ConfigError(f"secagg directory {path}: not a JSON object of device id -> hex key") from None
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise ConfigError(f"secagg directory {path}: {exc}") from None
    bad = [k for k, v in directory.items() if len(v) != 32]
    if bad:
        raise ConfigError(f"secagg directory {path}: keys of {', '.join(bad[:5])} are not 32 bytes")
    return directory


def directory_changes(old: dict[str, bytes], new: dict[str, bytes]) -> tuple[set[str], set[str], set[str]]:
    """(added, removed, re-keyed) from `old` to `new`: what a reload says (device and coordinator)."""
    return new.keys() - old.keys(), old.keys() - new.keys(), {d for d in new.keys() & old.keys() if new[d] != old[d]}


def add_to_directory(path: str | Path, device_id: str, public: bytes) -> None:
    path = Path(path)
    directory = load_directory(path) if path.exists() else {}
    directory[device_id] = public
    atomic_write_bytes(path, json.dumps({k: v.hex() for k, v in sorted(directory.items())}, indent=1).encode())
