"""Rendered event XML: the published samples (incl. the IE-view MSDOCS copies) and safe parsing."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.events.formats.corpus import (
    BUILTIN_DOMAINS,
    CLIENT_IP4,
    CLIENT_IP6,
    DATA,
    RECEIVED,
    SOURCE,
    Case,
    cases,
    check,
    params,
)
from userseg.events.formats import parse
from userseg.events.model import EventKind, LoginEvent, Rejected

SAMPLES = [c for c in cases("windows-samples", "") if c.fmt == "xml"]
RDP = (DATA / "windows-samples" / "xml" / "4624-logon-type10-rdp.xml").read_text()
LOGOFF_MSDOCS = (DATA / "windows-samples" / "xml" / "4647-user-initiated-logoff.msdocs.xml").read_text()


@params(SAMPLES)
def test_published_samples(case: Case) -> None:
    check(parse("xml", case.data, source=SOURCE, received=RECEIVED), case.expect)


def test_every_published_xml_sample_is_covered() -> None:
    assert len(SAMPLES) == len(list((DATA / "windows-samples" / "xml").iterdir())) == 6


def test_msdocs_fold_markers_are_text_between_elements() -> None:
    """Only the marker before <Event> makes the IE view ill-formed; a marker inside a value shows."""
    assert LOGOFF_MSDOCS.startswith("- <Event") and "- <System>" in LOGOFF_MSDOCS
    inside = LOGOFF_MSDOCS.replace(">dadmin<", ">- dadmin<")
    ev = parse("xml", inside, source=SOURCE, received=RECEIVED)
    assert isinstance(ev, LoginEvent) and ev.user == "- dadmin"
    unclosed = LOGOFF_MSDOCS.replace(" </EventData>", "")
    result = parse("xml", unclosed, source=SOURCE, received=RECEIVED)
    assert isinstance(result, Rejected) and "not well-formed" in result.reason


def test_namespace_prefixed_children() -> None:
    text = RDP.replace("<System>", "<e:System xmlns:e='urn:x'>").replace("</System>", "</e:System>")
    text = text.replace("<Computer>", "<e:Computer>").replace("</Computer>", "</e:Computer>")
    ev = parse("xml", text, source=SOURCE, received=RECEIVED)
    assert isinstance(ev, LoginEvent) and (ev.user, ev.host) == (
        "administrateur",
        "Abeilles-SRV.Abeilles.local",
    )


def test_rendering_info_and_unnamed_data_are_ignored() -> None:
    extra = "<RenderingInfo Culture='en-US'><Message>An account was logged on.</Message></RenderingInfo>"
    text = RDP.replace("</EventData>", "<Data>unnamed</Data></EventData>" + extra)
    ev = parse("xml", text, source=SOURCE, received=RECEIVED)
    assert isinstance(ev, LoginEvent) and ev.logon_type == 10


def test_data_outside_event_data_is_not_read() -> None:
    text = RDP.replace("<System>", "<System><Data Name='TargetUserName'>mallory</Data>")
    ev = parse("xml", text, source=SOURCE, received=RECEIVED)
    assert isinstance(ev, LoginEvent) and ev.user == "administrateur"


def test_time_without_zone_means_the_receive_time() -> None:
    text = RDP.replace("2020-03-02T20:51:32.557777800Z", "2020-03-02T20:51:32.557")
    ev = parse("xml", text, source=SOURCE, received=RECEIVED)
    assert isinstance(ev, LoginEvent) and ev.time == RECEIVED


# -- round trip -----------------------------------------------------------------------------------------
def event_xml(eid: int, data: dict[str, str], computer: str, when: datetime) -> str:
    items = "".join(f"<Data Name={quoteattr(k)}>{escape(v)}</Data>" for k, v in data.items())
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"
    return (
        "<Event xmlns='http://schemas.microsoft.com/win/2004/08/events/event'><System>"
        f"<EventID>{eid}</EventID><TimeCreated SystemTime='{stamp}'/><Channel>Security</Channel>"
        f"<Computer>{escape(computer)}</Computer></System><EventData>{items}</EventData></Event>"
    )


_NAME = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "N", "P", "S"), exclude_characters="\\@"),
    min_size=1,
    max_size=30,
).filter(lambda s: s != "-")


@settings(max_examples=150, deadline=None)
@given(
    eid=st.sampled_from([4624, 4625, 4634, 4647]),
    user=_NAME,
    domain=_NAME.filter(lambda s: s.casefold() not in BUILTIN_DOMAINS),
    computer=_NAME,
    ip=st.one_of(CLIENT_IP4, CLIENT_IP6),
    logon_type=st.integers(0, 11),
    micros=st.integers(0, 10**6 - 1),
)
def test_round_trip(
    eid: int, user: str, domain: str, computer: str, ip: Any, logon_type: int, micros: int
) -> None:
    """Names with XML specials (&, <, quotes) come back exactly; the time to the microsecond."""
    when = datetime(2026, 11, 22, 5, 0, 0, micros, tzinfo=UTC)
    data = {
        "TargetUserName": user,
        "TargetDomainName": domain,
        "IpAddress": str(ip),
        "LogonType": str(logon_type),
        "TargetLogonId": "0x1e3237",
    }
    ev = parse("xml", event_xml(eid, data, computer, when), source=SOURCE, received=RECEIVED)
    assert isinstance(ev, LoginEvent), ev
    assert (ev.user, ev.domain, ev.host, ev.time, ev.logon_type, ev.logon_id) == (
        user,
        domain,
        computer,
        when,
        logon_type,
        "" if eid == 4625 else "0x1e3237",  # a failure has no session to pair with
    )
    logoff = eid in (4634, 4647)
    assert ev.kind is {4624: EventKind.LOGON, 4625: EventKind.FAILURE}.get(eid, EventKind.LOGOFF)
    assert ev.ip == (None if logoff else ipaddress.ip_address(ip))


def test_a_value_is_all_text_of_its_element() -> None:
    """Child elements (never written by Windows) neither cut a value short nor start another."""
    text = RDP.replace(">administrateur<", ">admin<b>istr</b><Data Name='TargetDomainName'>X</Data>ateur<")
    ev = parse("xml", text, source=SOURCE, received=RECEIVED)
    assert isinstance(ev, LoginEvent) and (ev.user, ev.domain) == ("administrXateur", "ABEILLES")
