"""NXLog `im_msvistalog` JSON (`to_json()`): the EventData fields flattened into the top level.

    {"EventID": 4624, "Hostname": "WORKSTATION5.theshire.local", "Channel": "Security",
     "EventTime": "2020-09-04 03:08:20", "EventReceivedTime": "2020-09-04 03:09:18",
     "TargetUserName": "pgustavo", "TargetDomainName": "THESHIRE", "IpAddress": "1.2.3.4",
     "LogonType": "10", "TargetLogonId": "0xa96e8", "Message": "...", ...}

Time: NXLog's EventTime is the event host's local time without a zone (its
default format), so it cannot be placed on a timeline by itself.  A zoned
time wins in this order: `@timestamp` (added by Logstash/Elastic pipelines,
UTC), EventTime, then EventReceivedTime when the NXLog config formats them
with a zone (`strftime(..., '%Y-%m-%dT%H:%M:%S%z')`); otherwise the receive
time.  The raw EventTime is kept in the detail either way.
"""

from __future__ import annotations

from contextlib import suppress
from datetime import datetime
from typing import Any, Final

from userseg.events.formats.common import Reject, detail, event_id, event_time, json_object, text_field
from userseg.events.formats.windows import check_channel, login_event
from userseg.events.model import ParseResult

FORMAT: Final = "nxlog"
_LOCAL_TIME_FIELDS: Final = ("EventTime", "EventReceivedTime")


def parse_text(text: str, source: str, received: datetime) -> ParseResult:
    return from_object(json_object(text, "NXLog"), source, received)


def from_object(obj: dict[str, Any], source: str, received: datetime) -> ParseResult:
    """The result for one decoded NXLog object; raises Skip/Reject."""
    eid = event_id(obj.get("EventID"), "NXLog EventID")
    check_channel(text_field(obj, "Channel", "NXLog "), eid)
    stamp = obj.get("@timestamp")
    time = event_time(stamp, "NXLog @timestamp") if stamp is not None else None
    if time is None:
        for key in _LOCAL_TIME_FIELDS:  # free-form by NXLog config: used only when zoned ISO 8601
            value = obj.get(key)
            if type(value) is str:
                with suppress(Reject):
                    time = event_time(value, key)
                if time is not None:
                    break
    raw = obj.get("EventTime")
    extra = (("event_time", detail(raw)),) if type(raw) is str and raw else ()
    return login_event(
        eid,
        obj,
        host=text_field(obj, "Hostname", "NXLog "),
        time=time or received,
        source=source,
        fmt=FORMAT,
        extra=extra,
    )
