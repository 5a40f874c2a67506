"""A log line is one line whatever text a device sent: a decline's reason or a topic's device id
reaches the coordinator's messages, and a newline in it once forged a line of its own (and an ESC
sequence reached the operator's terminal as is)."""

from __future__ import annotations

import json
import logging

import pytest

from fedge.edge_runtime.logs import JournaldFormatter, JsonFormatter, TextFormatter, one_line

HOSTILE = "battery_low\n2026-12-05 09:00:00 INFO fedge.coordinator: round 7 committed\x1b[2J\r\u2028x\x85"


def _record(exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("first\nsecond")
        except RuntimeError:
            import sys
            exc_info = sys.exc_info()
    return logging.LogRecord("fedge.coordinator", logging.WARNING, __file__, 1, "device d1 declined: %s",
                             (HOSTILE,), exc_info)


@pytest.mark.parametrize("formatter", [TextFormatter("%(levelname)s %(name)s: %(message)s"), JournaldFormatter()])
def test_a_device_text_cannot_forge_a_line_or_drive_a_terminal(formatter):
    line = formatter.format(_record())
    assert "\n" not in line and "\r" not in line
    # every character a terminal or a log reader acts on is gone (an oracle apart from _ESCAPES)
    assert not [c for c in line if c != "\t" and (ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029")]
    assert "battery_low\\n2026-12-05" in line and "\\x1b[2J" in line


def test_a_traceback_keeps_its_lines_in_text_and_json_keeps_the_text_exact():
    text = TextFormatter("%(message)s").format(_record(exc=True))
    first, *rest = text.split("\n")
    assert "\\n" in first and rest and rest[0].startswith("Traceback")
    doc = json.loads(JsonFormatter().format(_record()))  # json.dumps escapes: the reader gets the text as sent
    assert doc["msg"] == f"device d1 declined: {HOSTILE}"


def test_one_line_leaves_printable_text_alone():
    plain = "reason: metered_link, tab\there, ünïcode ✓ 100%"
    assert one_line(plain) == plain
