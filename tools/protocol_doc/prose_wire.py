"""Hand-written sections of docs/PROTOCOL.md on bytes: the message frame, the update payload,
chunking and size limits. The words are written here; every offset, size, magic and limit is
read from the codec modules (their struct formats, constants and defaults), so the prose
cannot go on saying a number the code no longer uses."""

from __future__ import annotations

import inspect
import struct

from fedge.coordinator.config import CoordinatorConfig
from fedge.edge_runtime.kernel import codec, update_codec
from fedge.edge_runtime.kernel.compress import LEVELS
from fedge.edge_runtime.kernel.protocol import MAX_EXAMPLES, MAX_TEXT, OPTIMIZERS, QUANT_BITS, SCHEMA_VERSION
from fedge.edge_runtime.kernel.transport import chunks
from fedge.edge_runtime.kernel.transport import mqtt as mqtt_transport
from fedge.edge_runtime.kernel.transport.settings import MqttSettings
from fedge.edge_runtime.kernel.wire_fields import MAX_ITEMS, MAX_SMALL_FRAME


def struct_rows(fmt: struct.Struct, names: list[str]) -> list[str]:
    """Table rows (offset, size, field) of a little-endian struct, one per name."""
    codes = _split(fmt.format.lstrip("<"))
    if len(codes) != len(names):
        raise ValueError(f"protocol_doc: {fmt.format} has {len(codes)} fields, the document names {len(names)}")
    rows, offset = [], 0
    for code, name in zip(codes, names):
        size = struct.calcsize("<" + code)
        rows.append(f"| {offset} | {size} | {name} |")
        offset += size
    return rows


def _split(fmt: str) -> list[str]:
    """'4sHBI' -> ['4s', 'H', 'B', 'I']."""
    out, digits = [], ""
    for ch in fmt:
        if ch.isdigit():
            digits += ch
        else:
            out.append(digits + ch)
            digits = ""
    return out


def _expect(holds: bool, what: str) -> None:
    if not holds:
        raise ValueError(f"protocol_doc: {what}; update the prose in tools/protocol_doc/prose_wire.py")


def _size(n: int) -> str:
    """Bytes, with the binary unit a config file would use."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n} ({n >> shift} {unit})"
    return str(n)


def small_kinds() -> str:
    return ", ".join(sorted(cls.__name__ for cls in codec.SMALL_TYPES))


def _default(func, name: str):
    return inspect.signature(func).parameters[name].default


def framing() -> str:
    head = ["| offset | size | field |", "|---:|---:|---|"]
    head += struct_rows(codec._HEADER, [f"magic `{codec.MAGIC.decode()}`", f"u16 schema version (= {SCHEMA_VERSION})",
                                        "u8 message type code (table above)", "u32 body length *n*"])
    head.append(f"| {codec.HEADER_SIZE} | *n* | body: one msgpack map `{{field name: value}}` |")
    _expect(codec._TRAILER.format.lstrip("<") == "I", "the message trailer is no longer one u32 CRC")
    head.append(f"| {codec.HEADER_SIZE} + *n* | {codec.TRAILER_SIZE} | u32 CRC-32 (zlib.crc32, the one in zip and PNG) "
                f"of bytes [0, {codec.HEADER_SIZE} + *n*): header and body |")
    table = "\n".join(head)
    return f"""## Message frame

Every message, in both directions and on every topic, is one frame (`edge_runtime/kernel/codec.py`), all
integers little-endian:

{table}

The body is plain msgpack (any msgpack library): a map from field name (str) to value. Write `bytes` fields as
msgpack **bin** (e.g. Python `msgpack.packb(..., use_bin_type=True)`), text as str, nested structures
(`hyper`, `compression`, ...) as maps, arrays as arrays, `dict[str, float]` as a map. The decoder is strict:

- an unknown field, a missing required field, or a value of the wrong type is refused (`malformed`);
  bool is never accepted as a number nor a number as bool; an int is accepted in a float field;
- every value is range-checked, on decode and on encode, with the limits in the field tables below: an int
  without its own range must fit a signed 64-bit integer, a float must be finite, a str holds at most
  {MAX_TEXT} characters (or its field's own bound) and no NUL, a list or map at most its field's cap (never more
  than {MAX_ITEMS} entries);
- a field with a default may be left out; a field marked "left out of the frame while it holds it" must be left
  out while it has its default, because fedge builds from before that field refuse unknown fields;
- a frame of a *small kind* ({small_kinds()}) longer than {_size(MAX_SMALL_FRAME)} bytes is refused before it is
  parsed;
- a frame with another schema version is refused (`wrong_version`); bytes after the CRC are refused.

Tensors never travel as msgpack arrays: they sit inside `bin` fields (`params`, `payload`, `correction`,
`control`) in the update frame described next.
"""


def update_payload() -> str:
    head = ["| offset | size | field |", "|---:|---:|---|"]
    head += struct_rows(update_codec._HEADER, [f"magic `{update_codec.MAGIC.decode()}`",
                                               f"u8 format version (writers: {update_codec.FORMAT_VERSION})",
                                               "u16 tensor count"])
    per = ["| size | field |", "|---:|---|"]
    per += [f"| {update_codec._NAME_LEN.size} | u16 name length *L* |", "| *L* | name, UTF-8 |",
            "| 1 | u8 bits: " + " \\| ".join(map(str, QUANT_BITS)) + " |",
            f"| 1 | u8 ndim (≤ {update_codec.MAX_NDIM}) |", "| 4 × ndim | u32 dims (C order) |",
            f"| 1 | u8 index coding: {update_codec.DENSE} dense, {update_codec.U32_INDICES} u32 indices (read "
            f"only), {update_codec.GAP_INDICES} gap varints |",
            "| 4 | f32 scale |", "| 4 | u32 *count*: values stored |",
            f"| 4 + *G* | coding {update_codec.GAP_INDICES} only: u32 byte length *G*, then *G* bytes of LEB128 gaps |",
            "| … | values: *count* × f32 (32 bits), *count* × int8 (8 bits), ⌈*count*/2⌉ bytes (4 bits) |"]
    # The per-tensor rows below are written out; these stop the generator if the layout moves under them.
    _expect(update_codec._NAME_LEN.format.lstrip("<") == "H", "tensor name length is no longer a u16")
    _expect(update_codec._KIND.format.lstrip("<") == "BB", "tensor kind is no longer (u8 bits, u8 ndim)")
    _expect(update_codec._TAIL.format.lstrip("<") == "BfI", "tensor tail is no longer (coding, scale, count)")
    _expect(update_codec._GAP_LEN.format.lstrip("<") == "I", "gap byte length is no longer a u32")
    example = update_codec.encode_dense({"w": [0.5, -0.25]}).hex(" ")
    levels = ", ".join(f"{bits} bits: codes in [−{n}, {n}]" for bits, n in LEVELS.items())
    return f"""## Update payload

The format of `Update.payload` and `Update.control` going up, and of `params` and `correction` going down
(`edge_runtime/kernel/update_codec.py`). Little-endian, never pickled:

{chr(10).join(head)}

then, per tensor:

{chr(10).join(per)}

and last a u32 CRC-32 (zlib.crc32) of every byte before it. Readers accept format versions
{", ".join(map(str, update_codec.READABLE_VERSIONS))}; version 1 knows codings {update_codec.DENSE} and
{update_codec.U32_INDICES} only.

**The delta is new − old.** `payload` holds, for each shared tensor, *your trained value minus the value the task
gave you* (`local_training.py`: `params[k] - shared[k]`). The coordinator adds the (weighted) mean of the deltas
to the global model (`strategies/base.py`: "delta = client params − global params"), times its server learning
rate (1 for FedAvg). A delta of the wrong sign trains the model backwards and no check can see it.

**Every shared tensor, exactly.** The shared tensors are the tensors in the task's `params` frame (or the
RoundModel's): same names, same shapes. The payload must hold each of them once, with that shape, and nothing
else; a missing, extra, renamed or reshaped tensor is refused as `bad_shape`. A tensor you did not change is sent
anyway (dense zeros, or sparse with *count* 0). Order does not matter; fedge writes them sorted by name.
Personal tensors (heads the device keeps) never travel.

**Dense fp32** (bits 32, coding {update_codec.DENSE}): *count* = number of elements, values are the delta itself
as f32, **scale is 0.0**: a non-zero scale on an fp32 tensor is refused (`bad_shape`), it is not a multiplier.

**int8 / 4-bit** (bits 8 or 4): value = code × scale, with the code an int8 and scale the tensor's one f32
(finite, ≥ 0); {levels}. 4-bit codes are stored as nibbles *code + 8* (so 1…15), two per byte, the first
value in the low nibble; an odd count ends with a 0 pad nibble, and a 0 nibble anywhere else (code −8) is
refused. fedge rounds stochastically (unbiased, `compress.quantize_stochastic`) with scale = max|x| / L; any
rounding that keeps codes in range decodes.

**Top-k (sparse)**: coding {update_codec.GAP_INDICES}. The kept entries' flat (C-order) indices must be strictly
increasing; they travel as the gaps g₀ = i₀, gⱼ = iⱼ − iⱼ₋₁ − 1, each an unsigned LEB128 varint (7 bits a byte, low
group first, high bit = more follows; at most 5 bytes, no trailing 0x00 continuation byte). Values follow in the
same order, in any of the three bit widths. Entries not sent decode as 0.

**Which encoding?** The task's `compression` (a [CompressionSpec](#compressionspec)) says what the coordinator
asks for: `quant_bits`, `topk_fraction`, `clip_norm` (clip the whole delta's L2 norm to it before sending) and
`error_feedback`. Error feedback — keeping what rounding and top-k did not send and adding it to the next delta —
is entirely the client's business: nothing about it travels. (The coordinator checks the payload's structure and
norm, not that it used the asked-for bits; see the notes at the end.)

**Checked on arrival**, in this order (`coordinator/validation.py`): frame size, message frame, round and task,
update id not yet seen, `model_id`/`base_version`, `num_examples` > 0, payload structure against the model's
shapes, finite values, the L2 norm of the whole decoded delta against `norm_bound` (default
{CoordinatorConfig().norm_bound:g} = off), then, in a SCAFFOLD round, the same for `control`.

**num_examples** must be ≥ 1 (0 is refused as `malformed`; the wire range allows up to {MAX_EXAMPLES}). With
the default `weighting = "examples"` an update weighs min(num_examples, `max_examples` =
{CoordinatorConfig().max_examples}); in a SCAFFOLD round every update weighs 1.

Example: `encode_dense({{"w": [0.5, -0.25]}})`, one dense fp32 tensor named `w` of shape (2,):

```
{example}
```

Task parameters that are not field ranges: `hyper.optimizer` is one of {", ".join(OPTIMIZERS)};
`hyper.epochs` and `hyper.batch_size` ≥ 1 and `hyper.lr` > 0; `compression.quant_bits` is one of
{", ".join(map(str, QUANT_BITS))}; `compression.topk_fraction` is in (0, 1] (1 = dense).
"""


def chunking() -> str:
    head = ["| offset | size | field |", "|---:|---:|---|"]
    head += struct_rows(chunks._HEADER, [f"magic `{chunks.CHUNK_MAGIC.decode()}`",
                                         f"u16 chunk format version (= {chunks.CHUNK_VERSION})",
                                         "message id: 16 random bytes, one per chunked message",
                                         "u32 index of this chunk (0-based)", "u32 count of chunks",
                                         "u32 total length of the whole message", "sha256 of the whole message"])
    head.append(f"| {chunks.CHUNK_HEADER_SIZE} | … | this chunk's slice of the message |")
    settings = MqttSettings()
    reassembler = chunks.Reassembler.__init__
    return f"""## Chunking

MQTT brokers cap a packet (the shipped Mosquitto configs set `max_packet_size`; an MQTT 5 broker announces its
cap in CONNACK). A message longer than what one PUBLISH can carry (the cap, less {mqtt_transport._PUBLISH_OVERHEAD}
bytes kept for the packet's own header and the topic's length) is cut into chunk frames, published in order
on **the same topic** with the same QoS (`edge_runtime/kernel/transport/chunks.py`):

{chr(10).join(head)}

Slice *i* is bytes [*i*·*r*, (*i*+1)·*r*) of the message, with *r* = chunk size − {chunks.CHUNK_HEADER_SIZE}.
A whole message starts with `{codec.MAGIC.decode()}`, a chunk with `{chunks.CHUNK_MAGIC.decode()}`: the receiver
tells them apart by the first four bytes, joins the chunks of one (topic, message id) in index order, checks the
total length and sha256, and decodes the result as one message. Chunks may repeat and come in any order. A set
not complete within {settings.chunk_expiry_s:g} s (its default `chunk_expiry_s`) is dropped; one sender may have at
most {chunks.MAX_SETS_PER_SENDER} sets open, and a set may declare at most the receiver's inbound limit (for the
coordinator: its `max_update_bytes`). Retained messages (Announcement, ModelPart) are never chunked: a
ModelPart must fit one packet. A client that keeps every message under the broker's packet size never needs
chunks. (`Reassembler` defaults: {_size(_default(reassembler, "max_message_bytes"))} bytes a message,
{_size(_default(reassembler, "max_pending_bytes"))} bytes pending.)
"""


def size_limits() -> str:
    cfg = CoordinatorConfig()
    max_elements = _default(update_codec.decode_tensors, "max_elements")
    over = "coordinator `max_update_bytes`; over it: `oversize`, **no Ack**"
    device = _size(MqttSettings().max_message_bytes)
    return f"""## Size limits

| what | limit | where |
|---|---|---|
| an Update frame (whole message, after reassembly) | {_size(cfg.max_update_bytes)} bytes by default | {over} |
| a small-kind frame ({small_kinds()}) | {_size(MAX_SMALL_FRAME)} bytes | `wire_fields.MAX_SMALL_FRAME` |
| elements declared by one payload, all tensors together | {max_elements} | `update_codec.decode_tensors` |
| dimensions of one tensor | {update_codec.MAX_NDIM} | `update_codec.MAX_NDIM` |
| tensors in one payload | {0xFFFF} | u16 count |
| entries of a list or map field | {MAX_ITEMS}, or the field's own cap | `wire_fields.MAX_ITEMS` |
| characters of a str field | {MAX_TEXT}, or the field's own bound | `wire_fields.MAX_TEXT` |
| a message a fedge device publishes or accepts | {device} bytes by default | `[broker] max_message_bytes` |
"""
