"""Format detection: every corpus input parses the same with "auto", also behind a prefix."""

from __future__ import annotations

import json

import pytest

from tests.events.formats.corpus import DATA, RECEIVED, SOURCE, Case, cases, params
from userseg.events.formats import parse
from userseg.events.formats.auto import detect, json_format
from userseg.events.model import LoginEvent, Rejected

ALL = (
    cases("samba", "samba", per_line=True)
    + [c for c in cases("windows-samples", "") if c.fmt]
    + cases("winlogbeat-ecs", "winlogbeat")
)


@params(ALL)
def test_auto_equals_the_explicit_format(case: Case, json_backend: str) -> None:
    want = parse(case.fmt, case.data, source=SOURCE, received=RECEIVED)
    assert parse("auto", case.data, source=SOURCE, received=RECEIVED) == want


@params(ALL)
def test_auto_sees_through_a_syslog_prefix(case: Case) -> None:
    text = case.data.decode().lstrip()
    prefix = {"samba": "samba[4711]: ", "snare": "<13>May  9 18:35:51 dc1 ", "xml": "<14>1 - wec1 evt - - - "}
    prefixed = prefix.get(case.fmt, "<14>Nov 22 05:00:00 wec1 winlogbeat: ") + text
    want = parse(case.fmt, case.data, source=SOURCE, received=RECEIVED)
    assert parse("auto", prefixed, source=SOURCE, received=RECEIVED) == want


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ('{"a": 1}', "json"),
        ("<Event xmlns='x'/>", "xml"),
        ("host\tMSWinEventLog\t1\tSecurity\t... Logon GUID:  {DABF70DB-FD0E}\t1", "snare"),  # braces later
        ('MSWinEventLog {"EventID": 4624}', "json"),  # no tab after the marker: a JSON prefix
        ('x {"Message": "<Event"}', "json"),
        ("<Event>{}</Event>", "xml"),
        ("plain text", None),
    ],
)
def test_earliest_marker_decides(text: str, kind: str | None) -> None:
    assert detect(text) == kind


@pytest.mark.parametrize(
    ("obj", "fmt"),
    [
        ({"type": "Authentication", "Authentication": {}}, "samba"),
        ({"type": "passwordChange", "passwordChange": {}}, "samba"),
        ({"winlog": {}}, "winlogbeat"),
        ({"event_data": {}}, "winlogbeat"),
        ({"event_id": 4624, "computer_name": "h"}, "winlogbeat"),
        ({"EventID": 4624}, "nxlog"),
        ({"type": "Authentication"}, None),  # no object named by type: not Samba
        ({"hello": "world"}, None),
    ],
)
def test_json_shapes(obj: dict[str, object], fmt: str | None) -> None:
    assert json_format(obj) == fmt


def test_unknown_json_and_text_are_rejected_with_a_reason() -> None:
    unknown = parse("auto", '{"hello": "world"}', source=SOURCE, received=RECEIVED)
    assert isinstance(unknown, Rejected) and "unrecognised JSON event" in unknown.reason
    text = parse("auto", "hello world", source=SOURCE, received=RECEIVED)
    assert isinstance(text, Rejected) and "unrecognised input" in text.reason


def test_nxlog_event_carrying_snare_like_text_stays_nxlog() -> None:
    obj = json.loads((DATA / "windows-samples" / "nxlog" / "4768-tgt-request.json").read_text())
    obj["Message"] = "MSWinEventLog\t1\tSecurity\t<Event>"
    ev = parse("auto", json.dumps(obj), source=SOURCE, received=RECEIVED)
    assert isinstance(ev, LoginEvent) and dict(ev.detail)["format"] == "nxlog"
