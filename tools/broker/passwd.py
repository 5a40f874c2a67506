"""Mosquitto password files, written in Python (no mosquitto_passwd needed on the ops machine).

A line is `username:$7$<iterations>$<base64 salt>$<base64 key>`: Mosquitto 2.0's format,
PBKDF2-HMAC-SHA512 with a 12-byte salt, a 64-byte key and 101 iterations by default, as
mosquitto_passwd 2.0 writes it (tests check both against the real broker and tool).

Mosquitto 2.0 reads this file after dropping root to the `mosquitto` user, so on a server the
file must be owned by (or group-readable to) that user; `upsert_password` keeps the owner and
group of the file it replaces, and always writes mode 0600.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pwd
import secrets
import tempfile
from pathlib import Path

from fedge.edge_runtime.kernel.errors import ConfigError

PBKDF2_ITERATIONS = 101  # mosquitto_passwd 2.0's default
SALT_BYTES = 12
KEY_BYTES = 64  # a SHA-512 digest


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """The `$7$...` hash Mosquitto 2.0 accepts for `password`."""
    if iterations < 1:
        raise ConfigError(f"iterations must be >= 1, got {iterations}")
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    key = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, KEY_BYTES)
    return f"$7${iterations}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, encoded: str) -> bool:
    """True if `password` matches a `$7$` (2.0) or `$6$` (1.x, salted SHA-512) hash."""
    parts = encoded.split("$")
    try:
        if len(parts) == 5 and parts[1] == "7":
            salt, key = base64.b64decode(parts[3]), base64.b64decode(parts[4])
            got = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, int(parts[2]), len(key))
            return hmac.compare_digest(got, key)
        if len(parts) == 4 and parts[1] == "6":
            salt, key = base64.b64decode(parts[2]), base64.b64decode(parts[3])
            return hmac.compare_digest(hashlib.sha512(password.encode("utf-8") + salt).digest(), key)
    except ValueError:  # bad base64 or iteration count
        return False
    return False


def generate_password(nbytes: int = 24) -> str:
    """A random password, URL-safe (no quoting needed in TOML or shells)."""
    return secrets.token_urlsafe(nbytes)


def read_password_file(path: str | Path) -> dict[str, str]:
    """username -> hash, in file order; a missing file is empty (ConfigError as _read_lines)."""
    return dict(line.partition(":")[::2] for line in _read_lines(path) if _is_entry(line))


def _read_lines(path: str | Path) -> list[str]:
    """The file's lines, once each is a comment, blank, or a `user:$<hash>` entry; [] for a
    missing file. Anything else is a ConfigError naming the line: `--passwd-file` once took the
    broker's .conf (or any text file) as one, and the rewrite appended ':' to each of its lines;
    a binary file or a folder was a traceback."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except UnicodeDecodeError:
        raise ConfigError(f"password file {path}: not text (not UTF-8); not a Mosquitto password file") from None
    except OSError as exc:  # a folder, no permission
        raise ConfigError(f"password file {path}: cannot be read: {exc.strerror or exc}") from None
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if not _is_entry(line):
            continue
        name, _, encoded = line.partition(":")
        # Any scheme: fedge writes $7$ (Mosquitto 2.0's PBKDF2), and keeps the other users'
        # lines as they are, so a newer broker's hashes ($argon2id$..., mosquitto_passwd -H)
        # or a 1.x file's ($6$) are fine; a line with no "user:$..." shape means another file.
        if not (name and encoded.startswith("$") and len(encoded) > 1 and " " not in name):
            raise ConfigError(f"password file {path}, line {number}: {line[:60]!r} is no Mosquitto password "
                              "entry (user:$<hash>); is it the password file? fedge rewrites only those")
    return lines


def _is_entry(line: str) -> bool:
    """Not blank and not a comment: a line that must be (and, once read, is) a user's entry."""
    return bool(line.strip()) and not line.startswith("#")


def upsert_password(path: str | Path, username: str, password: str, *,
                    iterations: int = PBKDF2_ITERATIONS) -> None:
    """Add `username` to the password file, or replace its hash; atomic, mode 0600."""
    _check_username(username)
    entry = f"{username}:{hash_password(password, iterations=iterations)}"
    lines, found = _lines_with(path, username, entry)
    write_private_file(path, "".join(f"{line}\n" for line in lines + ([] if found else [entry])),
                       new_owner=BROKER_USER)


def remove_user(path: str | Path, username: str) -> bool:
    """Drop `username` from the password file; False if it was not there."""
    lines, found = _lines_with(path, username, None)
    if found:
        write_private_file(path, "".join(f"{line}\n" for line in lines))
    return found


def _lines_with(path: str | Path, username: str, entry: str | None) -> tuple[list[str], bool]:
    """The file's lines with `username`'s entry replaced by `entry` (dropped when None), and
    whether it had one. Comments, blank lines and the order stay as the person who wrote the
    file left them: fedge rewrites only its users' lines."""
    out, found = [], False
    for line in _read_lines(path):  # refuses a file that is not a password file, before it is rewritten
        if _is_entry(line) and line.partition(":")[0] == username:
            if entry is not None and not found:  # a second line for the same user goes
                out.append(entry)
            found = True
            continue
        out.append(line)
    return out, found


def _check_username(username: str) -> None:
    if not username or any(c in username for c in ":\n\r\0"):
        raise ConfigError(f"invalid broker username {username!r}: must be non-empty, without ':' or line breaks")


def write_private_file(path: str | Path, text: str, new_owner: str | None = None) -> None:
    """Write `text` to `path` atomically, mode 0600, keeping the owner of a file it replaces
    (a reader, e.g. a reloading broker, sees the old file or the new one, never half). A file
    it creates as root goes to `new_owner` when that user exists: the password file to the
    `mosquitto` user, which Mosquitto 2.0 drops to before it reads it (root's 0600 file it cannot)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.stat() if path.exists() else None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        if os.geteuid() == 0:
            owner = (old.st_uid, old.st_gid) if old is not None else _user_ids(new_owner)
            if owner is not None:
                os.chown(tmp, *owner)  # keep (or make) it readable by the mosquitto user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


BROKER_USER = "mosquitto"  # the user Debian's mosquitto runs as


def _user_ids(name: str | None) -> tuple[int, int] | None:
    if not name:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None  # no such user here: the file stays root's
    return entry.pw_uid, entry.pw_gid
