"""Structured logs to stderr, readable by journald and by log shippers.

Why these two formats: under systemd, stderr goes to the journal, which takes
a leading `<N>` as the syslog priority (SyslogLevelPrefix=, on by default), so
`journalctl -p warning -u userseg` works with no extra library; a log shipper
wants one JSON object per line.  Fields passed as `extra={"fields": {...}}`
are appended as key=value (text) or merged (JSON).

No secrets: the redaction masks anything shaped like a push token (`usp_...`)
or a `password=` assignment, in messages, fields and tracebacks, as a last line
of defence behind code that never logs them in the first place.
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
_SECRET_KEY = r"(?:password|passwd|secret|token)"
# A token keeps its first 6 characters (enough to tell tokens apart, 36 of 256 bits);
# an assignment keeps its key, in every shape a message or a repr() shows it:
# password=x, password: x, 'password': 'a b', "password":"a b", password="a b".
_SECRET = re.compile(
    r"(usp_[A-Za-z0-9_-]{6})[A-Za-z0-9_-]+"
    rf"|({_SECRET_KEY}[\"']?\s*[=:]\s*)(?:\"[^\"]*\"?|'[^']*'?|\S+)",
    re.I,
)
_SECRET_FIELD = re.compile(rf"^\w*{_SECRET_KEY}$", re.I)


def redact(text: str) -> str:
    return _SECRET.sub(lambda m: f"{m.group(1)}…" if m.group(1) else f"{m.group(2)}***", text)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's `fields`, redacted too: a field is as likely to carry a secret as a message."""
    fields = getattr(record, "fields", None)
    if not isinstance(fields, dict):
        return {}
    return {
        k: "***" if _SECRET_FIELD.match(str(k)) else redact(v) if isinstance(v, str) else v
        for k, v in fields.items()
    }


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = redact(record.getMessage())
        extra = " ".join(
            f"{k}={json.dumps(v) if isinstance(v, str) and ' ' in v else v}"
            for k, v in _fields(record).items()
        )
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        text = f"{record.name}: {message}{' ' + extra if extra else ''}"
        if record.exc_info:
            text += "\n" + redact(self.formatException(record.exc_info))
        # journald reads a priority prefix per line: an unprefixed traceback line would
        # be filed at the default (info) and vanish from `journalctl -p err`.
        return "\n".join(prefix + line for line in text.split("\n"))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            **_fields(record),  # first: a field named like a base key must not replace it
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
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
