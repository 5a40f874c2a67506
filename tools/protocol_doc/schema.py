"""The generated half of docs/PROTOCOL.md: every wire message's topic, direction and fields,
each field's type and the limit the codec enforces, read from the dataclasses, their field
metadata (wire_fields.bounded, list_field, model_id_field) and the comments beside them. Nothing
here retypes a number: a limit changed in the code changes the document."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
import typing

from fedge.edge_runtime.kernel import codec, protocol
from fedge.edge_runtime.kernel.protocol import (
    ANNOUNCE_TOPIC,
    DEVICE_CHANNELS,
    I64,
    MAX_TEXT,
    all_devices_topic,
    device_topic,
    model_part_topic,
    shard_update_topic,
)
from fedge.edge_runtime.kernel.secagg import messages as secagg
from fedge.edge_runtime.kernel.wire_fields import MAX_ITEMS, MAX_SMALL_FRAME

DOWN, UP = "coordinator → device", "device → coordinator"
PARTS = "(the bytes of ModelParts; never published by itself)"

# Where each message travels: (channel, direction). A message type the codec speaks but this
# table lacks stops the generator, so a new message cannot ship without its line here.
ROUTES: dict[type, tuple[str, str]] = {
    protocol.CheckIn: ("checkin", UP),
    protocol.TrainTask: ("task", DOWN),
    protocol.Update: ("update", UP),
    protocol.Decline: ("update", UP),
    protocol.Ack: ("ack", DOWN),
    protocol.Status: ("status", UP),
    protocol.Pace: ("task", DOWN),
    protocol.FetchRequest: ("fetch", UP),
    protocol.ArtifactFile: ("artifact", DOWN),
    protocol.Announcement: ("announce", "coordinator → all devices (retained)"),
    protocol.RoundModel: ("", PARTS),
    protocol.ModelPart: ("model", "coordinator → all devices (retained)"),
    protocol.EvalTask: ("task", DOWN),
    protocol.EvalReport: ("update", UP),
    secagg.SecAggTask: ("task", DOWN),
    secagg.KeyAdvertisement: ("update", UP),
    secagg.KeyDirectory: ("task", DOWN),
    secagg.EncryptedShares: ("update", UP),
    secagg.ShareDelivery: ("task", DOWN),
    secagg.MaskedInput: ("update", UP),
    secagg.UnmaskRequest: ("task", DOWN),
    secagg.UnmaskResponse: ("update", UP),
}


def check_routes() -> None:
    missing = [cls.__name__ for cls in codec.MESSAGE_TYPES.values() if cls not in ROUTES]
    if missing:
        raise LookupError(f"protocol_doc: no topic/direction for {', '.join(missing)}; add them to ROUTES")


def topic_of(channel: str) -> str:
    if channel in DEVICE_CHANNELS:
        return f"`{device_topic('{d}', channel)}`"
    if channel == "announce":
        return f"`{ANNOUNCE_TOPIC}`"
    if channel == "model":
        return f"`{model_part_topic('{k}')}`"  # type: ignore[arg-type]  # a placeholder, not an index
    return "—"


def topics_table() -> str:
    """Every topic, who publishes on it and what travels there."""
    check_routes()
    rows = ["| topic | direction | messages |", "|---|---|---|"]
    for channel in (*DEVICE_CHANNELS, "announce", "model"):
        kinds = [cls for cls, (ch, _) in ROUTES.items() if ch == channel]
        direction = ROUTES[kinds[0]][1]
        rows.append(f"| {topic_of(channel)} | {direction} | {', '.join(c.__name__ for c in kinds)} |")
    shard = shard_update_topic(0, "{d}").replace("/shard/0/", "/shard/{s}/")
    rows.append(f"| `{shard}` | {UP} | Update, when its TrainTask has `shard` = s ≥ 0 |")
    every = all_devices_topic("{channel}")
    return "\n".join(rows) + f"\n\nThe coordinator subscribes to `{every}` for each upward channel."


def message_table() -> str:
    """Type code, name, topic, direction and size cap of every message."""
    check_routes()
    rows = ["| code | message | topic | direction | frame cap |", "|---:|---|---|---|---|"]
    for code, cls in sorted(codec.MESSAGE_TYPES.items()):
        channel, direction = ROUTES[cls]
        cap = f"{MAX_SMALL_FRAME} B (small kind)" if cls in codec.SMALL_TYPES else "receiver's limit"
        link = f"[{cls.__name__}](#{cls.__name__.lower()})"
        rows.append(f"| {code} | {link} | {topic_of(channel)} | {direction} | {cap} |")
    return "\n".join(rows)


def _num(value) -> str:
    """A limit as the reader wants it: powers of two spelled as such."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{value:g}" if isinstance(value, float) else repr(value)
    for k in range(16, 65):
        if value == -(2**k):
            return f"−2^{k}"
        for offset, text in ((0, f"2^{k}"), (-1, f"2^{k} − 1")):
            if value == 2**k + offset:
                return text
    return str(value)


def type_name(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return f"map ([{hint.__name__}](#{hint.__name__.lower()}))"
    if origin is tuple:
        return f"array of {type_name(args[0])}"
    if origin is dict:
        return f"map str → {type_name(args[1])}"
    return {bytes: "bin", str: "str", int: "int", float: "float", bool: "bool"}[hint]


def limit_of(hint, meta) -> str:
    """What codec._check_range and friends refuse, in words, for one field."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    bounds, items, pattern = meta.get("range"), meta.get("items"), meta.get("pattern")
    parts = []
    if origin in (tuple, dict):
        parts.append(f"≤ {_num(items if items is not None else MAX_ITEMS)} entries")
        if origin is dict:
            parts.append(f"keys ≤ {MAX_TEXT} chars")
        hint = args[-1]
    if dataclasses.is_dataclass(hint):
        return "; ".join(parts + ["fields as in its own table"])
    if pattern is not None:
        reserved = ", ".join(f"`{name}`" for name in sorted(pattern.reserved))
        parts.append(f"{pattern.name}: `{pattern.regex.pattern}`" + (f" but none of {reserved}" if reserved else ""))
    elif hint is str:
        parts.append(f"≤ {_num(bounds[1]) if bounds else MAX_TEXT} chars, no NUL")
    elif hint is int:
        lo, hi = bounds or I64
        parts.append(f"[{_num(lo)}, {_num(hi)}]")
    elif hint is float:
        parts.append(f"finite, [{_num(bounds[0])}, {_num(bounds[1])}]" if bounds else "finite")
    elif hint is bool:
        parts.append("true/false (0/1 refused)")
    elif hint is bytes:
        parts.append("raw bytes (msgpack bin, never str)")
    return "; ".join(parts)


def _default(f: dataclasses.Field) -> str:
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        return "**required**"
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if dataclasses.is_dataclass(value):
        return "its defaults"
    text = f"`{value!r}`" if not isinstance(value, bytes) else f"`{value!r}` (empty)"
    if f.metadata.get("omit_default"):
        text += ", left out of the frame while it holds it"
    return text


def comment_lines(source: str) -> dict[int, str]:
    """Line number -> the text of the comment on that line."""
    return {tok.start[0]: tok.string.lstrip("#").strip()
            for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}


def field_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment on its line and the comment lines right above it."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments = comment_lines(source)
    lines = source.splitlines()
    out = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, line = [], node.lineno - 1
        while line >= 1 and line in comments and lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        texts = above + ([comments[node.lineno]] if node.lineno in comments else [])
        out[node.target.id] = " ".join(texts)
    return out


def fields_table(cls: type) -> str:
    hints = typing.get_type_hints(cls)
    notes = field_comments(cls)
    rows = ["| field | type | default | limit (checked on decode and encode) | notes |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        note = notes.get(f.name, "").replace("|", "\\|")
        rows.append(f"| `{f.name}` | {type_name(hints[f.name])} | {_default(f)} | "
                    f"{limit_of(hints[f.name], f.metadata)} | {note} |")
    return "\n".join(rows)


def _doc(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    generated = doc.startswith(f"{cls.__name__}(")  # dataclass's own signature, not prose
    return "" if generated else " ".join(doc.split()) + "\n\n"


def nested_types() -> list[type]:
    """Dataclasses that appear inside messages (TaskHyper, CompressionSpec, ...), in first-seen order."""
    seen: dict[type, None] = {}

    def walk(cls: type) -> None:
        for hint in typing.get_type_hints(cls).values():
            for inner in (hint, *typing.get_args(hint)):
                if dataclasses.is_dataclass(inner) and inner not in seen:
                    seen[inner] = None
                    walk(inner)

    for cls in codec.MESSAGE_TYPES.values():
        walk(cls)
    return [cls for cls in seen if cls not in codec.MESSAGE_TYPES.values()]


def reference() -> str:
    """One section per message (code order), then the nested maps."""
    out = []
    for code, cls in sorted(codec.MESSAGE_TYPES.items()):
        channel, direction = ROUTES[cls]
        where = f"{topic_of(channel)}, {direction}" if channel else direction
        out.append(f"### {cls.__name__}\n\nType code {code}; {where}.\n\n{_doc(cls)}{fields_table(cls)}\n")
    for cls in nested_types():
        out.append(f"### {cls.__name__}\n\nA map inside other messages.\n\n{_doc(cls)}{fields_table(cls)}\n")
    return "\n".join(out)
