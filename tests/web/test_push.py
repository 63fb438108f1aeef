"""The push API through Flask's test client, and `events_from_body` on its own (with Hypothesis)."""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

from tests.events.collect import CollectingSink
from userseg.events.model import EventKind, LoginEvent, ParseResult
from userseg.model import AddressRange
from userseg.web.push import (
    API_PATH,
    MAX_LISTED,
    RESERVED_DETAIL,
    BodyError,
    TooManyEvents,
    events_from_body,
    push_blueprint,
)
from userseg.web.server import make_push_app, parse_json
from userseg.web.tokens import TokenBook, new_token, token_hash

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
VPN, PORTAL = new_token(), new_token()
TOKENS = TokenBook({token_hash(VPN): "vpn", token_hash(PORTAL): "portal"})


def client(
    sink: Any = None,
    *,
    max_body: int = 1 << 20,
    max_events: int = 100,
    allowed: Mapping[str, Sequence[AddressRange]] | None = None,
) -> tuple[FlaskClient, Any]:
    sink = CollectingSink() if sink is None else sink
    bp = push_blueprint(
        TOKENS, sink, clock=lambda: NOW, max_body=max_body, max_events=max_events, allowed_senders=allowed
    )
    return make_push_app(bp, max_body=max_body).test_client(), sink


def post(
    c: FlaskClient,
    body: object,
    *,
    token: str | None = VPN,
    content_type: str | None = "application/json",
    remote: str = "127.0.0.1",
) -> TestResponse:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return c.post(API_PATH, data=data, headers=headers, environ_base={"REMOTE_ADDR": remote})


def problems(r: TestResponse) -> list[str]:
    assert r.status_code == 400, r.get_data(as_text=True)
    doc = r.get_json()
    assert doc["problem_count"] == len(doc["problems"])
    return list(doc["problems"])


def expected(user: str = "alice", ip: str = "198.18.0.10", **kw: Any) -> LoginEvent:
    fields: dict[str, Any] = {"domain": "", "time": NOW, "kind": EventKind.LOGON, "source": "vpn"}
    fields.update(kw)
    fields.setdefault("detail", (("format", "http"),))
    return LoginEvent(user=user, ip=ipaddress.ip_address(ip), **fields)


# ------------------------------------------------------------------------------------ accepted


def test_single_event_with_every_field() -> None:
    c, sink = client()
    body = {
        "user": "CORP\\alice", "ip": "198.18.0.10", "type": "login", "ttl": 3600,
        "time": "2026-11-22T12:59:30.250+01:00", "domain": "corp", "host": "vpn1",
        "detail": {"portal": "guest-wifi", "auth": "eap-tls"},
    }  # fmt: skip
    r = post(c, body)
    assert r.status_code == 202 and r.get_json() == {"accepted": 1}
    assert sink.events() == [
        expected(
            domain="CORP", time=datetime(2026, 11, 22, 11, 59, 30, 250000, tzinfo=UTC), ttl=3600, host="vpn1",
            detail=(("format", "http"), ("portal", "guest-wifi"), ("auth", "eap-tls")),
        )
    ]  # fmt: skip
    assert [i.position for i in sink.items] == [None]


def test_defaults_and_logout() -> None:
    c, sink = client()
    assert post(c, {"user": "alice", "ip": "198.18.0.10"}).status_code == 202
    assert post(c, {"user": "alice", "ip": "2001:db8::1", "type": "logout", "ttl": None}).status_code == 202
    assert sink.events() == [expected(), expected(ip="2001:db8::1", kind=EventKind.LOGOFF)]


def test_batch_in_order_attributed_to_the_token_source() -> None:
    c, sink = client()
    events = [{"user": f"u{i}", "ip": f"198.18.1.{i}"} for i in range(1, 51)]
    r = post(c, {"events": events}, token=PORTAL)
    assert r.status_code == 202 and r.get_json() == {"accepted": 50}
    assert sink.events() == [expected(f"u{i}", f"198.18.1.{i}", source="portal") for i in range(1, 51)]
    assert post(c, {"events": []}).get_json() == {"accepted": 0}


@pytest.mark.parametrize(
    ("raw", "extra", "user", "domain"),
    [
        ("alice", {}, "alice", ""),
        ("CORP\\alice", {}, "alice", "CORP"),
        ("alice@corp.example", {}, "alice", "corp.example"),
        ("we@ird@corp.example", {}, "we@ird", "corp.example"),  # a UPN suffix cannot hold '@'
        ("CORP\\al@ice", {}, "al@ice", "CORP"),
        ("  alice ", {}, "alice", ""),
        ("alice", {"domain": "CORP"}, "alice", "CORP"),
        ("CORP\\alice", {"domain": "corp"}, "alice", "CORP"),  # agreeing, case-insensitively
    ],
)
def test_account_forms(raw: str, extra: dict[str, str], user: str, domain: str) -> None:
    c, sink = client()
    assert post(c, {"user": raw, "ip": "198.18.0.10", **extra}).status_code == 202
    assert sink.events() == [expected(user, domain=domain)]


def test_ipv4_mapped_address_becomes_ipv4() -> None:
    c, sink = client()
    assert post(c, {"user": "alice", "ip": "::ffff:198.18.0.10"}).status_code == 202
    assert sink.events() == [expected()]


@pytest.mark.parametrize(
    "name",
    [
        "ålice",
        "用户",
        "🙂🙂",
        "e\u0301e\u0301",
        "ali\u202ece",
        "\u200balice",
        "a" * 256,
        "Ω" * 256,
        "x'; DROP --",
    ],
)
def test_hostile_but_valid_unicode_names_are_accepted(name: str) -> None:
    c, sink = client()
    assert post(c, {"user": name, "ip": "198.18.0.10"}).status_code == 202
    assert sink.events()[0].user == name


# ------------------------------------------------------------------------------------ refused


@pytest.mark.parametrize(
    "auth",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Basic {VPN}",
        f"Bearer {VPN}x",
        f"Bearer {VPN} {VPN}",
        "Bearer usp_nope",
        VPN,
    ],
)
def test_401_without_a_valid_token_says_nothing_more(auth: str | None) -> None:
    c, sink = client()
    headers = {"Content-Type": "application/json"} | ({"Authorization": auth} if auth is not None else {})
    r = c.post(API_PATH, data=b"not even json", headers=headers)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="userseg"'
    assert r.get_json() == {"error": "a valid bearer token is required"}
    assert r.headers["Cache-Control"] == "no-store" and r.headers["X-Content-Type-Options"] == "nosniff"
    assert sink.items == []


def test_a_body_cannot_choose_its_source() -> None:
    c, sink = client()
    r = post(c, {"user": "alice", "ip": "198.18.0.10", "source": "portal"})
    assert problems(r) == [
        'body: unknown key "source" (allowed: detail, domain, host, ip, time, ttl, type, user)'
    ]
    assert sink.items == []


def test_every_problem_is_listed_and_nothing_is_emitted() -> None:
    c, sink = client()
    body = {
        "events": [
            {"user": "ok", "ip": "198.18.0.1"},
            {"user": "bob", "ip": "300.1.1.1", "ttl": 5, "type": "signin"},
            "alice",
            {"ip": "198.18.0.3", "time": "2026-11-22 12:00:00", "colour": "red"},
            {"user": "CORP\\carol", "ip": "fe80::1%eth0", "domain": "OTHER", "detail": {"format": "x"}},
            {"user": "ok2", "ip": "198.18.0.5"},
        ]
    }
    assert problems(post(c, body)) == [
        'events[1].ip: "300.1.1.1" is not an IP address',
        'events[1].type: "signin" is not "login" or "logout"',
        "events[1].ttl: 5 is not within 60..604800 seconds",
        "events[2]: must be an event object, not a string",
        'events[3]: unknown key "colour" (allowed: detail, domain, host, ip, time, ttl, type, user)',
        "events[3].user: is required",
        'events[3].time: "2026-11-22 12:00:00" is not an RFC 3339 time with a zone (2024-05-01T08:00:00Z)',
        'events[4].domain: "OTHER" contradicts the domain "CORP" in user',
        'events[4].ip: "fe80::1%eth0" is a scoped IPv6 address; send it without the zone',
        'events[4].detail: key "format" is reserved',
    ]
    assert sink.items == []


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        ({"user": "", "ip": "198.18.0.1"}, "user: must not be empty"),
        ({"user": "  ", "ip": "198.18.0.1"}, "user: must not be empty"),
        ({"user": 7, "ip": "198.18.0.1"}, "user: must be a string, not a number"),
        ({"user": "CORP\\", "ip": "198.18.0.1"}, 'user: "CORP\\\\" has an empty account or domain part'),
        ({"user": "@corp", "ip": "198.18.0.1"}, 'user: "@corp" has an empty account or domain part'),
        ({"user": "a\\b\\c", "ip": "198.18.0.1"}, 'user: "a\\\\b\\\\c" has more than one backslash'),
        ({"user": "a" * 257, "ip": "198.18.0.1"}, "user: " + json.dumps("a" * 64) + "... is 257 characters"),
        ({"user": "al\nice", "ip": "198.18.0.1"}, 'user: "al\\nice" contains a control character'),
        ({"user": "al\x85ice", "ip": "198.18.0.1"}, 'user: "al\\u0085ice" contains a control character'),
        ({"user": "al\u2028ice", "ip": "198.18.0.1"}, 'user: "al\\u2028ice" contains a control character'),
        ({"user": "al\ud800ice", "ip": "198.18.0.1"}, 'user: "al\\ud800ice" contains a control character'),
        ({"user": "alice"}, "ip: is required"),
        ({"user": "alice", "ip": None}, "ip: is required"),
        ({"user": "alice", "ip": 3232235777}, "ip: must be a string, not a number"),
        ({"user": "alice", "ip": "0.0.0.0"}, 'ip: "0.0.0.0" cannot be a client address'),
        ({"user": "alice", "ip": "ff02::1"}, 'ip: "ff02::1" cannot be a client address'),
        ({"user": "alice", "ip": "198.18.0.0/24"}, 'ip: "198.18.0.0/24" is not an IP address'),
        ({"user": "alice", "ip": "198.18.0.1", "type": "LOGIN"}, 'type: "LOGIN" is not "login" or "logout"'),
        ({"user": "alice", "ip": "198.18.0.1", "ttl": 604801}, "ttl: 604801 is not within 60..604800"),
        ({"user": "alice", "ip": "198.18.0.1", "ttl": 3600.0}, "ttl: must be a whole number of seconds"),
        ({"user": "alice", "ip": "198.18.0.1", "ttl": "3600"}, "ttl: must be a whole number of seconds"),
        (
            {"user": "alice", "ip": "198.18.0.1", "ttl": True},
            "ttl: must be a whole number of seconds, not a b",
        ),
        (
            {"user": "alice", "ip": "198.18.0.1", "time": "2026-11-22T12:05:01Z"},
            'time: "2026-11-22T12:05:01Z" is more',
        ),
        (
            {"user": "alice", "ip": "198.18.0.1", "time": "2026-11-22T14:05:01+02:00"},
            'time: "2026-11-22T14:05:01+02:00" is more',
        ),
        (
            {"user": "alice", "ip": "198.18.0.1", "time": "2026-11-22T12:00:00"},
            'time: "2026-11-22T12:00:00" is not',
        ),
        (
            {"user": "alice", "ip": "198.18.0.1", "time": "2026-02-30T12:00:00Z"},
            'time: "2026-02-30T12:00:00Z" is not',
        ),
        (
            {"user": "alice", "ip": "198.18.0.1", "time": "0001-01-01T00:00:00+01:00"},
            'time: "0001-01-01T00:00:00+01:00" is not',
        ),
        ({"user": "alice", "ip": "198.18.0.1", "time": 1700000000}, "time: must be a string, not a number"),
        (
            {"user": "alice", "ip": "198.18.0.1", "host": "h" * 256},
            "host: " + json.dumps("h" * 64) + "... is 256",
        ),
        (
            {"user": "alice", "ip": "198.18.0.1", "detail": ["x"]},
            "detail: must be an object of strings, not an a",
        ),
        (
            {"user": "alice", "ip": "198.18.0.1", "detail": {"a": 1}},
            "detail.a: must be a string, not a number",
        ),
        ({"user": "alice", "ip": "198.18.0.1", "detail": {"a b": "x"}}, 'detail: key "a b" is not a name'),
        (
            {"user": "alice", "ip": "198.18.0.1", "detail": {"Replaced": "x"}},
            'detail: key "Replaced" is reserv',
        ),
        (
            {"user": "alice", "ip": "198.18.0.1", "detail": {"a": "x" * 257}},
            "detail.a: " + json.dumps("x" * 64),
        ),
        (
            {"user": "alice", "ip": "198.18.0.1", "detail": {f"k{i}": "v" for i in range(17)}},
            "detail: has 17 entries",
        ),
    ],
)
def test_field_errors(event: dict[str, Any], problem: str) -> None:
    c, sink = client()
    found = problems(post(c, event))
    assert len(found) == 1 and found[0].startswith(problem), found
    assert sink.items == []


def test_times_in_the_near_future_and_past_are_kept_in_utc() -> None:
    c, sink = client()
    for text in ("2026-11-22T12:04:59Z", "2026-11-22t13:00:00.123456789+01:00", "1999-01-01T00:00:00-05:30"):
        assert post(c, {"user": "alice", "ip": "198.18.0.1", "time": text}).status_code == 202
    assert [e.time for e in sink.events()] == [
        datetime(2026, 11, 22, 12, 4, 59, tzinfo=UTC),
        datetime(2026, 11, 22, 12, 0, 0, 123456, tzinfo=UTC),
        datetime(1999, 1, 1, 5, 30, tzinfo=UTC),
    ]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "body: is empty"),
        (b"{", "body: not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
        (b'{"user": "a", "user": "b", "ip": "198.18.0.1"}', 'body: duplicate key "user"'),
        (b'{"user": "a", "ip": "198.18.0.1", "ttl": NaN}', "body: NaN is not a JSON number"),
        (b'{"user": "\xff"}', "body: is not UTF-8 (bad byte at offset 10)"),
        (b"[" * 100_000 + b"]" * 100_000, "body: JSON nested too deeply"),
        (b'{"ttl": ' + b"9" * 5000 + b"}", "body: not valid JSON: Exceeds the limit"),
        (b"[]", 'body: must be a JSON object (one event) or {"events": [...]}, not an array'),
        (b'{"events": {"user": "a"}}', "events: must be an array of event objects, not an object"),
        (b'{"events": [], "user": "a"}', 'body: unknown key "user" next to "events"'),
    ],
)
def test_body_problems(body: bytes, problem: str) -> None:
    c, sink = client()
    found = problems(post(c, body))
    assert found[0].startswith(problem), found
    assert sink.items == []


def test_problem_list_is_capped_but_counted() -> None:
    c, _ = client(max_events=5000)
    r = post(c, {"events": [{"user": "", "ip": "x"}] * 2000})
    doc = r.get_json()
    assert r.status_code == 400 and doc["problem_count"] == 4000 and len(doc["problems"]) == MAX_LISTED
    assert doc["problems"][:2] == [
        "events[0].user: must not be empty",
        'events[0].ip: "x" is not an IP address',
    ]


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"],
)
def test_415_unless_json(content_type: str | None) -> None:
    c, sink = client()
    r = post(c, {"user": "alice", "ip": "198.18.0.1"}, content_type=content_type)
    assert r.status_code == 415 and "application/json" in r.get_json()["error"]
    assert sink.items == []


def test_json_with_utf8_charset_parameter_is_fine() -> None:
    c, _ = client()
    assert (
        post(c, {"user": "a", "ip": "198.18.0.1"}, content_type="Application/JSON; charset=UTF-8").status_code
        == 202
    )


def test_413_for_an_oversized_body_and_for_too_many_events() -> None:
    c, sink = client(max_body=1000, max_events=3)
    big = {"user": "alice", "ip": "198.18.0.1", "host": "h" * 1000}
    r = post(c, big)
    assert r.status_code == 413 and r.get_json() == {"error": "request body is over 1000 bytes"}
    r = post(c, {"events": [{"user": "a", "ip": "198.18.0.1"}] * 4})
    assert r.status_code == 413
    assert r.get_json()["problems"] == ["events: 4 events in one request; at most 3 (split the batch)"]
    assert post(c, {"events": [{"user": "a", "ip": "198.18.0.1"}] * 3}).status_code == 202
    assert len(sink.items) == 3


def test_503_when_the_queue_is_full_says_how_many_were_taken() -> None:
    c, sink = client(CollectingSink(capacity=2))
    r = post(c, {"events": [{"user": f"u{i}", "ip": "198.18.0.1"} for i in range(5)]})
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert r.get_json() == {"error": "ingest queue is full; retry later", "accepted": 2}
    assert [e.user for e in sink.events()] == ["u0", "u1"] and sink.dropped == 1


def test_sender_allowlist() -> None:
    allowed = {"vpn": [AddressRange.parse("198.18.5.0/24")], "portal": []}
    c, sink = client(allowed=allowed)
    event = {"user": "alice", "ip": "198.18.0.1"}
    r = post(c, event, remote="198.18.6.1")
    assert r.status_code == 403 and "error" in r.get_json()
    assert post(c, event, remote="198.18.5.9").status_code == 202
    assert post(c, event, remote="::ffff:198.18.5.9").status_code == 202  # a dual-stack listener's view
    assert post(c, event, remote="198.18.6.1", token=PORTAL).status_code == 202  # empty list: anywhere
    assert len(sink.items) == 3
    with pytest.raises(ValueError, match=r"allowed_senders names source\(s\) without a token: nosuch"):
        client(allowed={"nosuch": [AddressRange.parse("198.18.0.0/15")]})


def test_other_routes_and_methods_answer_json_with_security_headers() -> None:
    c, _ = client()
    for r, status in ((c.get(API_PATH), 405), (c.get("/"), 404), (c.post("/api/v1/other"), 404)):
        assert r.status_code == status and r.mimetype == "application/json" and "error" in r.get_json()
        assert r.headers["Cache-Control"] == "no-store" and r.headers["X-Content-Type-Options"] == "nosniff"
    assert c.get(API_PATH).headers["Allow"] == "POST"
    assert c.options(API_PATH).status_code == 405


def test_an_internal_error_is_json_without_details(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def emit(
            self, source: str, result: ParseResult, position: str | None = None, *, block: bool = True
        ) -> bool:
            raise RuntimeError("secret internals")

    c, _ = client(Broken())
    with caplog.at_level(logging.ERROR, logger="userseg.api"):
        r = post(c, {"user": "alice", "ip": "198.18.0.1"})
    assert r.status_code == 500 and r.get_json() == {"error": "internal server error"}
    assert b"secret" not in r.data and b"Traceback" not in r.data
    assert "secret internals" in caplog.text


def test_the_token_never_reaches_the_log(caplog: pytest.LogCaptureFixture) -> None:
    c, _ = client()
    wrong = new_token()
    with caplog.at_level(logging.DEBUG):
        post(c, {"user": "alice", "ip": "198.18.0.1"}, token=wrong)
        post(c, {"user": "alice", "ip": "x"})
        post(c, {"user": "alice", "ip": "198.18.0.1"})
    assert "refused 127.0.0.1: no valid bearer token" in caplog.text
    assert wrong not in caplog.text and VPN not in caplog.text and VPN[4:20] not in caplog.text


# ------------------------------------------------------------------------------------ events_from_body


def test_events_from_body_needs_an_aware_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        events_from_body({"user": "a", "ip": "198.18.0.1"}, source="s", now=datetime(2026, 1, 1))
    tz = timezone(timedelta(hours=2))
    [event] = events_from_body({"user": "a", "ip": "198.18.0.1"}, source="s", now=NOW.astimezone(tz))
    assert event.time == NOW and event.time.tzinfo is UTC


def test_too_many_events_is_a_body_error() -> None:
    with pytest.raises(TooManyEvents) as caught:
        events_from_body({"events": [{}] * 11}, source="s", now=NOW, max_events=10)
    assert isinstance(caught.value, BodyError) and len(caught.value.problems) == 1


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
NEAR = st.one_of(
    JSON, st.sampled_from(["alice", "C\\b", "a@b", "198.18.0.1", "::1", "login", "logout", 60, ""])
)
EVENTISH = st.dictionaries(
    st.sampled_from(["user", "ip", "type", "ttl", "time", "domain", "host", "detail", "x"]), NEAR, max_size=8
)
BODIES = st.one_of(
    JSON, EVENTISH, st.fixed_dictionaries({"events": st.lists(st.one_of(EVENTISH, JSON), max_size=5)})
)


@settings(max_examples=400, deadline=None)
@given(BODIES)
def test_events_from_body_never_raises_anything_but_body_error(doc: object) -> None:
    try:
        events = events_from_body(doc, source="s", now=NOW, max_events=4)
    except BodyError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
    else:
        assert all(isinstance(e, LoginEvent) and e.source == "s" for e in events)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.binary(max_size=200), JSON.map(lambda d: json.dumps(d).encode()), st.text().map(str.encode))
)
def test_parse_json_never_raises_anything_but_body_error(body: bytes) -> None:
    try:
        parse_json(body)
    except BodyError as exc:
        assert len(exc.problems) == 1 and exc.problems[0].startswith("body: ")


NAME = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\\@"),
    min_size=1,
    max_size=40,
).filter(lambda s: s.strip() == s and s != "")
ADDRESS = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).filter(
    lambda a: (
        not a.is_multicast and not a.is_unspecified and not (a.version == 6 and a.ipv4_mapped is not None)
    )
)


@st.composite
def valid_events(draw: st.DrawFn) -> tuple[dict[str, Any], LoginEvent]:
    user, domain = draw(NAME), draw(st.one_of(st.just(""), NAME))
    addr = draw(ADDRESS)
    doc: dict[str, Any] = {"ip": str(addr)}
    form = draw(st.sampled_from(["plain", "backslash", "upn", "key"])) if domain else "plain"
    doc["user"] = {"plain": user, "backslash": f"{domain}\\{user}", "upn": f"{user}@{domain}", "key": user}[
        form
    ]
    if form == "key":
        doc["domain"] = domain
    domain = "" if form == "plain" else domain
    kind = draw(st.sampled_from([None, "login", "logout"]))
    if kind is not None:
        doc["type"] = kind
    ttl = draw(st.one_of(st.none(), st.integers(60, 604800)))
    if ttl is not None:
        doc["ttl"] = ttl
    instant = draw(st.one_of(st.none(), st.datetimes(datetime(1990, 1, 1), datetime(2026, 11, 22, 12, 5))))
    if instant is not None:
        instant = instant.replace(tzinfo=UTC)
        zone = timezone(timedelta(minutes=draw(st.integers(-12 * 60, 14 * 60))))
        doc["time"] = instant.astimezone(zone).isoformat()
    host = draw(st.one_of(st.just(""), NAME))
    if host:
        doc["host"] = host
    drawn = draw(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True), NAME, max_size=3))
    pairs = {k: v for k, v in drawn.items() if k not in RESERVED_DETAIL}
    send_empty = draw(st.booleans())
    if pairs or send_empty:
        doc["detail"] = pairs
    event = LoginEvent(
        user=user, domain=domain, ip=addr, time=NOW if instant is None else instant,
        kind=EventKind.LOGOFF if kind == "logout" else EventKind.LOGON, source="s", host=host, ttl=ttl,
        detail=(("format", "http"), *pairs.items()),
    )  # fmt: skip
    return doc, event


@settings(max_examples=150, deadline=None)
@given(st.lists(valid_events(), min_size=1, max_size=5), st.booleans())
def test_valid_events_round_trip(items: list[tuple[dict[str, Any], LoginEvent]], batch: bool) -> None:
    docs = [d for d, _ in items]
    body: object = {"events": docs} if batch or len(docs) > 1 else docs[0]
    assert events_from_body(body, source="s", now=NOW) == [e for _, e in items]
