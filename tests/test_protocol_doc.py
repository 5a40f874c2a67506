"""docs/PROTOCOL.md is generated from the code (tools/protocol_doc); a protocol change that
does not regenerate it fails here. How a client follows it: tests/coordinator/test_protocol_outsider.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedge.edge_runtime.kernel import codec
from fedge.tools import protocol_doc
from fedge.tools.cli import main
from fedge.tools.protocol_doc import reasons, schema

DOC = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"


def test_the_committed_document_is_what_the_code_generates():
    assert DOC.read_text() == protocol_doc.render(), (
        "docs/PROTOCOL.md is out of date with the protocol code: run `fedge protocol-doc > docs/PROTOCOL.md` "
        "and commit it (and check the hand-written prose in tools/protocol_doc/ still holds)")


def test_the_cli_prints_it(capsys):
    assert main(["protocol-doc"]) == 0
    assert capsys.readouterr().out == protocol_doc.render()


def test_every_message_and_every_rejection_has_its_section():
    text = protocol_doc.render()
    for code, cls in codec.MESSAGE_TYPES.items():
        assert f"### {cls.__name__}\n\nType code {code};" in text
    for cls in reasons.rejection_classes():
        assert f"| `{cls.reason}` | {cls.__name__} |" in text


def test_a_message_type_without_a_route_stops_the_generator(monkeypatch):
    monkeypatch.delitem(schema.ROUTES, next(iter(schema.ROUTES)))
    with pytest.raises(LookupError, match="ROUTES"):
        protocol_doc.render()


def test_a_rejection_reason_without_a_note_stops_the_generator(monkeypatch):
    monkeypatch.delitem(reasons.ACK_NOTES, "norm_bound")
    with pytest.raises(LookupError, match="norm_bound"):
        protocol_doc.render()


def test_limits_come_from_the_field_metadata():
    """A field's range is the one `bounded` gave it, spelled as the reader wants it."""
    from fedge.edge_runtime.kernel.protocol import CheckIn, Update

    table = schema.fields_table(Update)
    assert "| `num_examples` | int | **required** | [0, 2^32 − 1] |" in table
    assert "| `shard` | int | `-1`, left out of the frame while it holds it | [-1, 1023] |" in table
    assert "| `model_ids` | array of str | `()` | ≤ 64 entries; model id:" in schema.fields_table(CheckIn)
