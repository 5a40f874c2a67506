"""The learned upload rate kept across restarts: `uplink_rate.json` in the device's state folder.

A Pi restarts often (power, updates); without this file each restart used the configured
guess again until MIN_OBSERVATIONS new uploads were timed (uplink_rate.py). The file holds the
observation window (rates, bytes per second, the last WINDOW of them), the last timed message's
envelope bytes, and the configured upload_bytes_per_s and upload_latency_s they were learned
under. Written only when an Ack adds an observation, atomically and without fsync: losing it
(a power cut) is harmless, the device relearns, and the durable writes a task costs stay two
(README "What a device writes to disk"). With learn_upload_rate = false it is neither read nor
written.

Read at start, at most MAX_FILE_BYTES of it. A file that is missing, unreadable, over that size,
not the shape written here (wrong types, NaN, inf, a rate <= 0, more than WINDOW entries), or
learned under another configured rate or latency is ignored with one log line: the device starts
from the configured rate, as with no file. It never stops the device. Of a window it restores it
keeps only the rates at or below the configured one (restore: the board may be on a slower link
now); faster ones are relearned.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from .kernel.files import TooLarge, atomic_write_bytes, read_capped
from .uplink_rate import WINDOW, UplinkRate

log = logging.getLogger("fedge.agent")

MAX_FILE_BYTES = 4096  # what this module writes is under 500 bytes (8 floats, 2 numbers, 1 int)
MAX_ENVELOPE_BYTES = 1 << 20  # ids and metrics, about 235 bytes; past a MiB it is no envelope fedge sent
RATE_FILE_IGNORED = "upload_rate_file_ignored"  # logged with the reason a kept rate was not used


def save(rate: UplinkRate, path: Path) -> None:
    """Keep `rate`'s window; a write that fails is logged (the estimate stays in memory for this run)."""
    body = {"upload_bytes_per_s": rate.configured, "upload_latency_s": rate.latency_s,
            "observations": list(rate.observations), "envelope_bytes": rate.envelope_bytes}
    try:
        # durable=False: a lost or emptied file is ignored at the next start and relearned (docstring)
        atomic_write_bytes(path, json.dumps(body).encode(), durable=False)
    except OSError as exc:
        log.warning("device %s: %s not written (%s); the learned upload rate lasts until the device stops",
                    rate.device_id, path, exc)


def restore(rate: UplinkRate, path: Path) -> None:
    """Fill `rate`'s window from `path` when it is a file this module wrote under the same
    configuration; else leave it empty and log why."""
    try:
        observations, envelope = _read(path, rate)
    except _Ignored as why:
        log.log(why.level, "device %s: %s not used (%s: %s); starting from the configured upload rate %.0f bytes/s",
                rate.device_id, path, RATE_FILE_IGNORED, why, rate.configured)
        return
    # A kept rate is believed only where it makes the margin larger than the configured guess:
    # the board may have moved to a slower link since it was learned (carried from a LAN to a
    # cellular modem), and a margin too small loses the task's whole work (stale_round) where one
    # too large costs a little training time. Faster rates are relearned from this run's uploads.
    slower = [x for x in observations if x <= rate.configured]
    rate.observations.extend(slower)
    rate.envelope_bytes = envelope
    log.info("device %s: %d upload rate observations restored from %s (%d faster than the configured rate "
             "left to relearn): upload rate %.0f bytes/s (configured %.0f)", rate.device_id, len(slower), path,
             len(observations) - len(slower), rate.bytes_per_s, rate.configured)


class _Ignored(Exception):
    def __init__(self, reason: str, level: int = logging.WARNING):
        super().__init__(reason)
        self.level = level


def _read(path: Path, rate: UplinkRate) -> tuple[list[float], int]:
    try:
        data = read_capped(path, MAX_FILE_BYTES)  # a FIFO would block the start; /dev/zero fill memory
    except FileNotFoundError:
        raise _Ignored("no file yet", logging.INFO) from None
    except TooLarge:
        raise _Ignored(f"over {MAX_FILE_BYTES} bytes") from None
    except OSError as exc:
        raise _Ignored(f"unreadable: {exc}") from None
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: `[[[[...` nested a few thousand deep
        raise _Ignored("not JSON") from None
    if not isinstance(body, dict):
        raise _Ignored("not a JSON object")
    # The observations depend on the configured values: each censored one is max(bytes / floor,
    # configured), each is measured past latency_s, and the estimate is clamped around the
    # configured rate. An operator who re-set the guess wants it used, not a window learned
    # under the old one.
    configured, latency = body.get("upload_bytes_per_s"), body.get("upload_latency_s")
    if not (_number(configured) and _number(latency)):
        raise _Ignored("upload_bytes_per_s or upload_latency_s not a number")
    if configured != rate.configured or latency != rate.latency_s:
        raise _Ignored("learned under another upload_bytes_per_s or upload_latency_s", logging.INFO)
    observations, envelope = body.get("observations"), body.get("envelope_bytes")
    if not isinstance(observations, list) or len(observations) > WINDOW:
        raise _Ignored(f"observations not a list of at most {WINDOW}")
    if not all(_positive_number(x) for x in observations):
        raise _Ignored("an observation is not a finite rate > 0")
    if not (_integer(envelope) and 0 <= envelope <= MAX_ENVELOPE_BYTES):
        raise _Ignored(f"envelope_bytes not an integer in [0, {MAX_ENVELOPE_BYTES}]")
    return [float(x) for x in observations], envelope


def _integer(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _number(x) -> bool:
    """A finite float, or an int float() takes (one of 400 digits would overflow)."""
    return math.isfinite(x) if isinstance(x, float) else _integer(x) and abs(x) < 1 << 64


def _positive_number(x) -> bool:
    return _number(x) and x > 0
