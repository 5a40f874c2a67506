"""Value ranges of wire fields, and `bounded`, which attaches one to a dataclass field.
Shared by protocol.py and the secure-aggregation messages (secagg/messages.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .device_folder import RESERVED

# Value ranges, checked by the codec on decode and encode (codec._check_range). An int field
# without its own range must fit a signed 64-bit integer, the widest a SQLite INTEGER column
# holds; a float field without one must be finite. A message that claimed 2**63 examples once
# killed the coordinator inside SQLite; now it is MalformedPayload before any handler sees it.
I64 = (-(2**63), 2**63 - 1)
# One device's dataset, at most: far above any edge device (4e9 examples), far below where
# a float64 sum of a round's weights loses integer precision.
MAX_EXAMPLES = 2**32 - 1
# A str field holds at most this many characters unless its range says otherwise (its [lo, hi]
# then bounds the length): ids, reasons and hashes are short, and a reason becomes a key of the
# coordinator's decline counts and a row of its store, so a 16 MB reason must not get that far.
MAX_TEXT = 256
_FREE_TEXT = (0, 1 << 15)  # human-readable details: logged, never kept (32 Ki characters: a traceback fits)
# Items a list or map field may hold unless its field says fewer (list_field): what msgpack is
# told before it builds anything, so a 16 MB frame of one-byte items (16.7 M Python objects, 10 s
# of the coordinator's one thread) is refused before it is built.
MAX_ITEMS = 1 << 16
# Frames of these kinds hold a few ids and numbers: a check-in, a decline, a fetch request, an
# Ack. They are refused (too large) past this size before any parsing, whatever
# [coordinator] max_update_bytes allows an Update (codec.SMALL_TYPES).
MAX_SMALL_FRAME = 1 << 18
_NON_NEGATIVE = (0, I64[1])
_SECONDS = (0.0, 1e9)  # deadlines and pacing: 0 to ~31 years


# A model id names folders on the device (artifacts/<model_id>, state/<device>/<model_id>):
# one plain name, never a path ("../x" once made a download replace a folder outside the
# artifacts directory). The codec refuses any other on decode and encode, so neither side's
# handlers see one; manifest.check_model_id checks it again where a folder is named. Nor may it
# be a name the device's own folder holds beside its model folders (device_folder.RESERVED).
# compute_model_id gives 24 hex digits.
MODEL_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class TextPattern:
    """A regex a str field's whole value must match (the codec checks it on decode and encode),
    its short name (the protocol doc's), and what it is, for the refusal: "'x' is not <description>".
    reserved: whole values the regex matches that are refused all the same."""

    name: str
    regex: re.Pattern
    description: str
    reserved: frozenset[str] = frozenset()

    def fullmatch(self, text: str):
        return None if text in self.reserved else self.regex.fullmatch(text)


MODEL_ID = TextPattern("model id", MODEL_ID_PATTERN, "a model id (letters, digits, '_', '.', '-', at most 128, "
                       "beginning with a letter or digit, and none of the names a device's own folder holds: "
                       f"{', '.join(sorted(RESERVED))})", RESERVED)
# A sha256 as hexdigest() writes it, or empty (none given). A digest no file can have (junk, upper
# case, short) is refused on decode, where a device once waited out its artifact fetch timeout
# (120 s) for files that could never match it.
SHA256_HEX = TextPattern("sha256 or empty", re.compile(r"(?:[0-9a-f]{64})?"),
                         "a sha256 (64 lowercase hex digits) or empty")


def check_sha256_hex(name: str, value: str) -> None:
    """ValueError unless `value` is a sha256 as hexdigest() writes it."""
    if not value or not SHA256_HEX.fullmatch(value):
        raise ValueError(f"{name} must be 64 lowercase hex digits")


def sha256_field(**kw):
    """A str field holding a sha256 hex digest or "" (the codec checks SHA256_HEX)."""
    return field(metadata={"pattern": SHA256_HEX}, **kw)


def model_id_field(items: int | None = None, **kw):
    """A str field (or tuple of at most `items` of them) holding model ids: the codec checks
    MODEL_ID (MODEL_ID_PATTERN, and none of the device folder's reserved names)."""
    return field(metadata={"pattern": MODEL_ID, "items": items}, **kw)


def list_field(items: int, **kw):
    """A tuple or dict field of at most `items` entries (the codec checks, before it looks inside)."""
    return field(metadata={"items": items}, **kw)


def bounded(lo: float, hi: float, default=None, *, omit_default: bool = False, **kw):
    """A dataclass field whose value must lie in [lo, hi] (the codec checks it, and so does a
    config loader, configfile.from_dict, before the class's own checks).

    omit_default: the codec leaves the field out of a frame while it holds its default, so a
    field added to schema version 1 reaches peers built before it (their decoders refuse
    unknown fields) for as long as the feature that sets it is off."""
    if default is not None:
        kw["default"] = default
    return field(metadata={"range": (lo, hi), "omit_default": omit_default}, **kw)
