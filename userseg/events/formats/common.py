"""What every event parser shares: input limits, decoding, JSON loading, addresses, accounts, times.

Parsers signal a bad or unusable input by raising `Reject` or `Skip` from deep
inside a helper; `userseg.events.formats.parse` turns them into the `Rejected`
and `Skipped` results.  That keeps each format's happy path a straight line of
dict lookups (it runs 20,000+ times a second) instead of a result check after
every field.

Decisions that hold for every format (tested in tests/events/formats/):

- Input larger than MAX_LINE bytes, or bytes that are not UTF-8, is rejected
  before any parsing: a forwarder that glues lines together or a binary
  stream must show up as a clear rejection, not as a slow or partial parse.
- User, domain and host names are checked, not cleaned: longer than
  MAX_NAME characters, or holding a control character, a lone surrogate, a
  zero-width or a bidirectional-override character, is a rejection.  AD
  never issues such names; they exist to spoof what an admin reads in a
  mapping list ("alice" + U+202E ...).  Homoglyphs (Cyrillic U+0430 for Latin
  "a") are legitimate letters and pass: the rules compare names with the
  directory, where a look-alike account simply does not match a real user.
- Detail values are provenance only: they are cut at MAX_DETAIL characters
  and their control/invisible characters replaced by U+FFFD, never rejected.
- Loopback and unspecified client addresses mean "no client" (None), an
  IPv4-mapped IPv6 address is its IPv4 address, an IPv6 zone ("%eth0") is
  dropped (a mapping is per address, the kernel set has no zones); text that
  is not an address, multicast and broadcast addresses are rejections.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from userseg.model import IPAddress

MAX_LINE: Final = 65536  # bytes of one input (one line, one datagram, one XML event)
MAX_NAME: Final = 256  # characters of a user, domain or host name
MAX_LOGON_ID: Final = 64
MAX_DETAIL: Final = 256

_fast_loads: Callable[[str], Any] | None
try:  # optional: ~5x faster JSON decoding where it is installed; same results (see tests)
    from orjson import loads as _orjson_loads

    _fast_loads = _orjson_loads
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads = None


class Reject(Exception):
    """Malformed input; the message names the problem (becomes `Rejected`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Skip(Exception):
    """Well-formed input that is not a usable login event (becomes `Skipped`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def shown(value: object, limit: int = 64) -> str:
    """A value quoted for a reason text, cut short: reasons are logged, and input is hostile."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# -- input -------------------------------------------------------------------------------------------
def decode(data: str | bytes) -> str:
    """The input as text, within MAX_LINE bytes; bytes must be UTF-8."""
    if isinstance(data, str):
        n = len(data)
        if n > MAX_LINE:
            raise Reject(f"input too long ({n} bytes, limit {MAX_LINE})")
        if not data.isascii():  # O(1) in CPython; non-ASCII text is measured and checked in UTF-8
            try:
                n = len(data.encode("utf-8"))
            except UnicodeEncodeError as exc:  # a lone surrogate (text decoded with surrogateescape)
                bad = ord(data[exc.start])
                raise Reject(
                    f"input is not valid Unicode (lone surrogate U+{bad:04X} at {exc.start})"
                ) from None
            if n > MAX_LINE:
                raise Reject(f"input too long ({n} bytes, limit {MAX_LINE})")
        return data
    if not isinstance(data, bytes | bytearray):
        raise Reject(f"input is {type(data).__name__}, not text or bytes")
    if len(data) > MAX_LINE:
        raise Reject(f"input too long ({len(data)} bytes, limit {MAX_LINE})")
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Reject(f"input is not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def json_object(text: str, what: str) -> dict[str, Any]:
    """The JSON object in `text`, after any prefix (a syslog tag, "MSWinEventLog ...")."""
    start = text.find("{")
    if start < 0:
        raise Reject(f"no JSON object in the {what} input")
    body = text[start:] if start else text
    try:
        obj = _fast_loads(body) if _fast_loads is not None else json.loads(body)
    except RecursionError:
        raise Reject(f"{what} JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, orjson's, and int() digit limits
        raise Reject(f"{what} input is not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(obj, dict):
        raise Reject(f"{what} JSON is {type(obj).__name__}, not an object")
    return obj


# -- fields ------------------------------------------------------------------------------------------
# C0/C1 controls, lone surrogates, zero-width and bidirectional formatting characters
_INVISIBLE = "\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff\ud800-\udfff"
_BAD_NAME = re.compile(f"[{_INVISIBLE}]")


def text_field(obj: dict[str, Any], key: str, what: str) -> str:
    """A string field: missing or null is "", a number becomes its digits, anything else is rejected."""
    value = obj.get(key)
    if value is None:
        return ""
    if type(value) is str:
        return value
    if type(value) is int:
        return str(value)
    raise Reject(f"{what}{key} is {type(value).__name__}, not text")


def name(value: str, what: str, limit: int = MAX_NAME) -> str:
    """Check a user, domain or host name (see the module docstring); returns it unchanged."""
    if len(value) > limit:
        raise Reject(f"{what} too long ({len(value)} characters, limit {limit})")
    if value.isascii() and value.isprintable():  # the common case, ~10x cheaper than the search
        return value
    bad = _BAD_NAME.search(value)
    if bad is not None:
        raise Reject(f"{what} contains control or invisible character U+{ord(bad.group()):04X}")
    return value


def detail(value: str) -> str:
    """A provenance value, cut and with invisible characters made visible (never rejected)."""
    if len(value) > MAX_DETAIL:
        value = value[:MAX_DETAIL] + "..."
    elif value.isascii() and value.isprintable():
        return value
    if _BAD_NAME.search(value) is not None:
        value = _BAD_NAME.sub("\ufffd", value)
    return value


def event_id(value: object, what: str) -> int:
    """A Windows event id: an integer, or (Winlogbeat 8, Logstash) its decimal digits as text."""
    if type(value) is int:
        return value
    if type(value) is str and value.isdigit() and len(value) <= 9 and value.isascii():
        return int(value)
    if value is None:
        raise Reject(f"no {what}")
    raise Reject(f"{what} is not an event number: {shown(value)}")


def small_int(value: object, what: str) -> int | None:
    """Logon types and the like: None when absent or "-", an int or its digits otherwise."""
    if value is None or value == "" or value == "-":
        return None
    if type(value) is int:
        n = value
    elif type(value) is str and value.isdigit() and len(value) <= 9 and value.isascii():
        n = int(value)
    else:
        raise Reject(f"{what} is not a number: {shown(value)}")
    if not 0 <= n <= 1_000_000:
        raise Reject(f"{what} out of range: {n}")
    return n


def split_account(account: str, domain: str) -> tuple[str, str]:
    """("user", "DOMAIN") from "user", "DOMAIN\\user" or "user@REALM"; the given domain wins if set.

    4769/4770 and Samba's clientAccount name principals ("pgustavo@SHIRE.COM"); the
    user part is what the directory knows as sAMAccountName for users and machines.
    """
    if "\\" in account:
        dom, _, user = account.partition("\\")
        return user, domain or dom
    if "@" in account:
        user, _, realm = account.rpartition("@")
        if user:
            return user, domain or realm
    return account, domain


# Well-known principals that are never a person: Windows logs them in 4624/4634 all the time
# (service start, the login screen's Window Manager and Font Driver Host virtual accounts).
_BUILTIN_DOMAINS = frozenset({"nt authority", "window manager", "font driver host", "nt service"})


def account(user: str, domain: str) -> tuple[str, str]:
    """Checked (user, domain); Skip when there is no usable account."""
    user, domain = split_account(user, domain)
    if user in ("", "-"):
        raise Skip("no account")
    name(user, "user name")
    if domain == "-":
        domain = ""
    if name(domain, "domain name").casefold() in _BUILTIN_DOMAINS:
        raise Skip(f"built-in account {domain}\\{user} is not a person")
    return user, domain


# -- addresses ---------------------------------------------------------------------------------------
_BROADCAST4 = ipaddress.IPv4Address("255.255.255.255")
_IP_CACHE: dict[str, IPAddress | None] = {}  # client addresses repeat; parsing one costs ~4 us
_IP_CACHE_MAX = 65536


def client_ip(text: str, what: str) -> IPAddress | None:
    """The client address in `text`, None when there is none (see the module docstring)."""
    try:
        return _IP_CACHE[text]
    except KeyError:
        pass
    addr = _client_ip(text, what)
    if len(_IP_CACHE) >= _IP_CACHE_MAX:
        _IP_CACHE.clear()  # hostile input must not grow it; a refill costs little
    _IP_CACHE[text] = addr
    return addr


def _client_ip(text: str, what: str) -> IPAddress | None:
    t = text.strip()
    if t in ("", "-"):
        return None
    if len(t) > 64 or not t.isascii():
        raise Reject(f"{what} is not an IP address: {shown(t)}")
    t = t.partition("%")[0]
    try:
        addr: IPAddress = ipaddress.ip_address(t)
    except ValueError:
        raise Reject(f"{what} is not an IP address: {shown(t)}") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_loopback or addr.is_unspecified:
        return None
    if addr.is_multicast or addr == _BROADCAST4:
        raise Reject(f"{what} {t} is not a unicast address")
    return addr


# -- times -------------------------------------------------------------------------------------------
def utc(received: datetime) -> datetime:
    """The receive time in UTC; a naive one is a caller bug (it would be read as local time)."""
    if received.tzinfo is UTC:
        return received
    if received.tzinfo is None or received.utcoffset() is None:
        raise ValueError("received must be timezone-aware (UTC)")
    return received.astimezone(UTC)


def event_time(value: object, what: str) -> datetime | None:
    """An ISO 8601 time with a zone, in UTC; None when it has no zone; Reject when malformed."""
    if type(value) is not str or len(value) > 40:
        raise Reject(f"{what} is not a time: {shown(value)}")
    try:
        t = datetime.fromisoformat(value)
        if t.tzinfo is None:
            return None
        return t.astimezone(UTC)
    except (ValueError, OverflowError):
        raise Reject(f"{what} is not an ISO 8601 time: {shown(value)}") from None
