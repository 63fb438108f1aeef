"""Snare `MSWinEventLog` lines: tab-separated header fields plus the rendered message, flattened.

    HOST<TAB>MSWinEventLog<TAB>1<TAB>Security<TAB>48041<TAB>Mon May 09 18:35:51 2011<TAB>4624<TAB>
    Microsoft-Windows-Security-Auditing<TAB>rdaw<TAB>N/A<TAB>Success Audit<TAB>DC1.example.com<TAB>
    None<TAB><TAB>An account was successfully logged on.    Subject:   Security ID:  S-1-0-0
    Account Name:  -   ...   New Logon:   Security ID:  S-1-5-21-...   Account Name:  rdaw
    Account Domain:  EXAMPLE ...   Source Network Address: 192.168.1.23 ...<TAB>27211

Snare has no EventData: the fields are read from the message text, where
Windows's CR/LF/TAB layout became runs of spaces.  The message is split at
the known English labels ("Account Name:", "Source Network Address:") and
section headers ("New Logon:"), because the same label occurs in several
sections (Subject's Account Name is the service that asked, New Logon's the
user).  A value ends at the first run of two spaces (the end of its line);
"Network Account Name" is one label, never "Account Name" (labels start a
chunk).  Lines that forwarders cut short (Snare's default 2 KB limit cuts
4624 messages inside the trailing explanation) still yield every field
before the cut.  When the message has no labels (a non-English
Windows), the account comes from Snare's user column and there is no address.

The header's time is the host's local time without a zone: the event time is
the receive time, with the raw text in the detail (`event_time`).  Anything
before "MSWinEventLog" (a syslog header, the sending host) is ignored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from userseg.events.formats.common import Reject, detail, event_id, shown
from userseg.events.formats.windows import check_channel, login_event
from userseg.events.model import ParseResult

FORMAT: Final = "snare"
_MARK: Final = "MSWinEventLog\t"
_SECTIONS: Final = (
    "Subject",
    "New Logon",
    "Logon Information",
    "Account For Which Logon Failed",
    "Failure Information",
    "Process Information",
    "Network Information",
    "Detailed Authentication Information",
    "Account Information",
    "Service Information",
    "Additional Information",
    "Certificate Information",
)
_LABELS: Final = (
    "Security ID",
    "Account Name",
    "Account Domain",
    "Logon ID",
    "Linked Logon ID",
    "Logon Type",
    "Logon GUID",
    "Network Account Name",
    "Network Account Domain",
    "Workstation Name",
    "Source Network Address",
    "Source Port",
    "Logon Process",
    "Authentication Package",
    "Failure Reason",
    "Status",
    "Sub Status",
    "Supplied Realm Name",
    "User ID",
    "Service Name",
    "Service ID",
    "Client Address",
    "Client Port",
    "Result Code",
    "Failure Code",
    "Process ID",
    "Process Name",
    "Caller Process ID",
    "Caller Process Name",
    "Transited Services",
    "Key Length",
    "Ticket Options",
    "Ticket Encryption Type",
    "Pre-Authentication Type",
)
_SECTION_SET: Final = frozenset(_SECTIONS)
_LABEL_SET: Final = frozenset(_LABELS)
_KNOWN: Final = _SECTION_SET | _LABEL_SET
_TARGET_SECTION: Final = {
    4624: "New Logon",
    4625: "Account For Which Logon Failed",
    4634: "Subject",
    4647: "Subject",
    4768: "Account Information",
    4769: "Account Information",
    4770: "Account Information",
}
_NETWORK: Final = "Network Information"


def message_fields(message: str) -> dict[tuple[str, str], str]:
    """(section, label) -> value, first occurrence; section "" for labels before any header.

    The flattened message is a sequence of chunks separated by two or more
    spaces (Windows's line breaks and tabs); a label chunk is "Label:" with its
    value in the next chunk, or "Label: value" where Windows put a single tab.
    Every label is also stored under ("*", label), so a field that moved
    between sections across Windows versions (Logon Type) is found either way.
    """
    if "\n" in message or "\r" in message:  # not flattened by the sender: the same layout
        message = message.replace("\r", " ").replace("\n", "  ")
    out: dict[tuple[str, str], str] = {}
    section = ""
    pending = ""  # a label whose value is the next chunk

    def put(label: str, value: str) -> None:
        out.setdefault((section, label), value)
        out.setdefault(("*", label), value)

    for raw in message.split("  "):  # str.split is ~15x faster than a regex split here
        chunk = raw.strip(" ")
        if not chunk:
            continue
        if chunk[-1] == ":" and chunk[:-1] in _KNOWN:  # "Label:" or "Section:"
            if pending:
                put(pending, "")  # the previous label had no value
            pending = chunk[:-1]
            if pending in _SECTION_SET:
                section, pending = pending, ""
        elif ": " in chunk and (split := chunk.partition(": "))[0] in _LABEL_SET:  # "Label: value"
            if pending:
                put(pending, "")
            put(split[0], split[2].strip(" "))
            pending = ""
        elif pending:
            put(pending, chunk)
            pending = ""
    if pending:
        put(pending, "")
    return out


def _first(fields: dict[tuple[str, str], str], *keys: tuple[str, str]) -> str | None:
    for key in keys:
        value = fields.get(key)
        if value is not None:
            return value
    return None


def parse_text(text: str, source: str, received: datetime) -> ParseResult:
    """The result for one Snare line; raises Skip/Reject."""
    at = text.find(_MARK)
    if at < 0:
        raise Reject("not a Snare line (no MSWinEventLog<TAB> field)")
    parts = text[at + len(_MARK) :].rstrip("\r\n").split("\t")
    if len(parts) < 10:
        raise Reject(f"Snare line has {len(parts)} fields after MSWinEventLog, expected 10 or more")
    log_name, raw_time, raw_id, user_column, computer = parts[1], parts[3], parts[4], parts[6], parts[9]
    eid = event_id(raw_id.strip(), "Snare event id")
    check_channel(log_name.strip(), eid)
    message = parts[12] if len(parts) > 12 else ""
    fields = message_fields(message) if eid in _TARGET_SECTION else {}
    data: dict[str, Any] = {}
    section = _TARGET_SECTION.get(eid, "")
    user = fields.get((section, "Account Name"))
    if user is None and user_column.strip() not in ("", "N/A"):
        user = user_column.strip()
    data["TargetUserName"] = user
    data["TargetDomainName"] = _first(fields, (section, "Account Domain"), (section, "Supplied Realm Name"))
    data["TargetLogonId"] = fields.get((section, "Logon ID"))
    data["LogonType"] = fields.get(("*", "Logon Type"))
    data["IpAddress"] = _first(fields, (_NETWORK, "Source Network Address"), (_NETWORK, "Client Address"))
    data["WorkstationName"] = fields.get((_NETWORK, "Workstation Name"))
    data["AuthenticationPackageName"] = fields.get(("*", "Authentication Package"))
    data["ServiceName"] = fields.get(("Service Information", "Service Name"))
    data["Status"] = _first(
        fields,
        ("Failure Information", "Status"),
        ("Additional Information", "Result Code"),
        ("Additional Information", "Failure Code"),
    )
    data["SubStatus"] = fields.get(("Failure Information", "Sub Status"))
    if len(raw_time) > 64:
        raise Reject(f"Snare time field is not a time: {shown(raw_time)}")
    extra = (("event_time", detail(raw_time.strip())),) if raw_time.strip() else ()
    host = computer.strip()
    return login_event(eid, data, host=host, time=received, source=source, fmt=FORMAT, extra=extra)
