"""Write elements of our user maps (and destination sets) straight to nf_tables over netlink.

Why: a full reconcile loads a quarter million `ip : goto class` elements.
libnftables 1.0.6 spends 3-6 s of that in userspace (parsing JSON or text,
evaluating every element as an expression, building its cache); the kernel's
share is a small fraction.  The elements are fixed-shape binary records, so we
encode them ourselves and send the same nfnetlink batch nft would send:

    BATCH_BEGIN, NEWSETELEM (~1,000 elements each) ..., BATCH_END

- One batch is one transaction: nf_tables applies all of it or, on any error,
  aborts and rolls all of it back (tests/adapters/firewall/test_nft_elements.py
  checks that).  Larger loads are cut into several batches by the caller.
- Additions carry NLM_F_CREATE|NLM_F_EXCL, exactly as `create element`: an
  existing key is refused (EEXIST) rather than silently kept; deletions of a
  missing key fail with ENOENT, as `delete element` does.
- Map timeouts are whole seconds rounded up (nft_render.element_timeout), and a
  map element's user is its comment in libnftnl's userdata format (TLV type
  NFTNL_UDATA_SET_ELEM_COMMENT, length, NUL-terminated text), so both writers
  leave the kernel in the same state and `nft list` shows `comment "alice"`.

Acknowledgements: every message asks for an ACK and is matched by sequence
number.  nfnetlink reports all errors (and ACKs) only after the whole batch,
and a malformed batch is aborted without any error, so success requires an ACK
of every message, no error, and proof of the commit: the ACK of BATCH_END
(kernels >= 6.10) or a ruleset generation that moved.  A GETGEN request sent
after the batch marks the end of its replies (the kernel processes a batch
synchronously inside send(), so all replies are queued before that one).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from itertools import accumulate, repeat
from operator import floordiv, itemgetter, mul, neg, sub
from typing import NamedTuple, cast

from userseg.adapters.firewall.nfnetlink import HDR, NETLINK_NETFILTER, NFPROTO_INET, NLA, attrs, nla
from userseg.adapters.firewall.nft_render import COMMENT_PROBLEM, addr_text
from userseg.core.table import TABLE_NAME, AddElements, Box, DeleteElements, MapElement, SetKind
from userseg.core.usermap import COMMENT_MAX_BYTES, comment_fits

_SUBSYS = 10 << 8  # NFNL_SUBSYS_NFTABLES in the message type's high byte
_NEWSETELEM, _DELSETELEM, _NEWGEN, _GETGEN = 12, 14, 15, 16
_BATCH_BEGIN, _BATCH_END = 0x10, 0x11
_F_REQUEST, _F_ACK, _F_EXCL, _F_CREATE = 0x1, 0x4, 0x200, 0x400
_F_CAPPED, _F_ACK_TLVS = 0x100, 0x200  # flags of an NLMSG_ERROR reply
_NLMSG_ERROR = 2
_NESTED = 0x8000  # NLA_F_NESTED
_SOL_NETLINK, _NETLINK_CAP_ACK, _NETLINK_EXT_ACK = 270, 10, 11
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = 32, 33
_ERR_MSG, _ERR_OFFS = 1, 2  # NLMSGERR_ATTR_*
_LIST_TABLE, _LIST_SET, _LIST_ELEMENTS = 1, 2, 3  # NFTA_SET_ELEM_LIST_*
_LIST_ELEM = 1  # NFTA_LIST_ELEM
_ELEM_KEY, _ELEM_DATA, _ELEM_TIMEOUT, _ELEM_USERDATA, _ELEM_KEY_END = 1, 2, 4, 6, 10  # NFTA_SET_ELEM_*
_UDATA_COMMENT = 0  # NFTNL_UDATA_SET_ELEM_COMMENT: libnftnl's userdata is TLVs of (type u8, len u8, value)
_DATA_VALUE, _DATA_VERDICT = 1, 2  # NFTA_DATA_*
_VERDICT_CODE, _VERDICT_CHAIN = 1, 2  # NFTA_VERDICT_*
_NFT_GOTO = -4

# Bytes of elements per NEWSETELEM message: the nested list's length field is 16 bits.
MESSAGE_BYTES = 60_000
# What this writer can encode; NET4/NET6 (rbtree start/end pairs) and IFNAME stay on libnftables.
WRITABLE_KINDS = frozenset({SetKind.VMAP4, SetKind.VMAP6, SetKind.DEST4, SetKind.DEST6})

_ADDR_LEN = {4: 4, 6: 16}
_BE32S = struct.Struct(">i")
_BE64 = struct.Struct(">Q")
_ERRNO = struct.Struct("=i")

ElementOp = AddElements | DeleteElements
_SECOND = timedelta(seconds=1)
_TIMEOUT = struct.Struct(">HHQ")  # a whole TIMEOUT attribute: native header (re-read as >HH), be64 value
_TIMEOUT_HDR = struct.unpack(">HH", NLA.pack(_TIMEOUT.size, _ELEM_TIMEOUT))
# The USERDATA attribute of an n-byte comment (n <= COMMENT_MAX_BYTES): _COMMENT_HEAD[n] + comment +
# _COMMENT_TAIL[n] (its NUL and the padding), _COMMENT_SIZE[n] bytes in all; n = 0: no comment, no attribute.
_COMMENT_LENGTHS = range(1, COMMENT_MAX_BYTES + 1)
_COMMENT_HEAD = [b""] + [
    NLA.pack(7 + n, _ELEM_USERDATA) + bytes((_UDATA_COMMENT, n + 1)) for n in _COMMENT_LENGTHS
]
_COMMENT_TAIL = [b""] + [b"\0" * (1 + (-(7 + n) % 4)) for n in _COMMENT_LENGTHS]
_COMMENT_SIZE = [
    len(h) + n + len(t) for n, (h, t) in enumerate(zip(_COMMENT_HEAD, _COMMENT_TAIL, strict=True))
]


class _Sent(NamedTuple):
    """One message of a batch: its set, and where it and its element list start."""

    set_name: str
    kind: SetKind
    start: int  # offset of the message in the batch
    elements_at: int  # offset of the first element within the message


class NetlinkWriteError(OSError):
    """nf_tables refused a batch (errno is the kernel's), or its outcome could not be confirmed."""


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _nest(kind: int, payload: bytes) -> bytes:
    return nla(kind | _NESTED, payload)


def _value(kind: int, data: bytes) -> bytes:
    """An nft_data attribute (KEY, KEY_END) holding a plain value."""
    return _nest(kind, nla(_DATA_VALUE, data))


# ---------------------------------------------------------------- element encoding


def _timeout_attrs(expiries: set[datetime], now: datetime) -> dict[datetime, bytes]:
    """NFTA_SET_ELEM_TIMEOUT attributes per expiry: element_timeout (whole seconds, rounded
    up, at least 1) in milliseconds, computed with map() so that a reconcile in which
    every element has its own expiry does not pay a Python call per element.
    """
    distinct = list(expiries)
    secs = map(max, map(neg, map(floordiv, map(sub, repeat(now), distinct), repeat(_SECOND))), repeat(1))
    blobs = map(_TIMEOUT.pack, repeat(_TIMEOUT_HDR[0]), repeat(_TIMEOUT_HDR[1]), map(mul, secs, repeat(1000)))
    return dict(zip(distinct, blobs, strict=True))


class _Heads(dict[int, bytes]):
    """comment length -> the start of an element with one target, built on first use.

    The start is everything before the comment's text: the element's own
    header (its length varies with the comment's), the verdict, and the head
    of the USERDATA attribute.
    """

    def __init__(self, verdict: bytes, fixed: int) -> None:
        super().__init__()
        self.verdict = verdict
        self.fixed = fixed

    def __missing__(self, n: int) -> bytes:
        size = self.fixed + len(self.verdict) + _COMMENT_SIZE[n]
        head = self[n] = NLA.pack(size, _LIST_ELEM | _NESTED) + self.verdict + _COMMENT_HEAD[n]
        return head


def _map_elements(
    kind: SetKind, elements: tuple[object, ...], now: datetime | None, keys_only: bool
) -> list[bytes]:
    """Encoded LIST_ELEMs of a verdict map; the 250k-element hot loop.

    An element is laid out as `head + comment + comment tail + timeout + key`
    (nf_tables does not care about the order of attributes), so that every
    piece but the comment and the address is shared: the head per target and
    comment length, the tail (NUL, padding) per length, the timeout and key
    header per expiry.  One list comprehension over unpacked tuples does the
    rest (~0.5 us per element on this 2-core VM).  A comment too long indexes
    past the tails: that and any other bad comment are reported by element.
    """
    if not set(map(type, elements)) <= {MapElement}:
        bad = next(e for e in elements if type(e) is not MapElement)
        raise TypeError(f"a {kind.value} map holds MapElement elements, not {bad!r}")
    maps = cast("tuple[MapElement, ...]", elements)
    alen = _ADDR_LEN[kind.version or 4]
    key_hdr = NLA.pack(8 + alen, _ELEM_KEY | _NESTED) + NLA.pack(4 + alen, _DATA_VALUE)
    if now is None and not keys_only:
        raise ValueError("adding map elements needs `now` to turn expiries into timeouts")
    try:
        if keys_only or now is None:
            bare = NLA.pack(4 + len(key_hdr) + alen, _LIST_ELEM | _NESTED) + key_hdr
            return [bare + a.to_bytes(alen, "big") for a, _t, _x, _u in maps]
        fixed = 4 + _TIMEOUT.size + len(key_hdr) + alen
        heads: dict[str, _Heads] = {}
        for target in set(map(itemgetter(1), maps)):
            code = nla(_VERDICT_CODE, _BE32S.pack(_NFT_GOTO)) + nla(_VERDICT_CHAIN, target.encode() + b"\0")
            heads[target] = _Heads(_nest(_ELEM_DATA, _nest(_DATA_VERDICT, code)), fixed)
        timeouts = _timeout_attrs(set(map(itemgetter(2), maps)), now)
        keyed = {x: blob + key_hdr for x, blob in timeouts.items()}
        tails, join = _COMMENT_TAIL, b"".join
        if "\0" in "".join(map(itemgetter(3), maps)):
            raise ValueError("a comment holds NUL")
        return [
            join((heads[t][n := len(c := u.encode())], c, tails[n], keyed[x], a.to_bytes(alen, "big")))
            for a, t, x, u in maps
        ]
    except OverflowError:
        bad_addr = next(e.addr for e in maps if not 0 <= e.addr < 1 << (8 * alen))
        raise ValueError(f"{bad_addr} is not an IPv{kind.version} address") from None
    except (IndexError, UnicodeEncodeError, ValueError):
        bad = next((e for e in maps if not comment_fits(e.user)), None)
        if bad is None:
            raise
        raise ValueError(f"{bad!r}: {COMMENT_PROBLEM}") from None


def _box_elements(kind: SetKind, elements: tuple[object, ...]) -> Iterator[bytes]:
    """Encoded LIST_ELEMs of an `addr . inet_proto . inet_service` interval set (pipapo).

    Each concatenated field sits in its own 32-bit register: proto is one byte
    and the port two, both zero-padded; the range end goes in KEY_END.
    """
    version = kind.version or 4
    alen = _ADDR_LEN[version]
    for b in elements:
        if not isinstance(b, Box) or b.version != version:
            raise TypeError(f"a {kind.value} set holds IPv{version} Box elements, not {b!r}")
        try:
            first = b.addr_first.to_bytes(alen, "big") + bytes((b.proto, 0, 0, 0))
            last = b.addr_last.to_bytes(alen, "big") + bytes((b.proto, 0, 0, 0))
            first += b.port_first.to_bytes(2, "big") + b"\0\0"
            last += b.port_last.to_bytes(2, "big") + b"\0\0"
        except (OverflowError, ValueError):
            raise ValueError(f"{b!r} does not fit a {kind.value} element") from None
        yield _nest(_LIST_ELEM, _value(_ELEM_KEY, first) + _value(_ELEM_KEY_END, last))


def encode_elements(op: ElementOp, now: datetime | None) -> list[bytes]:
    """The op's elements as NFTA_LIST_ELEM attributes (deletions carry keys only)."""
    if op.kind.is_map:
        return _map_elements(op.kind, op.elements, now, keys_only=isinstance(op, DeleteElements))
    if op.kind in (SetKind.DEST4, SetKind.DEST6):
        return list(_box_elements(op.kind, op.elements))
    raise ValueError(f"the netlink writer cannot encode {op.kind.value} elements")


def _element_lists(encoded: list[bytes], limit: int = MESSAGE_BYTES) -> Iterator[bytes]:
    """Concatenated elements, cut so that each list fits one 16-bit-length attribute.

    Cut points come from bisecting the running total of lengths (C loops), not
    from a Python loop over a quarter million elements.
    """
    ends = list(accumulate(map(len, encoded)))
    start, base = 0, 0
    while start < len(encoded):
        stop = max(bisect_right(ends, base + limit, lo=start), start + 1)
        yield b"".join(encoded[start:stop])
        base, start = ends[stop - 1], stop


def describe_element(kind: SetKind, elem: bytes) -> str:
    """A LIST_ELEM payload as text, for error messages (`198.18.0.7 goto c_x`)."""
    e = attrs(elem)
    key = attrs(e.get(_ELEM_KEY, b"")).get(_DATA_VALUE, b"")
    version = kind.version or 4
    alen = _ADDR_LEN[version]
    if len(key) < alen:
        return "?"
    text = addr_text(version, int.from_bytes(key[:alen], "big"))
    if len(key) >= alen + 8:
        end = attrs(e.get(_ELEM_KEY_END, b"")).get(_DATA_VALUE, key)
        last = addr_text(version, int.from_bytes(end[:alen], "big"))
        port, port_end = (
            int.from_bytes(key[alen + 4 : alen + 6], "big"),
            int.from_bytes(end[alen + 4 : alen + 6], "big"),
        )
        text = f"{text}-{last} . {key[alen]} . {port}-{port_end}"
    verdict = attrs(attrs(e.get(_ELEM_DATA, b"")).get(_DATA_VERDICT, b""))
    chain = verdict.get(_VERDICT_CHAIN)
    return f"{text} goto {_text(chain)}" if chain else text


# ---------------------------------------------------------------- the socket


class NfTablesWriter:
    """A netlink socket writing set elements of one nf_tables table; create and use it on one thread.

    Like NfTablesReader, the socket belongs to the network namespace of the
    thread that creates it, so NftFirewall builds it on its NetnsWorker.
    """

    def __init__(self, table: str = TABLE_NAME, family: int = NFPROTO_INET) -> None:
        self.table = table
        self.family = family
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self._sock.bind((0, 0))
            self._sock.settimeout(60.0)  # replies are queued before send() returns; this only guards bugs
            self._buffer(_SO_RCVBUFFORCE, socket.SO_RCVBUF, 1 << 22)
        except OSError:
            self._sock.close()
            raise
        # Errors without a copy of our (up to 64 KB) message, but with the failing
        # element's offset; both optional (a large receive buffer copes without them).
        for option in (_NETLINK_CAP_ACK, _NETLINK_EXT_ACK):
            with contextlib.suppress(OSError):
                self._sock.setsockopt(_SOL_NETLINK, option, 1)
        self._sndbuf = 0
        self._buf = bytearray(1 << 18)
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def _buffer(self, force: int, plain: int, size: int) -> None:
        """Forcing beyond [rw]mem_max needs CAP_NET_ADMIN, which writing nf_tables needs anyway."""
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, force, size)
        except PermissionError:
            self._sock.setsockopt(socket.SOL_SOCKET, plain, size)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _message(self, mtype: int, flags: int, family: int, res_id: int, body: bytes) -> tuple[int, bytes]:
        seq = self._next_seq()
        head = HDR.pack(HDR.size + 4 + len(body), mtype, _F_REQUEST | flags, seq, 0)
        return seq, head + struct.pack("=BBH", family, 0, res_id) + body

    # ------------------------------------------------------------ writing

    def write(self, ops: Sequence[ElementOp], now: datetime | None = None) -> int:
        """Send all ops as ONE batch (one transaction); return the number of elements written.

        Raises NetlinkWriteError (the kernel's errno, the failing element if it
        says which) when nf_tables refused the batch, which it then rolled back
        whole; or when the commit cannot be confirmed (state unknown: re-read).
        """
        table = nla(_LIST_TABLE, self.table.encode() + b"\0")
        res_id = socket.htons(10)  # NFNL_SUBSYS_NFTABLES, big-endian in batch markers
        begin_seq, begin = self._message(_BATCH_BEGIN, 0, socket.AF_UNSPEC, res_id, b"")
        parts = [begin]
        sent: dict[int, _Sent] = {}  # seq -> where its message is in the batch, to explain errors
        offset = len(begin)
        count = 0
        for op in ops:
            add = isinstance(op, AddElements)
            mtype, flags = (_NEWSETELEM, _F_CREATE | _F_EXCL) if add else (_DELSETELEM, 0)
            prefix = table + nla(_LIST_SET, op.set_name.encode() + b"\0")
            for payload in _element_lists(encode_elements(op, now)):
                body = prefix + NLA.pack(4 + len(payload), _LIST_ELEMENTS | _NESTED) + payload
                seq, msg = self._message(_SUBSYS | mtype, _F_ACK | flags, self.family, 0, body)
                parts.append(msg)
                sent[seq] = _Sent(op.set_name, op.kind, offset, len(msg) - len(payload))
                offset += len(msg)
            count += len(op.elements)
        if not sent:
            return 0
        end_seq, end = self._message(_BATCH_END, _F_ACK, socket.AF_UNSPEC, res_id, b"")
        parts.append(end)
        batch = b"".join(parts)
        del parts
        if len(batch) + 1024 > self._sndbuf:  # netlink refuses a datagram larger than sk_sndbuf
            self._sndbuf = len(batch) + 1024
            self._buffer(_SO_SNDBUFFORCE, socket.SO_SNDBUF, self._sndbuf)
        before = self._generation()
        try:
            self._sock.send(batch)
        except OSError as exc:
            raise NetlinkWriteError(exc.errno, f"sending a {len(batch):,}-byte batch failed: {exc}") from exc
        self._confirm(batch, sent, begin_seq, end_seq, before)
        return count

    def _generation(self) -> int:
        sentinel = self._send_getgen()
        return next(value for seq, is_gen, value, _raw in self._replies(sentinel) if is_gen)

    def _send_getgen(self) -> int:
        seq, msg = self._message(_SUBSYS | _GETGEN, 0, socket.AF_UNSPEC, 0, b"")
        self._sock.send(msg)
        return seq

    def _replies(self, sentinel: int) -> Iterator[tuple[int, bool, int, bytes]]:
        """(seq, False, errno, reply if an error) per ACK/error, then (sentinel, True, generation, b"").

        Replies to requests abandoned earlier (an exception mid-way) carry other
        sequence numbers; the caller ignores them.
        """
        view = memoryview(self._buf)
        while True:
            try:
                n = self._sock.recv_into(view)
            except OSError as exc:  # ENOBUFS: replies were dropped, the outcome is unknown
                raise NetlinkWriteError(exc.errno, f"reading nf_tables replies failed: {exc}") from exc
            off = 0
            while off + HDR.size <= n:
                length, mtype, _flags, mseq, _pid = HDR.unpack_from(self._buf, off)
                if length < HDR.size:
                    raise NetlinkWriteError(errno.EBADMSG, "malformed netlink reply from nf_tables")
                if mtype == _NLMSG_ERROR:
                    err = -_ERRNO.unpack_from(self._buf, off + HDR.size)[0]
                    if mseq == sentinel and err:
                        raise NetlinkWriteError(err, f"nf_tables GETGEN failed: {os.strerror(err)}")
                    yield mseq, False, err, bytes(self._buf[off : off + length]) if err else b""
                elif mseq == sentinel and mtype == _SUBSYS | _NEWGEN:
                    gen = attrs(bytes(self._buf[off + HDR.size + 4 : off + length])).get(1, b"")
                    yield mseq, True, int.from_bytes(gen[:4], "big"), b""
                    return
                off += (length + 3) & ~3

    def _confirm(self, batch: bytes, sent: dict[int, _Sent], begin: int, end: int, before: int) -> None:
        """Check every reply to the batch; raise unless it was committed whole."""
        acked: set[int] = set()
        errors: list[tuple[int, str]] = []
        end_acked = False
        after = before
        for seq, is_gen, value, raw in self._replies(self._send_getgen()):
            if is_gen:
                after = value
            elif value:
                if seq in sent or seq in (begin, end):
                    errors.append((value, _explain(batch, sent.get(seq), value, raw)))
            elif seq == end:
                end_acked = True
            elif seq in sent:
                acked.add(seq)
        if errors:
            more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
            raise NetlinkWriteError(errors[0][0], f"nf_tables refused the batch: {errors[0][1]}{more}")
        if len(acked) != len(sent):
            raise NetlinkWriteError(
                errno.EPROTO, f"nf_tables acknowledged {len(acked)} of {len(sent)} messages; batch aborted"
            )
        if not end_acked and after == before:
            raise NetlinkWriteError(errno.EPROTO, "nf_tables did not commit the batch (generation unchanged)")


def _explain(batch: bytes, sent: _Sent | None, err: int, reply: bytes) -> str:
    """strerror, plus the kernel's message and the set and element its offset points at."""
    text = os.strerror(err)
    _len, _type, flags, _seq, _pid = HDR.unpack_from(reply)
    tlv: dict[int, bytes] = {}
    if flags & _F_ACK_TLVS:  # after the error code and our header (and its payload unless capped)
        echoed = HDR.size if flags & _F_CAPPED else HDR.unpack_from(reply, HDR.size + 4)[0]
        tlv = attrs(reply, HDR.size + 4 + echoed)
    if _ERR_MSG in tlv:
        text += f" ({_text(tlv[_ERR_MSG])})"
    if sent is None:
        return text
    where = f"set {sent.set_name}"
    offset = struct.unpack("=I", tlv[_ERR_OFFS][:4])[0] if _ERR_OFFS in tlv else 0
    at = sent.start + offset
    if offset >= sent.elements_at and at + 4 <= len(batch):  # it points at the failing element
        length, _t = NLA.unpack_from(batch, at)
        elem = batch[at + 4 : at + length]
        where += f", element {describe_element(sent.kind, elem)}"
    return f"{where}: {text}"
