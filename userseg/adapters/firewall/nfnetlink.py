"""nfnetlink wire format: the message header, attributes, and the constants we need.

Why a module of its own: both netlink paths to nf_tables, the reader
(nft_netlink.py) and the bulk element writer (nft_elements.py), frame their
messages the same way, and the reader's decoders (nft_decode.py) parse
attributes the same way too.  Keeping the framing here gives all of them one
definition and lets none import another's private helpers.  Nothing here
knows about nf_tables objects; it is plain netlink TLV handling.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

NETLINK_NETFILTER = 12  # the netlink protocol of nfnetlink
NFPROTO_INET = 1  # nfgenmsg family of an `inet` table

HDR = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid (native byte order)
NLA = struct.Struct("=HH")  # nlattr: length, type
BE32 = struct.Struct(">I")  # nf_tables attribute payloads are big-endian
BE32S = struct.Struct(">i")
BE64 = struct.Struct(">Q")


def attrs(buf: bytes, start: int = 0, end: int | None = None) -> dict[int, bytes]:
    """One level of netlink attributes; the last one of a type wins."""
    out: dict[int, bytes] = {}
    end = len(buf) if end is None else end
    while start + 4 <= end:
        length, kind = NLA.unpack_from(buf, start)
        if length < 4:
            break
        out[kind & 0x3FFF] = buf[start + 4 : start + length]
        start += (length + 3) & ~3
    return out


def attr_list(buf: bytes) -> Iterator[bytes]:
    """The payloads of a nested list (all entries, in order)."""
    start = 0
    while start + 4 <= len(buf):
        length, _kind = NLA.unpack_from(buf, start)
        if length < 4:
            return
        yield buf[start + 4 : start + length]
        start += (length + 3) & ~3


def string(raw: bytes) -> str:
    """A NUL-terminated string attribute as text."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def nla(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to the 4-byte boundary the next one must start on."""
    length = 4 + len(payload)
    return NLA.pack(length, kind) + payload + b"\0" * ((4 - length % 4) % 4)
