"""Log setup shared by `fedge` commands: human-readable text, one JSON object per line for log
shippers (`--log-format json`), or lines for systemd's journal (`--log-format journald`)."""

from __future__ import annotations

import json
import logging

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


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
        text = f"<{_SYSLOG[level]}>{record.name}: {record.getMessage()}"
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
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
