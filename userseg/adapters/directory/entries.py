"""Turn raw LDAP attribute values into the directory model's dataclasses.

Everything here works on the *raw* bytes ldap3 received (``raw_attributes``),
never on ldap3's formatted values: the adapter reads without the schema
(``get_info=None``, so a connect costs one round trip less), and ldap3 then
guesses formats by attribute name.  Converting SIDs and GUIDs ourselves keeps
the result independent of that guesswork, and makes hostile or broken values
a ``ValueError`` that the reader turns into "skip this entry, log its DN"
instead of a crash of the whole read.

No ldap3 import: this module is pure and unit-tested without a server.
"""

from __future__ import annotations

import re
import struct
import uuid
from collections.abc import Mapping, Sequence

from userseg.directory.model import DirectoryGroup, DirectoryUser

RawValues = Sequence[bytes]
RawAttributes = Mapping[str, RawValues]

UF_ACCOUNTDISABLE = 0x2

USER_ATTRIBUTES = (
    "sAMAccountName",
    "userPrincipalName",
    "objectSid",
    "objectGUID",
    "displayName",
    "mail",
    "userAccountControl",
    "primaryGroupID",
    "uSNChanged",
    "accountExpires",
)
GROUP_ATTRIBUTES = ("sAMAccountName", "cn", "objectSid", "objectGUID", "member", "uSNChanged", "description")

_RANGE_RE = re.compile(r"^(?P<attr>[^;]+);range=(?P<low>\d+)-(?P<high>\d+|\*)$", re.IGNORECASE)


def sid_to_str(raw: bytes) -> str:
    """Binary objectSid (MS-DTYP 2.4.2.2) -> "S-1-5-21-...".

    Layout: revision (1 byte, always 1), sub-authority count (1 byte, at most
    15), identifier authority (6 bytes, big-endian), then the sub-authorities
    (4 bytes each, little-endian).  Any other length is rejected rather than
    guessed at, so a broken value never yields a plausible-looking wrong SID.
    """
    if len(raw) < 8:
        raise ValueError(f"SID too short ({len(raw)} bytes)")
    revision, count = raw[0], raw[1]
    if revision != 1:
        raise ValueError(f"SID revision {revision} unsupported")
    if count > 15 or len(raw) != 8 + 4 * count:
        raise ValueError(f"SID length {len(raw)} does not match {count} sub-authorities")
    authority = int.from_bytes(raw[2:8], "big")
    subs = struct.unpack(f"<{count}I", raw[8:])
    return "S-1-" + "-".join(str(part) for part in (authority, *subs))


def str_to_sid(text: str) -> bytes:
    """Inverse of sid_to_str (tests and filters that search by SID use it)."""
    parts = text.split("-")
    if len(parts) < 3 or parts[0] != "S" or parts[1] != "1":
        raise ValueError(f"not a SID: {text!r}")
    authority, *subs = (int(part) for part in parts[2:])
    if len(subs) > 15 or not 0 <= authority < 2**48 or any(not 0 <= s < 2**32 for s in subs):
        raise ValueError(f"not a SID: {text!r}")
    return bytes([1, len(subs)]) + authority.to_bytes(6, "big") + struct.pack(f"<{len(subs)}I", *subs)


def guid_to_str(raw: bytes) -> str:
    """Binary objectGUID -> lower-case UUID text.

    AD stores GUIDs in the Windows (mixed-endian) layout, hence ``bytes_le``:
    this is the form Windows tools print, so admins can match it.
    """
    if len(raw) != 16:
        raise ValueError(f"GUID must be 16 bytes, got {len(raw)}")
    return str(uuid.UUID(bytes_le=raw))


def guid_to_bytes(text: str) -> bytes:
    return uuid.UUID(text).bytes_le


def lower_keys(raw: RawAttributes) -> dict[str, list[bytes]]:
    """Attribute names case-insensitively (AD returns its own spelling of each name)."""
    out: dict[str, list[bytes]] = {}
    for name, values in raw.items():
        out.setdefault(name.lower(), []).extend(values or ())  # ldap3 may give None for "no values"
    return out


def split_range(name: str) -> tuple[str, int, int | None] | None:
    """ "member;range=0-1499" -> ("member", 0, 1499); "member;range=1500-*" -> ("member", 1500, None)."""
    match = _RANGE_RE.match(name)
    if match is None:
        return None
    high = match["high"]
    return match["attr"].lower(), int(match["low"]), None if high == "*" else int(high)


def _text(attrs: Mapping[str, list[bytes]], name: str) -> str:
    values = attrs.get(name.lower())
    if not values:
        return ""
    return values[0].decode("utf-8")  # strict: undecodable bytes are a broken entry


def _int(attrs: Mapping[str, list[bytes]], name: str) -> int | None:
    text = _text(attrs, name)
    if text == "":
        return None
    return int(text, 10)


def _guid(attrs: Mapping[str, list[bytes]]) -> str:
    values = attrs.get("objectguid")
    if not values:
        raise ValueError("no objectGUID")
    return guid_to_str(values[0])


def _sid(attrs: Mapping[str, list[bytes]]) -> str:
    values = attrs.get("objectsid")
    return sid_to_str(values[0]) if values else ""


def parse_user(dn: str, raw: RawAttributes) -> DirectoryUser:
    """A user entry; ValueError when it cannot be trusted (no name, broken SID/GUID, bad numbers)."""
    attrs = lower_keys(raw)
    sam = _text(attrs, "sAMAccountName")
    if not sam:
        raise ValueError("no sAMAccountName")
    uac = _int(attrs, "userAccountControl") or 0
    return DirectoryUser(
        guid=_guid(attrs),
        dn=dn,
        sam=sam,
        upn=_text(attrs, "userPrincipalName"),
        sid=_sid(attrs),
        display_name=_text(attrs, "displayName"),
        mail=_text(attrs, "mail"),
        disabled=bool(uac & UF_ACCOUNTDISABLE),
        primary_group_id=_int(attrs, "primaryGroupID"),
        usn=_int(attrs, "uSNChanged") or 0,
        expires=_int(attrs, "accountExpires") or 0,
    )


def parse_group(dn: str, raw: RawAttributes, members: Sequence[bytes]) -> DirectoryGroup:
    """A group entry; `members` are every member value, all ranges already joined by the reader."""
    attrs = lower_keys(raw)
    name = _text(attrs, "sAMAccountName") or _text(attrs, "cn")
    if not name:
        raise ValueError("no sAMAccountName or cn")
    return DirectoryGroup(
        guid=_guid(attrs),
        dn=dn,
        name=name,
        sid=_sid(attrs),
        members=frozenset(value.decode("utf-8") for value in members),
        usn=_int(attrs, "uSNChanged") or 0,
        description=_text(attrs, "description"),
    )
