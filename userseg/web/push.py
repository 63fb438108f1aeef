"""`POST /api/v1/events`: systems that know who logged on where (a VPN concentrator, a NAC,
a captive portal, a script) push login events over HTTP.

Request: `Authorization: Bearer <token>` and `Content-Type: application/json`;
the body is one event object, or `{"events": [event, ...]}` for a batch.  An
event is::

    {"user": "alice" | "CORP\\\\alice" | "alice@corp.example",   required
     "ip": "198.18.10.11",                                        required, IPv4 or IPv6
     "type": "login" | "logout",                                  default "login"
     "ttl": 3600,                                                 60..604800 s; default: the source's TTL
     "time": "2024-05-01T08:00:00Z",                              RFC 3339 with a zone; default: now
     "domain": "CORP", "host": "vpn1",                            optional
     "detail": {"portal": "guest-wifi"}}                          optional short strings, for provenance

`null` for an optional key means "absent"; any other key is an error.

Answers (always JSON, never cached):

* 202 `{"accepted": n}`: every event was handed to ingestion.
* 400 `{"error", "problems": [...], "problem_count"}`: each problem names its
  place (`events[3].ip: "300.1.1.1" is not an IP address`), and NOTHING from
  the body was accepted, so a client can fix and resend the whole body.
* 401 (with `WWW-Authenticate: Bearer realm="userseg"`): no valid token; the
  answer does not say what was wrong.  403: the token is valid but the
  sender's address is not in that source's `allowed_senders`.
* 413: the body is over `max_body` bytes (checked against Content-Length
  before reading, and enforced while reading a chunked body, which is never
  read past `max_body` + 1 bytes), or a batch holds more than `max_events`
  events.  Too many events is 413 rather than 400 because nothing is wrong
  with any event: the client only has to split the batch.
* 415: not `application/json` (or a charset other than UTF-8).
* 503 `{"error", "accepted": k}` with `Retry-After: 1`: the ingest queue is
  full.  This is the ONE case where part of a batch (its first k events) was
  accepted.  Re-sending the whole body is safe: ingestion is idempotent for
  identical events (same user, IP and time), which is why clients should
  send `time` rather than rely on the default.

The token decides the source the events are attributed to; a body cannot
name its source.  No CSRF protection is needed: the API authenticates every
request with a bearer token and never uses cookies, so a browser cannot be
tricked into sending an authenticated request.  The sender's address is the
TCP peer; headers such as X-Forwarded-For are not trusted.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException

from userseg.events.model import EventKind, LoginEvent, Sink
from userseg.model import AddressRange, IPAddress
from userseg.web.server import (
    BodyError,
    LogLimiter,
    json_http_error,
    json_response,
    parse_json,
    read_body,
    secure_headers,
)
from userseg.web.tokens import TokenBook

__all__ = ["API_PATH", "BodyError", "TooManyEvents", "events_from_body", "push_blueprint"]

log = logging.getLogger("userseg.push")

API_PATH = "/api/v1/events"
MAX_BODY = 1 << 20
MAX_EVENTS = 10_000
MAX_USER = MAX_DOMAIN = 256
MAX_HOST = 255
MAX_DETAIL_ITEMS, MAX_DETAIL_VALUE = 16, 256
TTL_MIN, TTL_MAX = 60, 7 * 24 * 3600
MAX_FUTURE = timedelta(minutes=5)
MAX_LISTED = 1000  # problems listed in one 400 answer (problem_count has the total)
EVENT_KEYS = frozenset({"user", "ip", "type", "ttl", "time", "domain", "host", "detail"})
KINDS = {"login": EventKind.LOGON, "logout": EventKind.LOGOFF}
# Provenance keys the mapping rules write themselves: a client must not be able to forge
# "replaced" (what `--why` shows) or shadow the event's own fields.
RESERVED_DETAIL = frozenset(
    {"format", "source", "time", "kind", "user", "ip", "domain", "host", "event_id", "logon_type",
     "logon_id", "replaced", "ttl"}
)  # fmt: skip
_DETAIL_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
# Control characters (log and terminal injection), line/paragraph separators, unpaired
# surrogates (JSON `\ud800` decodes to one; it cannot be stored or logged as UTF-8).
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:[Zz]|[+-]\d\d:\d\d)")
_UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="userseg"'}


class TooManyEvents(BodyError):
    """A batch over `max_events`: nothing is wrong with the events, the client must split it."""


# ------------------------------------------------------------------------------------ validation


def events_from_body(
    doc: object, *, source: str, now: datetime, max_events: int = MAX_EVENTS
) -> list[LoginEvent]:
    """The LoginEvents a decoded JSON body stands for, all or nothing.

    Pure: `now` (tz-aware) is the receive time, used for events without
    `time` and to refuse times more than 5 minutes ahead.  Raises BodyError
    listing every problem (TooManyEvents for an oversized batch); never
    anything else, whatever `doc` holds.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC)
    if not isinstance(doc, dict):
        raise BodyError([f'body: must be a JSON object (one event) or {{"events": [...]}}, not {_kind(doc)}'])
    if "events" in doc:
        extra = [f'body: unknown key {_show(k)} next to "events"' for k in doc if k != "events"]
        items = doc["events"]
        if not isinstance(items, list):
            raise BodyError([*extra, f"events: must be an array of event objects, not {_kind(items)}"])
        if len(items) > max_events:
            raise TooManyEvents(
                [f"events: {len(items)} events in one request; at most {max_events} (split the batch)"]
            )
        places = [f"events[{i}]" for i in range(len(items))]
    else:
        extra, items, places = [], [doc], [""]
    problems: list[str] = list(extra)
    events: list[LoginEvent] = []
    for item, place in zip(items, places, strict=True):
        event = _Check(place, problems).event(item, source, now)
        if event is not None:
            events.append(event)
    if problems:
        raise BodyError(problems)
    return events


class _Check:
    """Validates one event object, appending each problem (prefixed with its place) to `problems`."""

    __slots__ = ("place", "problems")

    def __init__(self, place: str, problems: list[str]) -> None:
        self.place = place
        self.problems = problems

    def bad(self, key: str, message: str) -> None:
        where = f"{self.place}.{key}" if self.place and key else self.place or key or "body"
        self.problems.append(f"{where}: {message}")

    def event(self, item: object, source: str, now: datetime) -> LoginEvent | None:
        if not isinstance(item, dict):
            self.bad("", f"must be an event object, not {_kind(item)}")
            return None
        before = len(self.problems)
        for key in item:
            if key not in EVENT_KEYS:
                self.bad("", f"unknown key {_show(key)} (allowed: {', '.join(sorted(EVENT_KEYS))})")
        account = self.account(item.get("user"), item.get("domain"))
        ip = self.ip(item.get("ip"))
        kind = self.kind(item.get("type"))
        ttl = self.ttl(item.get("ttl"))
        when = self.time(item.get("time"), now)
        host = self.text(item.get("host"), "host", MAX_HOST)
        detail = self.detail(item.get("detail"))
        if len(self.problems) > before or account is None or ip is None or kind is None or when is None:
            return None
        user, domain = account
        return LoginEvent(
            user=user, domain=domain, ip=ip, time=when, kind=kind, source=source, event_id=None,
            host=(host or "").strip(), ttl=ttl, detail=(("format", "http"), *detail),
        )  # fmt: skip

    def text(self, value: object, key: str, limit: int, *, required: bool = False) -> str | None:
        if value is None:
            if required:
                self.bad(key, "is required")
            return None
        if not isinstance(value, str):
            self.bad(key, f"must be a string, not {_kind(value)}")
            return None
        if len(value) > limit:
            self.bad(key, f"{_show(value)} is {len(value)} characters long; at most {limit} are allowed")
            return None
        if _FORBIDDEN.search(value):
            self.bad(key, f"{_show(value)} contains a control character or an unpaired surrogate")
            return None
        return value

    def account(self, raw_user: object, raw_domain: object) -> tuple[str, str] | None:
        """`alice`, `DOMAIN\\alice` (split at the first backslash) or `alice@realm` (at the last @)."""
        text = self.text(raw_user, "user", MAX_USER, required=True)
        given = self.text(raw_domain, "domain", MAX_DOMAIN)
        if text is None:
            return None
        text, given = text.strip(), (given or "").strip()
        if not text:
            self.bad("user", "must not be empty")
            return None
        if "\\" in text:
            domain, _, user = text.partition("\\")
        elif "@" in text:
            user, _, domain = text.rpartition("@")
        else:
            user, domain = text, ""
        user, domain = user.strip(), domain.strip()
        if not user or (len(text) > len(user) and not domain):
            self.bad("user", f"{_show(text)} has an empty account or domain part")
            return None
        if "\\" in user:
            self.bad("user", f"{_show(text)} has more than one backslash")
            return None
        if domain and given and domain.casefold() != given.casefold():
            self.bad("domain", f"{_show(given)} contradicts the domain {_show(domain)} in user")
            return None
        return user, domain or given

    def ip(self, value: object) -> IPAddress | None:
        text = self.text(value, "ip", 64, required=True)
        if text is None:
            return None
        if "%" in text:
            self.bad("ip", f"{_show(text)} is a scoped IPv6 address; send it without the zone")
            return None
        addr = _address(text.strip())
        if addr is None:
            self.bad("ip", f"{_show(text)} is not an IP address")
        elif addr.is_unspecified or addr.is_multicast:
            self.bad("ip", f"{_show(text)} cannot be a client address")
            return None
        return addr

    def kind(self, value: object) -> EventKind | None:
        if value is None:
            return EventKind.LOGON
        kind = KINDS.get(value) if isinstance(value, str) else None
        if kind is None:
            self.bad("type", f'{_show(value)} is not "login" or "logout"')
        return kind

    def ttl(self, value: object) -> int | None:
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            self.bad("ttl", f"must be a whole number of seconds, not {_kind(value)}")
            return None
        if not TTL_MIN <= value <= TTL_MAX:
            self.bad("ttl", f"{value} is not within {TTL_MIN}..{TTL_MAX} seconds")
            return None
        return value

    def time(self, value: object, now: datetime) -> datetime | None:
        if value is None:
            return now
        text = self.text(value, "time", 64)
        if text is None:
            return None
        when: datetime | None = None
        if _RFC3339.fullmatch(text):
            try:
                when = datetime.fromisoformat(text.upper()).astimezone(UTC)
            except (ValueError, OverflowError):
                when = None
        if when is None:
            self.bad("time", f"{_show(text)} is not an RFC 3339 time with a zone (2024-05-01T08:00:00Z)")
        elif when > now + MAX_FUTURE:
            self.bad("time", f"{_show(text)} is more than 5 minutes in the future")
            return None
        return when

    def detail(self, value: object) -> list[tuple[str, str]]:
        if value is None:
            return []
        if not isinstance(value, dict):
            self.bad("detail", f"must be an object of strings, not {_kind(value)}")
            return []
        if len(value) > MAX_DETAIL_ITEMS:
            self.bad("detail", f"has {len(value)} entries; at most {MAX_DETAIL_ITEMS} are allowed")
            return []
        pairs: list[tuple[str, str]] = []
        for key, item in value.items():
            if not isinstance(key, str) or not _DETAIL_KEY.fullmatch(key):
                self.bad("detail", f"key {_show(key)} is not a name (letters, digits, _ . -; up to 64)")
            elif key.casefold() in RESERVED_DETAIL:
                self.bad("detail", f"key {_show(key)} is reserved")
            else:
                text = self.text(item, f"detail.{key}", MAX_DETAIL_VALUE, required=True)
                if text is not None:
                    pairs.append((key, text))
        return pairs


def _address(text: str) -> IPAddress | None:
    """An IP address; an IPv4-mapped IPv6 address becomes the IPv4 address the kernel sees."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _kind(value: object) -> str:
    """The JSON type of a value, for messages that must not echo it."""
    for types, name in (
        (bool, "a boolean"),
        (int | float, "a number"),
        (str, "a string"),
        (list, "an array"),
    ):
        if isinstance(value, types):
            return name
    return "null" if value is None else "an object"


def _show(value: object, limit: int = 64) -> str:
    """A client value quoted for an error message: ASCII-escaped (no control characters reach a
    log or terminal) and cut at `limit` characters."""
    if not isinstance(value, str):
        return _kind(value)
    return json.dumps(value[:limit]) + ("..." if len(value) > limit else "")


# ------------------------------------------------------------------------------------ the endpoint


def push_blueprint(
    tokens: TokenBook,
    sink: Sink,
    *,
    clock: Callable[[], datetime],
    max_body: int = MAX_BODY,
    max_events: int = MAX_EVENTS,
    allowed_senders: Mapping[str, Sequence[AddressRange]] | None = None,
) -> Blueprint:
    """The blueprint serving `POST /api/v1/events`.  `allowed_senders` maps a source name to
    the sender ranges its token may be used from (absent or empty: anywhere)."""
    if max_body < 1 or max_events < 1:
        raise ValueError("max_body and max_events must be positive")
    senders = {s: tuple(r) for s, r in (allowed_senders or {}).items() if r}
    unknown = sorted(set(senders) - tokens.sources)
    if unknown:
        raise ValueError(f"allowed_senders names source(s) without a token: {', '.join(unknown)}")
    push = _Push(tokens, sink, clock, max_body, max_events, senders)
    bp = Blueprint("push", __name__)
    bp.add_url_rule(API_PATH, "events", push.handle, methods=["POST"], provide_automatic_options=False)
    bp.after_request(secure_headers)
    bp.register_error_handler(HTTPException, json_http_error)
    return bp


class _Push:
    def __init__(
        self,
        tokens: TokenBook,
        sink: Sink,
        clock: Callable[[], datetime],
        max_body: int,
        max_events: int,
        senders: dict[str, tuple[AddressRange, ...]],
    ) -> None:
        self.tokens, self.sink, self.clock = tokens, sink, clock
        self.max_body, self.max_events, self.senders = max_body, max_events, senders
        self.limiter = LogLimiter(log)

    def handle(self) -> Response:
        remote = request.remote_addr or "?"
        source = self.tokens.authenticate(request.headers.get("Authorization"))
        if source is None:
            self.limiter.say("auth", logging.WARNING, "push API: refused %s: no valid bearer token", remote)
            return json_response(401, {"error": "a valid bearer token is required"}, _UNAUTHORIZED)
        allowed = self.senders.get(source)
        if allowed is not None and not _sender_in(remote, allowed):
            self.limiter.say(
                f"from:{source}", logging.WARNING, "push API: %r: refused sender %s", source, remote
            )
            return json_response(403, {"error": "this address may not push events with this token"})
        charset = request.mimetype_params.get("charset", "utf-8").lower()
        if request.mimetype != "application/json" or charset not in ("utf-8", "utf8"):
            return json_response(415, {"error": "Content-Type must be application/json (UTF-8)"})
        if (request.content_length or 0) > self.max_body:
            return self._too_large()
        try:
            body = read_body(self.max_body)
            if body is None:
                return self._too_large()
            doc = parse_json(body)
            events = events_from_body(doc, source=source, now=self.clock(), max_events=self.max_events)
        except BodyError as exc:
            status = 413 if isinstance(exc, TooManyEvents) else 400
            problems = exc.problems
            self.limiter.say(f"body:{source}", logging.INFO, "push API: %r from %s: refused a body: %s (%d)",
                             source, remote, problems[0], len(problems))  # fmt: skip
            error = "too many events" if status == 413 else "invalid request body; nothing was accepted"
            listed = list(problems[:MAX_LISTED])
            return json_response(status, {"error": error, "problems": listed, "problem_count": len(problems)})
        accepted = 0
        for event in events:
            if not self.sink.emit(source, event, block=False):
                self.limiter.say("full", logging.WARNING, "push API: queue full: %r: took %d of %d event(s)",
                                 source, accepted, len(events))  # fmt: skip
                body_503 = {"error": "ingest queue is full; retry later", "accepted": accepted}
                return json_response(503, body_503, {"Retry-After": "1"})
            accepted += 1
        log.debug("push API: source %r from %s: accepted %d event(s)", source, remote, accepted)
        return json_response(202, {"accepted": accepted})

    def _too_large(self) -> Response:
        return json_response(413, {"error": f"request body is over {self.max_body} bytes"})


def _sender_in(remote: str, allowed: tuple[AddressRange, ...]) -> bool:
    addr = _address(remote)
    return addr is not None and any(r.contains(addr) for r in allowed)
