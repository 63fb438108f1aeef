"""NXLog im_msvistalog JSON: the published samples and the time rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.events.formats.corpus import DATA, RECEIVED, SOURCE, Case, cases, check, params
from userseg.events.formats import parse
from userseg.events.model import LoginEvent, Skipped

SAMPLES = [c for c in cases("windows-samples", "") if c.fmt == "nxlog"]
RDP = DATA / "windows-samples" / "nxlog" / "4624-logon-type10-rdp.json"


@params(SAMPLES)
def test_published_samples(case: Case, json_backend: str) -> None:
    check(parse("nxlog", case.data, source=SOURCE, received=RECEIVED), case.expect)


def test_every_published_nxlog_sample_is_covered() -> None:
    assert len(SAMPLES) == len(list((DATA / "windows-samples" / "nxlog").iterdir())) == 6


def rdp(**changes: Any) -> str:
    obj = json.loads(RDP.read_text())
    for key, value in changes.items():
        if value is None:
            obj.pop(key, None)
        else:
            obj[key] = value
    return json.dumps(obj)


def time_of(text: str) -> datetime:
    ev = parse("nxlog", text, source=SOURCE, received=RECEIVED)
    assert isinstance(ev, LoginEvent), ev
    return ev.time


def test_timestamp_wins() -> None:
    assert time_of(rdp()) == datetime(2020, 9, 4, 7, 9, 22, 558000, tzinfo=UTC)


def test_zoned_event_time_is_used_without_timestamp() -> None:
    """NXLog configs that format EventTime with %z give a usable time by themselves."""
    text = rdp(**{"@timestamp": None, "EventTime": "2020-09-04T03:08:20-04:00"})
    assert time_of(text) == datetime(2020, 9, 4, 7, 8, 20, tzinfo=UTC)


def test_zoned_received_time_is_next() -> None:
    text = rdp(**{"@timestamp": None, "EventReceivedTime": "2020-09-04T03:09:18-0400"})
    assert time_of(text) == datetime(2020, 9, 4, 7, 9, 18, tzinfo=UTC)


def test_host_local_times_without_zone_mean_the_receive_time() -> None:
    text = rdp(**{"@timestamp": None})  # EventTime "2020-09-04 03:08:20": no zone
    assert time_of(text) == RECEIVED
    ev = parse("nxlog", text, source=SOURCE, received=RECEIVED)
    assert isinstance(ev, LoginEvent) and dict(ev.detail)["event_time"] == "2020-09-04 03:08:20"


def test_free_form_local_times_are_tolerated() -> None:
    text = rdp(**{"@timestamp": None, "EventTime": "Sep  4 03:08:20", "EventReceivedTime": 1599203358})
    assert time_of(text) == RECEIVED


@pytest.mark.parametrize("channel", ["Security", "security", "SECURITY", None])
def test_security_channel_in_any_case_or_absent(channel: str | None) -> None:
    assert isinstance(parse("nxlog", rdp(Channel=channel), source=SOURCE, received=RECEIVED), LoginEvent)


def test_other_channel_is_skipped() -> None:
    result = parse(
        "nxlog", rdp(Channel="Microsoft-Windows-Sysmon/Operational"), source=SOURCE, received=RECEIVED
    )
    assert isinstance(result, Skipped) and "not a Security log event" in result.reason


def test_event_id_as_digits() -> None:
    ev = parse("nxlog", rdp(EventID="4624"), source=SOURCE, received=RECEIVED)
    assert isinstance(ev, LoginEvent) and ev.event_id == 4624
