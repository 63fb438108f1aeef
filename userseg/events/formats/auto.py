"""Format detection for sources that receive a mix (one syslog port fed by several forwarders).

The earliest of three markers decides: a `{` (JSON), `<Event` (event XML) or
`MSWinEventLog<TAB>` (Snare).  Earliest, because each format can contain the
others' markers later on: Snare messages hold `{GUID}`s, JSON messages hold
any text.  Whatever precedes the marker is a prefix the sender added
(`samba[123]: `, a syslog header, `MSWinEventLog ... `) and is ignored.

A JSON object is decoded once and classified by its shape:

| shape | format |
|---|---|
| `type` names an object member (`{"type": "Authentication", "Authentication": {...}}`) | Samba |
| a `winlog` object (ECS) or `event_data` / `event_id` + `computer_name` (6.x) | Winlogbeat |
| an `EventID` member | NXLog |
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from userseg.events.formats import eventxml, nxlog, samba, snare, winlogbeat
from userseg.events.formats.common import Reject, json_object
from userseg.events.model import ParseResult

_SNARE_MARK = "MSWinEventLog\t"


def detect(text: str) -> str | None:
    """ "json", "xml", "snare", or None: which marker comes first in `text`."""
    best, kind = len(text), None
    for mark, name in (("{", "json"), ("<Event", "xml"), (_SNARE_MARK, "snare")):
        at = text.find(mark, 0, best)
        if at >= 0:
            best, kind = at, name
    return kind


def json_format(obj: dict[str, Any]) -> str | None:
    """ "samba", "winlogbeat", "nxlog" or None for a decoded JSON object (see module docstring)."""
    typ = obj.get("type")
    if type(typ) is str and type(obj.get(typ)) is dict:
        return "samba"
    if "winlog" in obj or "event_data" in obj or ("event_id" in obj and "computer_name" in obj):
        return "winlogbeat"
    if "EventID" in obj:
        return "nxlog"
    return None


def parse_text(text: str, source: str, received: datetime) -> ParseResult:
    """The result for one input of any supported format; raises Skip/Reject."""
    kind = detect(text)
    if kind == "xml":
        return eventxml.parse_text(text, source, received)
    if kind == "snare":
        return snare.parse_text(text, source, received)
    if kind is None:
        raise Reject("unrecognised input: no JSON object, <Event> element or Snare MSWinEventLog line")
    obj = json_object(text, "JSON")
    fmt = json_format(obj)
    if fmt == "samba":
        return samba.from_object(obj, source, received)
    if fmt == "winlogbeat":
        return winlogbeat.from_object(obj, source, received)
    if fmt == "nxlog":
        return nxlog.from_object(obj, source, received)
    raise Reject("unrecognised JSON event (not Samba audit, Winlogbeat or NXLog)")
