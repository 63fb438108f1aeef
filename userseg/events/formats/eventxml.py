"""Rendered Windows event XML (`<Event xmlns=...><System>...</System><EventData>...`), parsed safely.

    <Event xmlns='http://schemas.microsoft.com/win/2004/08/events/event'><System>
      <EventID>4624</EventID><TimeCreated SystemTime='2020-03-02T20:51:32.557777800Z'/>
      <Channel>Security</Channel><Computer>SRV.example.local</Computer></System>
      <EventData><Data Name='TargetUserName'>alice</Data>...</EventData></Event>

Safety: the input comes from the network, so it is parsed with expat
callbacks (no tree, no DOM) and no document type is ever processed.  A
DOCTYPE or ENTITY declaration anywhere is a rejection before expansion
starts (billion laughs, quadratic blow-up, external entities: XXE), external
entity references are refused, and parameter entities are never parsed.
Nothing is ever fetched from the network or a file.  Nesting deeper than
MAX_DEPTH elements is a rejection too.

Tolerance: anything before `<Event` (a syslog header, an `<?xml?>`
declaration) and after the last `</Event>` is ignored.  That is also all it
takes for text copied from the Internet Explorer XML view (how Microsoft's
documentation shows events, and how admins paste them when testing): its
"- " fold markers are not well-formed before the root element, but inside it
they are plain character data between elements, which XML allows and this
parser never reads.  No rewriting of the input is needed or done.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final
from xml.parsers import expat

from userseg.events.formats.common import Reject, event_id, event_time
from userseg.events.formats.windows import check_channel, login_event
from userseg.events.model import ParseResult

FORMAT: Final = "xml"
MAX_DEPTH: Final = 32
_SYSTEM_TEXT: Final = frozenset({"EventID", "Computer", "Channel"})


class _Event:
    """Expat callbacks collecting System fields and EventData/Data[@Name] values.

    A value is all text inside its element (child elements, which Windows never
    writes there, contribute their text); it is stored when that element ends.
    """

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.system: dict[str, str] = {}
        self.data: dict[str, str] = {}
        self.system_time: str | None = None
        self._into: dict[str, str] | None = None  # where the captured value goes
        self._key = ""
        self._depth = 0  # stack depth of the element being captured
        self._text: list[str] = []

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        stack = self.stack
        local = tag.rpartition(":")[2] if ":" in tag else tag
        parent = stack[-1] if stack else ""
        stack.append(local)
        if len(stack) > MAX_DEPTH:
            raise Reject(f"event XML nested deeper than {MAX_DEPTH} elements")
        if self._into is not None:
            return
        if parent == "System":
            if local in _SYSTEM_TEXT:
                self._into, self._key, self._depth, self._text = self.system, local, len(stack), []
            elif local == "TimeCreated":
                self.system_time = attrs.get("SystemTime")
        elif parent == "EventData" and local == "Data":
            key = attrs.get("Name")
            if key is not None:
                self._into, self._key, self._depth, self._text = self.data, key, len(stack), []

    def end(self, tag: str) -> None:
        if self._into is not None and len(self.stack) == self._depth:
            self._into[self._key] = "".join(self._text)
            self._into = None
        self.stack.pop()

    def text(self, data: str) -> None:
        if self._into is not None:
            self._text.append(data)


def _refuse_dtd(*_: object) -> None:
    raise Reject("XML document type and entity declarations are refused")


def _refuse_external(*_: object) -> int:
    raise Reject("XML external entity references are refused")


def parse_text(text: str, source: str, received: datetime) -> ParseResult:
    """The result for one event XML document; raises Skip/Reject."""
    start = text.find("<Event")
    if start < 0:
        raise Reject("no <Event> element in the XML input")
    if "<!" in text[:start]:
        raise Reject("XML document type and entity declarations are refused")
    end = text.rfind("</Event>")
    if end < start:
        raise Reject("event XML is cut short (no </Event>)")
    ev = _Event()
    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    parser.ExternalEntityRefHandler = _refuse_external
    parser.StartElementHandler = ev.start
    parser.EndElementHandler = ev.end
    parser.CharacterDataHandler = ev.text
    try:
        parser.Parse(text[start : end + len("</Event>")], True)
    except expat.ExpatError as exc:
        why = expat.ErrorString(exc.code)
        raise Reject(f"event XML is not well-formed: {why} (line {exc.lineno})") from None
    eid = event_id(ev.system.get("EventID", "").strip() or None, "XML EventID")
    check_channel(ev.system.get("Channel", "").strip(), eid)
    time = None if ev.system_time is None else event_time(ev.system_time, "XML TimeCreated/@SystemTime")
    return login_event(
        eid,
        dict(ev.data),
        host=ev.system.get("Computer", "").strip(),
        time=time or received,
        source=source,
        fmt=FORMAT,
    )
