"""Winlogbeat JSON, both schemas: legacy 6.x and ECS (7.x/8.x).

Legacy 6.x (what the published OTRF samples are):

    {"@timestamp": "2019-05-18T20:37:19.472Z", "event_id": 4624, "log_name": "Security",
     "computer_name": "HFDC01.shire.com", "event_data": {"TargetUserName": "HR001$", ...}}

ECS 7.x/8.x (field names from Elastic's documented winlog.* schema):

    {"@timestamp": "...", "event": {"code": "4624", ...}, "host": {"name": ...},
     "winlog": {"event_id": "4624", "channel": "Security", "computer_name": "DC01.contoso.local",
                "event_data": {"TargetUserName": "alice", ...}}}

`winlog.event_id` is a number in 7.x and a string in 8.x; both are accepted
(and `event.code` when winlog has no event_id).  `host` is the computer that
logged the event (`computer_name`), not the beat's host: with Windows Event
Forwarding the beat runs on the collector, and logoffs pair with logons by
(computer, TargetLogonId).  `@timestamp` is the event's own time in UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from userseg.events.formats.common import Reject, event_id, event_time, json_object, text_field
from userseg.events.formats.windows import check_channel, login_event
from userseg.events.model import ParseResult

FORMAT: Final = "winlogbeat"


def parse_text(text: str, source: str, received: datetime) -> ParseResult:
    return from_object(json_object(text, "Winlogbeat"), source, received)


def _dict(obj: dict[str, Any], key: str, what: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if type(value) is not dict:
        raise Reject(f"Winlogbeat {what}{key} is {type(value).__name__}, not an object")
    return value


def from_object(obj: dict[str, Any], source: str, received: datetime) -> ParseResult:
    """The result for one decoded Winlogbeat object (either schema); raises Skip/Reject."""
    winlog = obj.get("winlog")
    if winlog is not None:
        if type(winlog) is not dict:
            raise Reject(f"Winlogbeat winlog is {type(winlog).__name__}, not an object")
        raw_id = winlog.get("event_id")
        if raw_id is None:
            raw_id = _dict(obj, "event", "").get("code")
        eid = event_id(raw_id, "Winlogbeat winlog.event_id")
        channel = text_field(winlog, "channel", "Winlogbeat winlog.")
        host = text_field(winlog, "computer_name", "Winlogbeat winlog.")
        data = _dict(winlog, "event_data", "winlog.")
    else:
        eid = event_id(obj.get("event_id"), "Winlogbeat event_id")
        channel = text_field(obj, "log_name", "Winlogbeat ")
        host = text_field(obj, "computer_name", "Winlogbeat ")
        data = _dict(obj, "event_data", "")
    check_channel(channel, eid)
    stamp = obj.get("@timestamp")
    time = event_time(stamp, "Winlogbeat @timestamp") if stamp is not None else None
    return login_event(eid, data, host=host, time=time or received, source=source, fmt=FORMAT)
