"""Samba AD DC `auth_json_audit` lines: one JSON object per line, usually with leading spaces.

    {"timestamp": "2026-11-22T05:27:37.618903+0000", "type": "Authentication",
     "Authentication": {"eventId": 4624, "logonType": 3, "status": "NT_STATUS_OK",
      "remoteAddress": "ipv4:198.18.10.11:32610", "serviceDescription": "Kerberos KDC",
      "authDescription": "ENC-TS Pre-authentication", "clientAccount": "alice@LAB.EXAMPLE",
      "becameAccount": "alice", "becameDomain": "LAB", ...}}

(real lines, captured from the lab DC, are in tests/data/events/samba/).

- "Authentication": eventId 4624 with status NT_STATUS_OK is a LOGON; 4625, or
  any other status, a FAILURE.  Samba before 4.11 wrote no eventId: the status
  alone decides then.  A wrongly typed field (eventId "4624", a numeric
  remoteAddress) is a rejection: Samba never writes those, so the line was
  forged or mangled.
- "Authorization" (Kerberos SMB sessions, LDAP GSSAPI/simple binds after
  their Authentication) is a LOGON with event_id None; `account`/`domain`
  name the user and `logonServer` the DC.  Other audit types Samba can log
  (password changes, dsdb changes) are Skipped.
- The account is becameAccount/becameDomain when Samba resolved one, else
  clientAccount split at "@" or "\\" (an unknown user has only that).
- remoteAddress is "ipv4:A.B.C.D:PORT" or "ipv6:ADDR:PORT" (the IPv6 address
  is not bracketed: the port is after the last colon, as the lab DC writes
  "ipv6:2001:db8:10::12:31696"), "unix:..." for local sockets, or null.  An
  event without a client address (null, unix:, loopback) is Skipped: it is
  the DC talking to itself (samba-tool, winbindd), never a user at a client.
- `host` is the DC when the event names it (Authorization's logonServer);
  Authentication events carry no server name, so it stays "".
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from userseg.events.formats.common import (
    Reject,
    Skip,
    account,
    client_ip,
    detail,
    event_time,
    json_object,
    name,
    shown,
)
from userseg.events.model import EventKind, LoginEvent, ParseResult
from userseg.model import IPAddress

FORMAT: Final = "samba"
_OK: Final = "NT_STATUS_OK"
_LOGON: Final = EventKind.LOGON  # a module global is ~4x faster to read than the enum member
_FAILURE: Final = EventKind.FAILURE
# body field -> detail key (all optional; null and absent are left out)
_AUTHN_DETAIL: Final[tuple[tuple[str, str], ...]] = (
    ("serviceDescription", "service"),
    ("authDescription", "auth"),
    ("passwordType", "password_type"),
    ("status", "status"),
    ("workstation", "workstation"),
)
_DETAIL_CACHE: dict[tuple[object, ...], tuple[tuple[str, str], ...]] = {}
_DETAIL_CACHE_MAX: Final = 4096
_AUTHZ_DETAIL: Final[tuple[tuple[str, str], ...]] = (
    ("serviceDescription", "service"),
    ("authType", "auth"),
    ("transportProtection", "transport"),
)


def parse_text(text: str, source: str, received: datetime) -> ParseResult:
    return from_object(json_object(text, "Samba"), source, received)


def _str(body: dict[str, Any], key: str, typ: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if type(value) is not str:
        raise Reject(f"Samba {typ}.{key} is {type(value).__name__}, not text")
    return value


def remote_address(value: object, typ: str) -> IPAddress | None:
    """The client address of a Samba tsocket string ("ipv4:198.18.10.11:57494"); None if local."""
    if value is None:
        return None
    if type(value) is not str:
        raise Reject(f"Samba {typ}.remoteAddress is {type(value).__name__}, not text")
    family, _, rest = value.partition(":")
    if family == "ipv4" or family == "ipv6":
        addr, sep, port = rest.rpartition(":")
        if not sep or not port.isdigit() or not port.isascii() or len(port) > 5:
            raise Reject(f"Samba {typ}.remoteAddress has no port: {shown(value)}")
        if (":" in addr) != (family == "ipv6"):
            raise Reject(f"Samba {typ}.remoteAddress is not an {family} address: {shown(value)}")
        return client_ip(addr, f"Samba {typ}.remoteAddress")
    if family == "unix":
        return None
    raise Reject(f"Samba {typ}.remoteAddress has an unknown form: {shown(value)}")


def _details(
    typ: str, body: dict[str, Any], fields: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, str], ...]:
    """The detail pairs for the body's service/auth/status fields, memoised.

    A DC logs a handful of distinct combinations (Kerberos KDC + ENC-TS + OK, LDAP
    simple bind ...), so building and checking them once saves ~2 us per line.
    """
    key: tuple[object, ...] | None = (typ, *[body.get(k) for k, _ in fields])
    try:
        return _DETAIL_CACHE[key]  # type: ignore[index]
    except KeyError:
        pass
    except TypeError:  # an unhashable value (a list where text belongs): build without the cache
        key = None
    out = [("format", FORMAT), ("type", typ)]
    for k, label in fields:
        value = body.get(k)
        if value is not None and value != "":
            out.append((label, detail(value if type(value) is str else str(value))))
    details = tuple(out)
    if key is not None:
        if len(_DETAIL_CACHE) >= _DETAIL_CACHE_MAX:
            _DETAIL_CACHE.clear()  # hostile variety must not grow it
        _DETAIL_CACHE[key] = details
    return details


def from_object(obj: dict[str, Any], source: str, received: datetime) -> ParseResult:
    """The result for one decoded Samba audit object; raises Skip/Reject (see module docstring)."""
    typ = obj.get("type")
    if typ != "Authentication" and typ != "Authorization":
        if type(typ) is str:
            raise Skip(f"Samba {shown(typ)} event is not a logon event")
        raise Reject("Samba event without a text 'type'")
    body = obj.get(typ)
    if type(body) is not dict:
        raise Reject(f"Samba {typ} event without its {typ!r} object")
    stamp = obj.get("timestamp")
    time = received
    if stamp is not None:
        time = event_time(stamp, "Samba timestamp") or received
    if typ == "Authentication":
        eid = body.get("eventId")
        if eid is not None and type(eid) is not int:
            raise Reject(f"Samba Authentication.eventId is {type(eid).__name__}, not an integer")
        status = _str(body, "status", typ)
        if eid == 4625 or (status and status != _OK):
            kind = _FAILURE
        elif eid == 4624 or (eid is None and status == _OK):
            kind = _LOGON
        elif eid is None:
            raise Reject("Samba Authentication event with neither eventId nor status")
        else:
            raise Skip(f"Samba event {eid} is not a logon event")
        became = _str(body, "becameAccount", typ)
        if became:
            user, domain = account(became, _str(body, "becameDomain", typ))
        else:
            user, domain = account(_str(body, "clientAccount", typ), _str(body, "clientDomain", typ))
        logon_type = body.get("logonType")
        if logon_type is not None and (type(logon_type) is not int or not 0 <= logon_type <= 1_000_000):
            raise Reject(f"Samba Authentication.logonType is not a logon type: {shown(logon_type)}")
        fields, host = _AUTHN_DETAIL, ""
    else:
        kind, eid, logon_type = _LOGON, None, None
        user, domain = account(_str(body, "account", typ), _str(body, "domain", typ))
        fields, host = _AUTHZ_DETAIL, name(_str(body, "logonServer", typ), "Samba logonServer")
    ip = remote_address(body.get("remoteAddress"), typ)
    if ip is None:
        raise Skip(f"Samba {typ} event without a client address ({shown(body.get('remoteAddress'))})")
    details = _details(typ, body, fields)
    if stamp is not None:  # event_time accepted it: short ISO 8601 text, safe as it is
        details = (*details, ("timestamp", stamp))
    return LoginEvent(
        user=user,
        domain=domain,
        ip=ip,
        time=time,
        kind=kind,
        source=source,
        event_id=eid,
        logon_type=logon_type,
        host=host,
        detail=details,
    )
