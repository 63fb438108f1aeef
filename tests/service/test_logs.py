"""Log formats as journald and log shippers read them, and the redaction of secrets."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from userseg.config_service import LogFormat
from userseg.service.logs import JournalFormatter, JsonFormatter, redact, setup_logging
from userseg.web.tokens import new_token

TOKEN = new_token()


def record(
    level: int, msg: str, *args: object, fields: object = None, exc: bool = False, name: str = "userseg.test"
) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError(f"boom with {TOKEN}")
        except RuntimeError as e:
            exc_info = (type(e), e, e.__traceback__)
    r = logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)
    if fields is not None:
        r.fields = fields
    return r


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        (logging.DEBUG, "<7>"),
        (logging.INFO, "<6>"),
        (logging.WARNING, "<4>"),
        (logging.ERROR, "<3>"),
        (logging.CRITICAL, "<2>"),
        (25, "<6>"),  # a custom level: informational
    ],
)
def test_journal_lines_carry_the_syslog_priority(level: int, prefix: str) -> None:
    line = JournalFormatter().format(record(level, "hello %s", "world"))
    assert line == f"{prefix}userseg.test: hello world"


def test_journal_fields_are_appended_and_quoted_when_they_hold_spaces() -> None:
    line = JournalFormatter().format(
        record(logging.INFO, "synced", fields={"dc": "dc1", "took": 0.5, "why": "a b"})
    )
    assert line == '<6>userseg.test: synced dc=dc1 took=0.5 why="a b"'


def test_journal_tracebacks_keep_the_priority_on_every_line() -> None:
    text = JournalFormatter().format(record(logging.ERROR, "sync failed", exc=True))
    lines = text.split("\n")
    assert lines[0] == "<3>userseg.test: sync failed"
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines)
    assert "RuntimeError: boom with" in text and TOKEN not in text


def test_json_lines_parse_and_carry_the_fields() -> None:
    line = JsonFormatter().format(
        record(logging.WARNING, "queue %d/%d", 9, 10, fields={"source": "dc1", "depth": 9, "at": object()})
    )
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["level"] == "warning" and doc["logger"] == "userseg.test" and doc["msg"] == "queue 9/10"
    assert doc["source"] == "dc1" and doc["depth"] == 9
    assert doc["at"].startswith("<object object")  # anything unserialisable as its str()
    assert doc["ts"].endswith("+00:00") and "T" in doc["ts"]


def test_json_fields_never_replace_the_base_keys() -> None:
    doc = json.loads(
        JsonFormatter().format(record(logging.ERROR, "real", fields={"msg": "fake", "level": "info"}))
    )
    assert doc["msg"] == "real" and doc["level"] == "error"


def test_json_includes_the_exception_redacted() -> None:
    doc = json.loads(JsonFormatter().format(record(logging.ERROR, "failed", exc=True)))
    assert "Traceback" in doc["exception"] and "RuntimeError: boom with usp_" in doc["exception"]
    assert TOKEN not in doc["exception"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"bad token {TOKEN} from 198.18.0.1", f"bad token {TOKEN[:10]}… from 198.18.0.1"),
        ("bind password=hunter2 failed", "bind password=*** failed"),
        ("Password: hunter2", "Password: ***"),
        ("secret = s3cr3t!", "secret = ***"),
        ("{'password': 'two words', 'user': 'bob'}", "{'password': ***, 'user': 'bob'}"),
        ('{"bind_password":"two words","user":"bob"}', '{"bind_password":***,"user":"bob"}'),
        ('password="a b" next', "password=*** next"),
        ("no secrets here: usp_ alone, passwords=3 are counted", None),
    ],
)
def test_redact(text: str, expected: str | None) -> None:
    assert redact(text) == (text if expected is None else expected)


@pytest.mark.parametrize("formatter", [JournalFormatter(), JsonFormatter()])
def test_secrets_in_messages_and_fields_never_reach_the_output(formatter: logging.Formatter) -> None:
    out = formatter.format(
        record(
            logging.INFO,
            "token %s bind password=%s",
            TOKEN,
            "hunter2",
            fields={"note": f"Bearer {TOKEN}", "bind_password": "hunter2", "tokens": 3},
        )
    )
    assert TOKEN not in out and "hunter2" not in out
    assert "tokens" in out  # a count named like a secret is not a secret


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_setup_logging_replaces_the_handlers_so_a_reload_can_switch_formats(root_logging: None) -> None:
    text, js = io.StringIO(), io.StringIO()
    setup_logging(LogFormat.TEXT, stream=text)
    logging.getLogger("userseg.x").info("first")
    setup_logging(LogFormat.JSON, logging.WARNING, stream=js)
    logging.getLogger("userseg.x").info("dropped: below the level")
    logging.getLogger("userseg.x").warning("second")
    assert text.getvalue() == "<6>userseg.x: first\n"
    assert [json.loads(line)["msg"] for line in js.getvalue().splitlines()] == ["second"]
    assert len(logging.getLogger().handlers) == 1
