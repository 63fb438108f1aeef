"""Structured logs to stderr, readable by journald and by log shippers.

Why these two formats: under systemd, stderr goes to the journal, which takes
a leading `<N>` as the syslog priority (SyslogLevelPrefix=, on by default), so
`journalctl -p warning -u userseg` works with no extra library; a log shipper
wants one JSON object per line.  Fields passed as `extra={"fields": {...}}`
are appended as key=value (text) or merged (JSON).

No secrets: the redaction filter masks anything shaped like a push token
(`usp_...`) or a `password=` assignment, as a last line of defence behind code
that never logs them in the first place.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from userseg.config_service import LogFormat

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
_SECRET = re.compile(
    r"(usp_[A-Za-z0-9_-]{6})[A-Za-z0-9_-]+|((?:password|passwd|secret|token)\s*[=:]\s*)\S+", re.I
)


def redact(text: str) -> str:
    return _SECRET.sub(lambda m: f"{m.group(1)}…" if m.group(1) else f"{m.group(2)}***", text)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else {}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = redact(record.getMessage())
        extra = " ".join(
            f"{k}={json.dumps(v) if isinstance(v, str) and ' ' in v else v}"
            for k, v in _fields(record).items()
        )
        line = f"<{_PRIORITY.get(record.levelno, 6)}>{record.name}: {message}{' ' + extra if extra else ''}"
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
            **_fields(record),
        }
        if record.exc_info:
            doc["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(doc, default=str)


def setup_logging(fmt: LogFormat, level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Replace the root handlers (idempotent: a reload may switch the format)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt is LogFormat.JSON else JournalFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
