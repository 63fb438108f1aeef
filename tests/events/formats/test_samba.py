"""Samba auth_json_audit lines: the real lab corpus, the field rules, and a round-trip property."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.events.formats.corpus import (
    BUILTIN_DOMAINS,
    CLIENT_IP4,
    CLIENT_IP6,
    RECEIVED,
    SOURCE,
    Case,
    cases,
    check,
    input_files,
    params,
)
from userseg.events.formats import parse
from userseg.events.model import EventKind, LoginEvent, Rejected, Skipped

CORPUS = cases("samba", "samba", per_line=True)


def test_every_captured_file_is_annotated() -> None:
    from tests.events.formats.corpus import expected

    assert input_files("samba") == sorted(expected("samba"))
    assert len(CORPUS) >= 20


@params(CORPUS)
def test_real_corpus(case: Case, json_backend: str) -> None:
    check(parse("samba", case.data, source=SOURCE, received=RECEIVED), case.expect)


def test_the_corpus_covers_what_the_mapper_must_tell_apart() -> None:
    """Guard against a re-capture silently losing a kind of line."""
    results = [parse("samba", c.data, source=SOURCE, received=RECEIVED) for c in CORPUS]
    events = [r for r in results if isinstance(r, LoginEvent)]
    assert {e.kind for e in events} == {EventKind.LOGON, EventKind.FAILURE}
    assert {e.ip.version for e in events if e.ip is not None} == {4, 6}
    assert any(e.event_id is None for e in events)  # Authorization
    assert any(e.user.endswith("$") for e in events)  # a machine account
    assert {dict(e.detail)["service"] for e in events} >= {"Kerberos KDC", "LDAP", "SMB2"}


def line(body: dict[str, Any] | None = None, typ: str = "Authentication", **top: Any) -> str:
    b: dict[str, Any] = {
        "eventId": 4624,
        "logonType": 3,
        "status": "NT_STATUS_OK",
        "remoteAddress": "ipv4:198.18.10.11:50000",
        "serviceDescription": "Kerberos KDC",
        "authDescription": "ENC-TS Pre-authentication",
        "clientAccount": "alice@LAB.EXAMPLE",
        "clientDomain": None,
        "becameAccount": "alice",
        "becameDomain": "LAB",
    }
    b.update(body or {})
    obj: dict[str, Any] = {"timestamp": "2026-11-22T05:36:14.155482+0000", "type": typ, typ: b}
    obj.update(top)
    return "  " + json.dumps(obj)


def run(text: str) -> Any:
    return parse("samba", text, source=SOURCE, received=RECEIVED)


@pytest.mark.parametrize(
    ("address", "ip"),
    [
        ("ipv4:198.18.10.11:57494", "198.18.10.11"),
        ("ipv6:2001:db8:10::12:31696", "2001:db8:10::12"),  # the form the lab DC writes
        ("ipv6:::ffff:198.18.10.11:31696", "198.18.10.11"),  # IPv4-mapped: the IPv4 client
        ("ipv6:fe80::1%eth0:5000", "fe80::1"),  # the zone is dropped
    ],
)
def test_remote_address_forms(address: str, ip: str) -> None:
    ev = run(line({"remoteAddress": address}))
    assert isinstance(ev, LoginEvent) and ev.ip == ipaddress.ip_address(ip)


def test_became_account_wins_over_client_account() -> None:
    ev = run(
        line({"clientAccount": "Alice.Smith@lab.example", "becameAccount": "asmith", "becameDomain": "LAB"})
    )
    assert isinstance(ev, LoginEvent) and (ev.user, ev.domain) == ("asmith", "LAB")


@pytest.mark.parametrize(
    ("client", "domain", "want"),
    [
        ("LAB\\bob", None, ("bob", "LAB")),
        ("bob@LAB.EXAMPLE", None, ("bob", "LAB.EXAMPLE")),
        ("bob@lab.example", "LAB", ("bob", "LAB")),
        ("bob", "LAB", ("bob", "LAB")),
        ("bob", None, ("bob", "")),
    ],
)
def test_client_account_is_split_when_samba_resolved_none(
    client: str, domain: str | None, want: tuple[str, str]
) -> None:
    ev = run(
        line({"becameAccount": None, "becameDomain": None, "clientAccount": client, "clientDomain": domain})
    )
    assert isinstance(ev, LoginEvent) and (ev.user, ev.domain) == want


@pytest.mark.parametrize(
    ("event_id", "status", "kind"),
    [
        (4624, "NT_STATUS_OK", EventKind.LOGON),
        (4625, "NT_STATUS_WRONG_PASSWORD", EventKind.FAILURE),
        (4624, "NT_STATUS_ACCOUNT_LOCKED_OUT", EventKind.FAILURE),  # any non-OK status fails
        (4625, "NT_STATUS_OK", EventKind.FAILURE),  # 4625 fails whatever the status says
        (None, "NT_STATUS_OK", EventKind.LOGON),  # Samba < 4.11 wrote no eventId
        (None, "NT_STATUS_NO_SUCH_USER", EventKind.FAILURE),
    ],
)
def test_kind_from_event_id_and_status(event_id: int | None, status: str, kind: EventKind) -> None:
    ev = run(line({"eventId": event_id, "status": status}))
    assert isinstance(ev, LoginEvent) and ev.kind is kind and ev.event_id == event_id


def test_authorization_event_names_the_dc() -> None:
    body = {
        "remoteAddress": "ipv4:198.18.10.11:445",
        "serviceDescription": "SMB2",
        "authType": "krb5",
        "domain": "LAB",
        "account": "alice",
        "logonServer": "DC1",
        "transportProtection": "SMB",
    }
    ev = run(line(body, typ="Authorization"))
    assert isinstance(ev, LoginEvent)
    assert (ev.kind, ev.event_id, ev.logon_type, ev.host, ev.user, ev.domain) == (
        EventKind.LOGON,
        None,
        None,
        "DC1",
        "alice",
        "LAB",
    )
    assert dict(ev.detail)["auth"] == "krb5" and dict(ev.detail)["transport"] == "SMB"


@pytest.mark.parametrize(
    ("stamp", "want"),
    [
        ("2026-11-22T05:12:34.123456+0000", datetime(2026, 11, 22, 5, 12, 34, 123456, tzinfo=UTC)),
        ("2026-11-22T06:12:34.123456+0100", datetime(2026, 11, 22, 5, 12, 34, 123456, tzinfo=UTC)),
        ("2026-11-22T05:12:34", RECEIVED),  # no zone: the receive time
    ],
)
def test_timestamp(stamp: str, want: datetime) -> None:
    ev = run(line(timestamp=stamp))
    assert isinstance(ev, LoginEvent) and ev.time == want and ev.time.tzinfo is UTC


def test_missing_timestamp_uses_received_time() -> None:
    obj = json.loads(line())
    del obj["timestamp"]
    ev = run(json.dumps(obj))
    assert isinstance(ev, LoginEvent) and ev.time == RECEIVED
    assert "timestamp" not in dict(ev.detail)


def test_received_time_in_another_zone_becomes_utc() -> None:
    plus2 = RECEIVED.astimezone(timezone(timedelta(hours=2)))
    ev = parse("samba", line(timestamp=None), source=SOURCE, received=plus2)
    assert isinstance(ev, LoginEvent) and ev.time == RECEIVED and ev.time.tzinfo is UTC


def test_syslog_prefix_is_ignored() -> None:
    ev = run("samba[1234]: " + line().strip())
    assert isinstance(ev, LoginEvent) and ev.user == "alice"


def test_detail_is_bounded_and_visible() -> None:
    ev = run(line({"serviceDescription": "x" * 10_000, "authDescription": "a\tb\u202ec"}))
    assert isinstance(ev, LoginEvent)
    detail = dict(ev.detail)
    assert detail["service"] == "x" * 256 + "..."
    assert detail["auth"] == "a\ufffdb\ufffdc"


def test_a_list_where_text_belongs_in_detail_is_shown_not_cached_or_fatal() -> None:
    ev = run(line({"passwordType": ["aes"]}))
    assert isinstance(ev, LoginEvent) and dict(ev.detail)["password_type"] == "['aes']"


def test_skip_and_reject_reasons_are_distinct() -> None:
    assert isinstance(run(line({"remoteAddress": None})), Skipped)
    assert isinstance(run(line({"remoteAddress": 7})), Rejected)


# -- round trip -----------------------------------------------------------------------------------------
_NAME = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "N"), include_characters="._-$ "),
    min_size=1,
    max_size=40,
).filter(lambda s: s.strip() == s and s != "-" and s.casefold() not in BUILTIN_DOMAINS)


@settings(max_examples=150, deadline=None)
@given(
    user=_NAME,
    domain=_NAME,
    ip=st.one_of(CLIENT_IP4, CLIENT_IP6),
    port=st.integers(0, 65535),
    ok=st.booleans(),
    logon_type=st.integers(0, 11),
    micros=st.integers(0, 10**6 - 1),
)
def test_round_trip(
    user: str, domain: str, ip: Any, port: int, ok: bool, logon_type: int, micros: int
) -> None:
    """A line built from fields parses back to exactly those fields."""
    when = datetime(2026, 11, 22, 5, 0, 0, micros, tzinfo=UTC)
    family = "ipv4" if ip.version == 4 else "ipv6"
    text = line(
        {
            "eventId": 4624 if ok else 4625,
            "status": "NT_STATUS_OK" if ok else "NT_STATUS_WRONG_PASSWORD",
            "remoteAddress": f"{family}:{ip}:{port}",
            "becameAccount": user,
            "becameDomain": domain,
            "logonType": logon_type,
        },
        timestamp=when.strftime("%Y-%m-%dT%H:%M:%S.%f+0000"),
    )
    ev = run(text)
    assert isinstance(ev, LoginEvent), ev
    assert (ev.user, ev.domain, ev.ip, ev.time, ev.logon_type) == (user, domain, ip, when, logon_type)
    assert ev.kind is (EventKind.LOGON if ok else EventKind.FAILURE)
    assert ev.event_id == (4624 if ok else 4625) and ev.source == SOURCE
