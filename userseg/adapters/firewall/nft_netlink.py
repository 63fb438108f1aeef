"""Read `table inet userseg` straight from nf_tables over netlink.

Why not libnftables' `list table`: nftables 1.0.6 fetches every element of every
set into its cache for *any* list command and then prints it as JSON, so
reading 100k map elements took ~3 s of library time and left ~260 MB of
process memory behind, before Python parsed 10 MB of JSON.  Dumping the objects
ourselves costs only the kernel's share, keeps memory proportional to what we
return, gives expiries in milliseconds, and lets us check the snapshot:

- the ruleset generation id is read before and after, and NLM_F_DUMP_INTR
  flags a dump that raced a commit;
- a hash set dump restarts its walk for every 32 KB message and skips by
  count, so a rehash in between (e.g. just after a bulk load) repeats some
  elements and misses others: a key seen twice, or fewer distinct keys than
  the set's element count, means "read again".

Reading lives here; structural writes go through libnftables (nft.py), whose
JSON is the documented interface, and bulk element loads through
nft_elements.py, which shares this module's message helpers.  nft_parse.py
decodes the same table from JSON and the tests check that both readers agree.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

from userseg.adapters.firewall.nft_parse import FOREIGN_TARGET_PREFIX, NO_EXPIRY, ForeignSetSpec
from userseg.core.table import (
    TABLE_NAME,
    ActualChain,
    ActualState,
    BaseHook,
    Box,
    MapElement,
    SetKind,
    SetSpec,
)
from userseg.model import AddressRange

NETLINK_NETFILTER = 12
NFPROTO_INET = 1
_NFNL_SUBSYS_NFTABLES = 10
_GETTABLE, _GETCHAIN, _GETRULE, _GETSET, _GETSETELEM, _GETGEN = 1, 4, 7, 10, 13, 16
_NLM_F_REQUEST, _NLM_F_DUMP, _NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
_NLMSG_ERROR, _NLMSG_DONE = 2, 3

# set flags and datatypes (nf_tables.h, nftables datatype.h)
_F_INTERVAL, _F_MAP, _F_TIMEOUT, _F_CONCAT = 0x4, 0x8, 0x10, 0x80
_T_IPV4, _T_IPV6, _T_PROTO, _T_SERVICE, _T_IFNAME = 7, 8, 12, 13, 41
_DATA_VERDICT = 0xFFFFFF00
_ELEM_INTERVAL_END, _ELEM_CATCHALL = 0x1, 0x2
_VERDICTS = {0: "drop", 1: "accept", -1: "continue", -2: "break", -3: "jump", -4: "goto", -5: "return"}
_HOOKS = {0: "prerouting", 1: "input", 2: "forward", 3: "output", 4: "postrouting", 5: "ingress"}


def _concat_type(*types: int) -> int:
    out = 0
    for t in types:
        out = (out << 6) | t
    return out


# kind -> (set flags, key type, data type or None); anything else is foreign
_DECLARATIONS: dict[SetKind, tuple[int, int, int | None]] = {
    SetKind.DEST4: (_F_INTERVAL | _F_CONCAT, _concat_type(_T_IPV4, _T_PROTO, _T_SERVICE), None),
    SetKind.DEST6: (_F_INTERVAL | _F_CONCAT, _concat_type(_T_IPV6, _T_PROTO, _T_SERVICE), None),
    SetKind.NET4: (_F_INTERVAL, _T_IPV4, None),
    SetKind.NET6: (_F_INTERVAL, _T_IPV6, None),
    SetKind.IFNAME: (0, _T_IFNAME, None),
    SetKind.VMAP4: (_F_MAP | _F_TIMEOUT, _T_IPV4, _DATA_VERDICT),
    SetKind.VMAP6: (_F_MAP | _F_TIMEOUT, _T_IPV6, _DATA_VERDICT),
}
# set attributes that change behaviour and that we never write: their presence makes a set foreign
_FOREIGN_SET_ATTRS = {
    8: "policy",
    11: "default timeout",
    12: "gc interval",
    15: "object map",
    17: "expr",
    18: "expr",
}

_HDR = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_BE32 = struct.Struct(">I")
_BE32S = struct.Struct(">i")
_BE64 = struct.Struct(">Q")


class NetlinkReadError(OSError):
    """The kernel refused a request, or the snapshot kept changing while we read it."""


class _Retry(Exception):
    """The snapshot is inconsistent; read again."""


def _attrs(buf: bytes, start: int = 0, end: int | None = None) -> dict[int, bytes]:
    """One level of netlink attributes; the last one of a type wins."""
    out: dict[int, bytes] = {}
    end = len(buf) if end is None else end
    while start + 4 <= end:
        length, kind = _NLA.unpack_from(buf, start)
        if length < 4:
            break
        out[kind & 0x3FFF] = buf[start + 4 : start + length]
        start += (length + 3) & ~3
    return out


def _attr_list(buf: bytes) -> Iterator[bytes]:
    """The payloads of a nested list (all entries, in order)."""
    start = 0
    while start + 4 <= len(buf):
        length, _kind = _NLA.unpack_from(buf, start)
        if length < 4:
            return
        yield buf[start + 4 : start + length]
        start += (length + 3) & ~3


def _string(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return _NLA.pack(length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


class NfTablesReader:
    """A netlink socket for dumping one nf_tables table; create and use it on one thread.

    The socket belongs to the network namespace of the thread that creates it,
    so NftFirewall builds this on its NetnsWorker thread.
    """

    def __init__(self, table: str = TABLE_NAME, family: int = NFPROTO_INET) -> None:
        self.table = table
        self.family = family
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self._sock.bind((0, 0))
        self._buf = bytearray(1 << 20)  # dump messages are at most 32 KB; generous for safety
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    # ------------------------------------------------------------ protocol

    def _request(
        self, msg: int, attrs: list[tuple[int, bytes]], dump: bool, stamps: list[float] | None = None
    ) -> tuple[list[bytes], bool]:
        """Send one request; return the payloads (after nfgenmsg) and whether a dump was interrupted.

        Replies are matched by sequence number, so leftovers of a request that
        was abandoned half-way (an exception mid-dump) are skipped, never
        mistaken for this one's.
        """
        self._seq += 1
        seq = self._seq
        body = struct.pack("=BBH", self.family, 0, 0) + b"".join(_nla(k, v) for k, v in attrs)
        flags = _NLM_F_REQUEST | (_NLM_F_DUMP if dump else 0)
        self._sock.send(
            _HDR.pack(_HDR.size + len(body), (_NFNL_SUBSYS_NFTABLES << 8) | msg, flags, seq, 0) + body
        )
        out: list[bytes] = []
        interrupted = False
        error = 0
        view = memoryview(self._buf)
        while True:
            n = self._sock.recv_into(view)
            received = time.monotonic()
            off = 0
            while off + _HDR.size <= n:
                length, mtype, mflags, mseq, _pid = _HDR.unpack_from(self._buf, off)
                if length < _HDR.size:
                    raise NetlinkReadError(errno.EBADMSG, "malformed netlink message from nf_tables")
                if mseq == seq:
                    if mflags & _NLM_F_DUMP_INTR:
                        interrupted = True
                    if mtype == _NLMSG_DONE:
                        return self._finish(out, interrupted, error, msg)
                    if mtype == _NLMSG_ERROR:
                        error = -struct.unpack_from("=i", self._buf, off + _HDR.size)[0]
                        return self._finish(out, interrupted, error, msg)
                    out.append(bytes(self._buf[off + _HDR.size + 4 : off + length]))
                    if stamps is not None:
                        stamps.append(received)
                    if not dump:
                        return self._finish(out, interrupted, error, msg)
                off += (length + 3) & ~3

    @staticmethod
    def _finish(out: list[bytes], interrupted: bool, error: int, msg: int) -> tuple[list[bytes], bool]:
        if error:
            raise NetlinkReadError(error, f"nf_tables request {msg} failed: {os.strerror(error)}")
        return out, interrupted

    def generation(self) -> int:
        (payload,), _ = self._request(_GETGEN, [], dump=False)
        return int(_BE32.unpack(_attrs(payload)[1])[0])

    # ------------------------------------------------------------ reading

    def read(self, clock: Callable[[], datetime], attempts: int = 5) -> ActualState:
        """A consistent snapshot of the table (ActualState.empty() when absent)."""
        last = ""
        for _ in range(attempts):
            try:
                return self._read_once(clock)
            except _Retry as exc:
                last = str(exc)
        raise NetlinkReadError(errno.EAGAIN, f"table {self.table} kept changing while being read: {last}")

    def _read_once(self, clock: Callable[[], datetime]) -> ActualState:
        name = self.table.encode() + b"\0"
        gen = self.generation()
        try:
            self._request(_GETTABLE, [(1, name)], dump=False)
        except NetlinkReadError as exc:
            if exc.errno == errno.ENOENT:
                return ActualState.empty()
            raise
        set_msgs, intr1 = self._request(_GETSET, [(1, name)], dump=True)
        chain_msgs, intr2 = self._request(_GETCHAIN, [(1, name)], dump=True)
        rule_msgs, intr3 = self._request(_GETRULE, [(1, name)], dump=True)
        sets: dict[str, SetSpec] = {}
        elements: dict[str, frozenset[object]] = {}
        for payload in set_msgs:
            a = _attrs(payload)
            if a.get(1) != name:  # the kernel filters set dumps by table; be sure anyway
                continue
            spec, decode_as = _classify(a)
            sets[spec.name] = spec
            if decode_as is None:
                continue
            # Each message is stamped when it arrives: a 250k-element dump takes
            # seconds, and a remaining timeout means "from the moment it was dumped".
            t0 = time.monotonic()
            wall = clock()
            stamps: list[float] = []
            msgs, intr = self._request(
                _GETSETELEM, [(1, name), (2, spec.name.encode() + b"\0")], dump=True, stamps=stamps
            )
            times = [wall + timedelta(seconds=t - t0) for t in stamps]
            if intr:
                raise _Retry(f"dump of set {spec.name} interrupted")
            expected = _BE32.unpack(a[20])[0] if 20 in a else None  # NFTA_SET_COUNT, kernel >= 6.16
            try:
                elements[spec.name] = _decode_elements(decode_as, msgs, times, expected)
            except _Unrecognised as exc:
                sets[spec.name] = ForeignSetSpec(spec.name, decode_as, f"unrecognised element: {exc}")
        if intr1 or intr2 or intr3 or self.generation() != gen:
            raise _Retry("the ruleset changed during the read")
        return ActualState(True, sets, elements, _chains(name, chain_msgs, rule_msgs))


class _Unrecognised(Exception):
    pass


def _classify(a: dict[int, bytes]) -> tuple[SetSpec, SetKind | None]:
    """(the set's spec, the kind to decode its elements as, or None to skip them)."""
    name = _string(a[2])
    flags = _BE32.unpack(a[3])[0] if 3 in a else 0
    key_type = _BE32.unpack(a[4])[0] if 4 in a else 0
    data_type = _BE32.unpack(a[6])[0] if 6 in a else None
    for kind, (want_flags, want_key, want_data) in _DECLARATIONS.items():
        if key_type != want_key or data_type != want_data:
            continue
        extras = sorted({label for attr, label in _FOREIGN_SET_ATTRS.items() if attr in a})
        if 9 in a and 1 in _attrs(a[9]):
            extras.append("size")
        if flags != want_flags or extras:
            return ForeignSetSpec(name, kind, f"flags {flags:#x}, extras {extras}"), kind
        return SetSpec(name, kind), kind
    guess = SetKind.NET6 if key_type >> 12 == _T_IPV6 or key_type == _T_IPV6 else SetKind.NET4
    return ForeignSetSpec(
        name, guess, f"key type {key_type:#x}, data type {data_type}, flags {flags:#x}"
    ), None


def _decode_elements(
    kind: SetKind, msgs: list[bytes], read_times: list[datetime], expected: int | None
) -> frozenset[object]:
    if kind.is_map:
        groups = [
            ([elem for elem in _attr_list(a[3])], at)
            for payload, at in zip(msgs, read_times, strict=True)
            if 3 in (a := _attrs(payload))
        ]
        return _decode_map(kind, groups, expected)
    raw = [elem for payload in msgs if 3 in (a := _attrs(payload)) for elem in _attr_list(a[3])]
    if kind in (SetKind.NET4, SetKind.NET6):
        return _decode_intervals(kind, raw)
    out: set[object] = set()
    for elem in raw:
        e = _attrs(elem)
        if 1 not in e:
            raise _Unrecognised("element without key (catch-all?)")
        key = _attrs(e[1])[1]
        if kind is SetKind.IFNAME:
            out.add(_string(key))
        else:
            out.add(_box(kind, key, _attrs(e[10])[1] if 10 in e else key))
    _check_count(kind, len(out), len(raw), expected)
    return frozenset(out)


def _check_count(kind: SetKind, distinct: int, returned: int, expected: int | None) -> None:
    if distinct != returned or (expected is not None and distinct != expected):
        raise _Retry(
            f"{kind.value} dump returned {returned} elements, {distinct} distinct, kernel counts {expected}"
        )


def _box(kind: SetKind, key: bytes, key_end: bytes) -> Box:
    alen = 4 if kind is SetKind.DEST4 else 16
    if len(key) != alen + 8 or len(key_end) != alen + 8:
        raise _Unrecognised(f"{kind.value} key of {len(key)} bytes")
    return Box(
        4 if kind is SetKind.DEST4 else 6,
        int.from_bytes(key[:alen], "big"),
        int.from_bytes(key_end[:alen], "big"),
        key[alen],
        int.from_bytes(key[alen + 4 : alen + 6], "big"),
        int.from_bytes(key_end[alen + 4 : alen + 6], "big"),
    )


def _decode_intervals(kind: SetKind, raw: list[bytes]) -> frozenset[object]:
    """rbtree sets dump each interval as a start and an exclusive end element (order unspecified)."""
    version = 4 if kind is SetKind.NET4 else 6
    top = (1 << (32 if version == 4 else 128)) - 1
    points: list[tuple[int, int]] = []  # (key, 0 for an end / 1 for a start): ends sort first
    for elem in raw:
        e = _attrs(elem)
        if 1 not in e:
            raise _Unrecognised("element without key (catch-all?)")
        key = int.from_bytes(_attrs(e[1])[1], "big")
        is_end = bool(_BE32.unpack(e[3])[0] & _ELEM_INTERVAL_END) if 3 in e else False
        points.append((key, 0 if is_end else 1))
    points.sort()
    out: set[object] = set()
    start: int | None = None
    for key, is_start in points:
        if is_start:
            if start is not None:
                raise _Unrecognised(f"overlapping intervals at {key}")
            start = key
        elif start is not None:  # an end with nothing open is nft's 0.0.0.0 placeholder
            out.add(AddressRange(version, start, key - 1))
            start = None
    if start is not None:
        out.add(AddressRange(version, start, top))
    return frozenset(out)


def _decode_map(
    kind: SetKind, groups: list[tuple[list[bytes], datetime]], expected: int | None
) -> frozenset[object]:
    """Verdict-map elements; the hot loop of a 250k read, hence hand-unrolled.

    Verdicts repeat (one per entitlement class), so they are decoded once per
    distinct attribute blob; expiries are cached per millisecond value.
    """
    alen = 4 if kind is SetKind.VMAP4 else 16
    expiry: dict[int, datetime] = {}
    targets: dict[bytes, str] = {}
    out: dict[int, MapElement] = {}
    duplicates = 0
    unpack_nla, unpack_be64, from_bytes = _NLA.unpack_from, _BE64.unpack_from, int.from_bytes
    for raw, read_time in groups:
        expiry.clear()  # expiries are cached per message: each has its own read time
        for elem in raw:
            addr = -1
            data = b""
            ms = -1
            off, end = 0, len(elem)
            while off + 4 <= end:
                length, attr = unpack_nla(elem, off)
                attr &= 0x3FFF
                if attr == 1 and length == 8 + alen:  # KEY { VALUE }
                    addr = from_bytes(elem[off + 8 : off + 8 + alen], "big")
                elif attr == 2:  # DATA { VERDICT { CODE, CHAIN } }
                    data = elem[off + 4 : off + length]
                elif attr == 5 or (attr == 4 and ms < 0):  # EXPIRATION wins over TIMEOUT
                    ms = unpack_be64(elem, off + 4)[0]
                if length < 4:
                    break
                off += (length + 3) & ~3
            if addr < 0 or not data:
                raise _Unrecognised("map element without key or verdict (catch-all?)")
            target = targets.get(data)
            if target is None:
                target = targets[data] = _verdict_target(data)
            if ms < 0:
                at = NO_EXPIRY
            else:
                at = expiry.get(ms) or expiry.setdefault(ms, read_time + timedelta(milliseconds=ms))
            if addr in out:
                duplicates += 1
            out[addr] = MapElement(addr, target, at)
    _check_count(kind, len(out), len(out) + duplicates, expected)
    return frozenset(out.values())


def _verdict_target(data: bytes) -> str:
    """`goto X` -> "X"; any other verdict -> FOREIGN_TARGET_PREFIX + its name (never a chain we use)."""
    v = _attrs(_attrs(data).get(2, b""))
    if 1 not in v:
        raise _Unrecognised("map element data is not a verdict")
    verb = _VERDICTS.get(_BE32S.unpack(v[1])[0], "verdict")
    chain = _string(v[2]) if 2 in v else ""
    if verb == "goto":
        return chain
    return f"{FOREIGN_TARGET_PREFIX}{verb}{' ' + chain if chain else ''}"


def _chains(table: bytes, chain_msgs: list[bytes], rule_msgs: list[bytes]) -> dict[str, ActualChain]:
    """Chains of `table` (NUL-terminated name) with their rules' comments, in order.

    Chain dumps are not filtered by table in the kernel, so filter here.
    """
    rules: dict[str, list[str]] = {}
    for payload in rule_msgs:
        a = _attrs(payload)
        if a.get(1) == table:
            rules.setdefault(_string(a[2]), []).append(_comment(a.get(7, b"")))
    chains: dict[str, ActualChain] = {}
    for payload in chain_msgs:
        a = _attrs(payload)
        if a.get(1) != table:
            continue
        name = _string(a[3])
        base = None
        if 4 in a:
            hook = _attrs(a[4])
            hook_name = _HOOKS.get(_BE32.unpack(hook[1])[0], "?")
            chain_type = _string(a[7]) if 7 in a else "filter"
            if chain_type != "filter":
                hook_name = f"{hook_name} ({chain_type})"  # never equal to a hook we want
            policy = "drop" if 5 in a and _BE32.unpack(a[5])[0] == 0 else "accept"
            base = BaseHook(hook_name, _BE32S.unpack(hook[2])[0] if 2 in hook else 0, policy)
        chains[name] = ActualChain(name, tuple(rules.get(name, ())), base)
    return chains


def _comment(udata: bytes) -> str:
    """libnftnl rule userdata is a list of (type u8, len u8, value); type 0 is the comment."""
    i = 0
    while i + 2 <= len(udata):
        kind, length = udata[i], udata[i + 1]
        if kind == 0:
            return _string(udata[i + 2 : i + 2 + length])
        i += 2 + length
    return ""
