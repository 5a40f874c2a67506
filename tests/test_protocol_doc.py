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


def test_an_upper_bound_the_decoder_refuses_is_said_in_its_row():
    """The limit column gives `bounded`'s closed range; where TaskHyper's own check refuses the
    range's top (momentum, beta1, beta2 at 1: a frame at 1 is MalformedPayload), the row says so,
    or a peer written from this document sends it (the table once read [0, 1] with nothing more)."""
    import dataclasses

    from fedge.edge_runtime.kernel.protocol import TaskHyper

    rows = {line.split("|")[1].strip(" `"): line for line in schema.fields_table(TaskHyper).splitlines()[2:]}
    refused = []
    for f in dataclasses.fields(TaskHyper):
        lo_hi = f.metadata.get("range")
        if f.type not in (float, "float") or lo_hi is None:
            continue
        try:
            TaskHyper(**{f.name: lo_hi[1]})
        except ValueError:
            refused.append(f.name)
            assert f"{lo_hi[1]:g} is refused" in rows[f.name], rows[f.name]
    assert refused == ["momentum", "beta1", "beta2"]
    assert DOC.read_text().count("(1 is refused:") == 3
