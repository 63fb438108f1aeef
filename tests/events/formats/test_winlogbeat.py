"""Winlogbeat JSON: the published 6.x samples and the constructed ECS (7.x/8.x) corpus."""

from __future__ import annotations

import json

from tests.events.formats.corpus import (
    DATA,
    RECEIVED,
    SOURCE,
    Case,
    cases,
    check,
    expected,
    input_files,
    params,
)
from userseg.events.formats import parse
from userseg.events.model import LoginEvent, Rejected

LEGACY = [c for c in cases("windows-samples", "") if c.fmt == "winlogbeat"]
ECS = cases("winlogbeat-ecs", "winlogbeat")


@params(LEGACY + ECS)
def test_corpus(case: Case, json_backend: str) -> None:
    check(parse("winlogbeat", case.data, source=SOURCE, received=RECEIVED), case.expect)


def test_every_file_is_annotated() -> None:
    assert len(LEGACY) == len(list((DATA / "windows-samples" / "winlogbeat").iterdir())) == 6
    assert input_files("winlogbeat-ecs") == sorted(expected("winlogbeat-ecs"))


def test_host_is_the_computer_that_logged_the_event_not_the_beat() -> None:
    obj = json.loads((DATA / "winlogbeat-ecs" / "ecs8-4624-logon-type10-rdp.json").read_text())
    assert obj["host"]["name"] != obj["winlog"]["computer_name"]
    ev = parse("winlogbeat", json.dumps(obj), source=SOURCE, received=RECEIVED)
    assert isinstance(ev, LoginEvent) and ev.host == obj["winlog"]["computer_name"]


def test_ecs_winlog_wins_over_legacy_fields() -> None:
    obj = json.loads((DATA / "winlogbeat-ecs" / "ecs8-4625-logon-failure.json").read_text())
    obj["event_id"] = 4634  # a stray legacy field must not change the meaning
    ev = parse("winlogbeat", json.dumps(obj), source=SOURCE, received=RECEIVED)
    assert isinstance(ev, LoginEvent) and ev.event_id == 4625


def test_missing_timestamp_uses_received_and_a_bad_one_is_rejected() -> None:
    obj = json.loads((DATA / "winlogbeat-ecs" / "ecs8-4625-logon-failure.json").read_text())
    del obj["@timestamp"]
    ev = parse("winlogbeat", json.dumps(obj), source=SOURCE, received=RECEIVED)
    assert isinstance(ev, LoginEvent) and ev.time == RECEIVED
    obj["@timestamp"] = "2026-13-01T00:00:00Z"
    bad = parse("winlogbeat", json.dumps(obj), source=SOURCE, received=RECEIVED)
    assert isinstance(bad, Rejected) and "@timestamp" in bad.reason
