"""Log setup shared by `fedge` commands: human-readable text, one JSON object per line for log
shippers (`--log-format json`), or lines for systemd's journal (`--log-format journald`)."""

from __future__ import annotations

import json
import logging

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

# Control characters (C0 but tab, DEL, C1, and the Unicode line and paragraph separators)
# written as escapes: a message carries text a device sent (a decline's reason, a device id
# in a topic), and a newline in it would forge a log line of its own, an ESC sequence would
# drive the operator's terminal. The JSON format needs none of this (json.dumps escapes).
_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)] if c != 0x09}
_ESCAPES.update({0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def one_line(text: str) -> str:
    """`text` with every control character escaped (_ESCAPES): one line, inert on a terminal."""
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """The plain format, each message on one line (one_line); a traceback keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "msg", ...extra fields} per record."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


# syslog priorities (sd-daemon(3)): journald reads a "<N>" prefix on a service's stderr as the
# line's priority, so `journalctl -p warning` filters fedge's warnings.
_SYSLOG = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


class JournaldFormatter(logging.Formatter):
    """"<priority>logger: message": no timestamp (the journal stamps each line), and a
    traceback stays in the same entry, its newlines escaped."""

    def format(self, record: logging.LogRecord) -> str:
        level = max((lv for lv in _SYSLOG if lv <= record.levelno), default=logging.DEBUG)
        text = f"<{_SYSLOG[level]}>{record.name}: {one_line(record.getMessage())}"
        if record.exc_info:
            text += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return text


def setup_logging(verbosity: int = 0, fmt: str = "text") -> None:
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbosity, 2)]
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif fmt == "journald":
        handler.setFormatter(JournaldFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
