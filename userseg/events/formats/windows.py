"""The Windows Security event ids a mapper uses, and how their EventData becomes a LoginEvent.

NXLog, Winlogbeat, Snare and rendered XML carry the same event under different
wrappers; each format module digs out the event id, the computer, the time
and the EventData fields (by their Windows names: TargetUserName, IpAddress,
...) and hands them here, so what an event *means* is decided once.

| id | kind | account | address |
|---|---|---|---|
| 4624 | LOGON | TargetUserName / TargetDomainName | IpAddress |
| 4625 | FAILURE | same | IpAddress |
| 4634, 4647 | LOGOFF | same (TargetLogonId pairs it with its 4624 on the same host) | none |
| 4768 | LOGON if Status is 0, else FAILURE | TargetUserName / TargetDomainName | IpAddress |
| 4769 | same status rule | TargetUserName ("user@REALM") | IpAddress |
| 4770 | LOGON (a renewal shows the user is still there) | TargetUserName ("user@REALM") | IpAddress |

Any other id is Skipped; so is an event from another log than Security (the
ids are only unique within a provider) and one without a status where the
status decides.  A logon whose address is absent, "-" or loopback keeps
ip=None: it is a real logon (console, RDP from the host itself), and the
mapping rules count it under "no_address" rather than the parser hiding it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from userseg.events.formats.common import (
    MAX_LOGON_ID,
    Reject,
    Skip,
    account,
    client_ip,
    detail,
    name,
    shown,
    small_int,
    text_field,
)
from userseg.events.model import EventKind, LoginEvent

LOGON: Final = EventKind.LOGON
LOGOFF: Final = EventKind.LOGOFF
FAILURE: Final = EventKind.FAILURE
EVENT_IDS: Final = frozenset({4624, 4625, 4634, 4647, 4768, 4769, 4770})
_FIXED_KIND: Final = {4624: LOGON, 4625: FAILURE, 4634: LOGOFF, 4647: LOGOFF, 4770: LOGON}
# EventData field -> detail key, in the order they are listed
_DETAIL_FIELDS: Final = (
    ("AuthenticationPackageName", "auth"),
    ("WorkstationName", "workstation"),
    ("ServiceName", "service"),
    ("Status", "status"),
    ("SubStatus", "sub_status"),
)


def check_channel(channel: str, eid: int) -> None:
    """Event ids are per provider: a 4624 outside the Security log is someone else's event."""
    if channel and channel.casefold() != "security":
        raise Skip(f"event {eid} from log {shown(channel)} is not a Security log event")


def _status_ok(data: dict[str, Any], eid: int) -> bool:
    status = text_field(data, "Status", "")
    if not status or status == "-":
        raise Skip(f"event {eid} without a result status")
    try:
        return int(status, 16 if status[:2].lower() == "0x" else 10) == 0
    except ValueError:
        raise Reject(f"Status of event {eid} is not a number: {shown(status)}") from None


def login_event(
    eid: int,
    data: dict[str, Any],
    *,
    host: str,
    time: datetime,
    source: str,
    fmt: str,
    extra: tuple[tuple[str, str], ...] = (),
) -> LoginEvent:
    """The LoginEvent for event `eid` with EventData `data` (field name -> value); raises Skip/Reject."""
    kind = _FIXED_KIND.get(eid)
    if kind is None:
        if eid not in EVENT_IDS:
            raise Skip(f"event {eid} is not a logon event")
        kind = LOGON if _status_ok(data, eid) else FAILURE
    user, domain = account(text_field(data, "TargetUserName", ""), text_field(data, "TargetDomainName", ""))
    ip = None if kind is LOGOFF else client_ip(text_field(data, "IpAddress", ""), "IpAddress")
    logon_id = text_field(data, "TargetLogonId", "") if eid in (4624, 4634, 4647) else ""
    if logon_id:
        name(logon_id, "TargetLogonId", MAX_LOGON_ID)
    details = [("format", fmt)]
    for key, label in _DETAIL_FIELDS:
        value = data.get(key)
        if value is not None and value != "-" and value != "":
            details.append((label, detail(value if type(value) is str else str(value))))
    return LoginEvent(
        user=user,
        domain=domain,
        ip=ip,
        time=time,
        kind=kind,
        source=source,
        event_id=eid,
        logon_type=small_int(data.get("LogonType"), "LogonType"),
        host=name(host, "computer name"),
        logon_id=logon_id,
        detail=(*details, *extra),
    )
