"""docs/PROTOCOL.md, the wire protocol for device clients fedge did not write, generated from
the code so it cannot drift from it (tests/test_protocol_doc.py compares the two).

    schema.py      topics, type codes and every message's field table (from the dataclasses)
    reasons.py     rejection, pace and decline reasons (from the errors and pace modules)
    prose_wire.py  hand-written: message frame, update payload, chunking, size limits
    prose_flow.py  hand-written: session flow, resends and dedupe, reasons, caveats

Regenerate with `fedge protocol-doc > docs/PROTOCOL.md`.
"""

from __future__ import annotations

import sys

from . import prose_flow, prose_wire, schema


def render() -> str:
    """The whole document, as Markdown."""
    sections = [
        prose_flow.intro(),
        prose_flow.transport(),
        "## Topics\n\n" + schema.topics_table() + "\n",
        "## Message types\n\n" + schema.message_table() + "\n",
        prose_wire.framing(),
        prose_wire.update_payload(),
        prose_flow.session(),
        prose_flow.resends(),
        prose_wire.chunking(),
        prose_wire.size_limits(),
        prose_flow.reasons_section(),
        prose_flow.caveats(),
        "## Message reference\n\n" + schema.reference(),
    ]
    return "\n".join(s.rstrip("\n") + "\n" for s in sections)


def main() -> int:
    """`fedge protocol-doc`: the document on stdout."""
    sys.stdout.write(render())
    return 0
