"""Decode nf_tables netlink dumps of our table into the core's view of it.

Why apart from the reader (nft_netlink.py): the reader owns the socket, the
request/dump protocol and the snapshot's consistency (generation ids,
interrupted dumps, retries); everything here is a pure function from dumped
attribute bytes to `SetSpec`, set elements and `ActualChain`, so it is tested
without a kernel (tests/adapters/firewall/test_nft_parse.py).  It is the
netlink twin of nft_parse.py, which decodes the same table from libnftables'
JSON: both must recognise exactly the sets we declare and call anything else
foreign.

Two exceptions tell the reader what went wrong: `InconsistentDump` means the
dump contradicts itself (read again), `Unrecognised` that a set holds an
element we never write (the set is foreign).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial

from userseg.adapters.firewall.nfnetlink import BE32, BE32S, BE64, NLA, attr_list, attrs, string
from userseg.adapters.firewall.nft_parse import FOREIGN_TARGET_PREFIX, ForeignSetSpec
from userseg.core.table import NO_EXPIRY, ActualChain, BaseHook, Box, MapElement, SetKind, SetSpec
from userseg.model import AddressRange

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


class InconsistentDump(Exception):
    """The snapshot is inconsistent; read again."""


class Unrecognised(Exception):
    """An element of a kind we never write: the set holding it is foreign."""


def classify_set(a: dict[int, bytes]) -> tuple[SetSpec, SetKind | None]:
    """(the set's spec, the kind to decode its elements as, or None to skip them)."""
    name = string(a[2])
    flags = BE32.unpack(a[3])[0] if 3 in a else 0
    key_type = BE32.unpack(a[4])[0] if 4 in a else 0
    data_type = BE32.unpack(a[6])[0] if 6 in a else None
    for kind, (want_flags, want_key, want_data) in _DECLARATIONS.items():
        if key_type != want_key or data_type != want_data:
            continue
        extras = sorted({label for attr, label in _FOREIGN_SET_ATTRS.items() if attr in a})
        if 9 in a and 1 in attrs(a[9]):
            extras.append("size")
        if flags != want_flags or extras:
            return ForeignSetSpec(name, kind, f"flags {flags:#x}, extras {extras}"), kind
        return SetSpec(name, kind), kind
    guess = SetKind.NET6 if key_type >> 12 == _T_IPV6 or key_type == _T_IPV6 else SetKind.NET4
    return ForeignSetSpec(
        name, guess, f"key type {key_type:#x}, data type {data_type}, flags {flags:#x}"
    ), None


def decode_elements(
    kind: SetKind, msgs: list[bytes], read_times: list[datetime], expected: int | None
) -> frozenset[object]:
    if kind.is_map:
        groups = [
            ([elem for elem in attr_list(a[3])], at)
            for payload, at in zip(msgs, read_times, strict=True)
            if 3 in (a := attrs(payload))
        ]
        return _decode_map(kind, groups, expected)
    raw = [elem for payload in msgs if 3 in (a := attrs(payload)) for elem in attr_list(a[3])]
    if kind in (SetKind.NET4, SetKind.NET6):
        return _decode_intervals(kind, raw)
    out: set[object] = set()
    for elem in raw:
        e = attrs(elem)
        if 1 not in e:
            raise Unrecognised("element without key (catch-all?)")
        key = attrs(e[1])[1]
        if kind is SetKind.IFNAME:
            out.add(string(key))
        else:
            out.add(_box(kind, key, attrs(e[10])[1] if 10 in e else key))
    _check_count(kind, len(out), len(raw), expected)
    return frozenset(out)


def _check_count(kind: SetKind, distinct: int, returned: int, expected: int | None) -> None:
    if distinct != returned or (expected is not None and distinct != expected):
        raise InconsistentDump(
            f"{kind.value} dump returned {returned} elements, {distinct} distinct, kernel counts {expected}"
        )


def _box(kind: SetKind, key: bytes, key_end: bytes) -> Box:
    alen = 4 if kind is SetKind.DEST4 else 16
    if len(key) != alen + 8 or len(key_end) != alen + 8:
        raise Unrecognised(f"{kind.value} key of {len(key)} bytes")
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
        e = attrs(elem)
        if 1 not in e:
            raise Unrecognised("element without key (catch-all?)")
        key = int.from_bytes(attrs(e[1])[1], "big")
        is_end = bool(BE32.unpack(e[3])[0] & _ELEM_INTERVAL_END) if 3 in e else False
        points.append((key, 0 if is_end else 1))
    points.sort()
    out: set[object] = set()
    start: int | None = None
    for key, is_start in points:
        if is_start:
            if start is not None:
                raise Unrecognised(f"overlapping intervals at {key}")
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
    The comment (the user, see core.usermap) is decoded per element: users differ.
    """
    alen = 4 if kind is SetKind.VMAP4 else 16
    expiry: dict[int, datetime] = {}
    targets: dict[bytes, str] = {}
    out: dict[int, MapElement] = {}
    duplicates = 0
    unpack_nla, unpack_be64, from_bytes = NLA.unpack_from, BE64.unpack_from, int.from_bytes
    # The kernel dumps an element's attributes in one order (nf_tables_fill_setelem): KEY, DATA,
    # TIMEOUT, EXPIRATION, USERDATA.  The prefix up to EXPIRATION is read at fixed offsets when
    # it is there (15% of the whole decode saved); the general loop reads everything else.
    kend = 8 + alen
    key_heads = (NLA.pack(kend, 1), NLA.pack(kend, 1 | 0x8000))
    timeout_head, expiration_head = NLA.pack(12, 4), NLA.pack(12, 5)
    element = partial(tuple.__new__, MapElement)  # MapElement() runs a Python-level __new__: 0.4 us
    for raw, read_time in groups:
        expiry.clear()  # expiries are cached per message: each has its own read time
        for elem in raw:
            addr = -1
            data = b""
            ms = -1
            user = ""
            off, end = 0, len(elem)
            if elem[:4] in key_heads:
                dlen, dtype = unpack_nla(elem, kend)
                if dtype & 0x3FFF == 2 and dlen >= 4:
                    addr = from_bytes(elem[8:kend], "big")
                    data = elem[kend + 4 : kend + dlen]
                    off = kend + ((dlen + 3) & ~3)
                    if elem[off : off + 4] == timeout_head and elem[off + 12 : off + 16] == expiration_head:
                        ms = unpack_be64(elem, off + 16)[0]
                        off += 24
            while off + 4 <= end:
                length, attr = unpack_nla(elem, off)
                attr &= 0x3FFF
                if attr == 1 and length == 8 + alen:  # KEY { VALUE }
                    addr = from_bytes(elem[off + 8 : off + 8 + alen], "big")
                elif attr == 2:  # DATA { VERDICT { CODE, CHAIN } }
                    data = elem[off + 4 : off + length]
                elif attr == 5 or (attr == 4 and ms < 0):  # EXPIRATION wins over TIMEOUT
                    ms = unpack_be64(elem, off + 4)[0]
                elif attr == 6:  # USERDATA, (type, len, value) TLVs: the comment names the user
                    if (
                        6 < length <= end - off
                        and elem[off + 4] == 0
                        and elem[off + 5] == length - 6
                        and not elem[off + length - 1]
                    ):  # one NUL-terminated comment and nothing else, as we write it
                        user = elem[off + 6 : off + length - 1].decode(errors="replace")
                    else:
                        user = _comment(elem[off + 4 : off + length])
                if length < 4:
                    break
                off += (length + 3) & ~3
            if addr < 0 or not data:
                raise Unrecognised("map element without key or verdict (catch-all?)")
            target = targets.get(data)
            if target is None:
                target = targets[data] = _verdict_target(data)
            if ms < 0:
                at = NO_EXPIRY
            else:
                at = expiry.get(ms) or expiry.setdefault(ms, read_time + timedelta(milliseconds=ms))
            if addr in out:
                duplicates += 1
            out[addr] = element((addr, target, at, user))
    _check_count(kind, len(out), len(out) + duplicates, expected)
    return frozenset(out.values())


def _verdict_target(data: bytes) -> str:
    """`goto X` -> "X"; any other verdict -> FOREIGN_TARGET_PREFIX + its name (never a chain we use)."""
    v = attrs(attrs(data).get(2, b""))
    if 1 not in v:
        raise Unrecognised("map element data is not a verdict")
    verb = _VERDICTS.get(BE32S.unpack(v[1])[0], "verdict")
    chain = string(v[2]) if 2 in v else ""
    if verb == "goto":
        return chain
    return f"{FOREIGN_TARGET_PREFIX}{verb}{' ' + chain if chain else ''}"


def decode_chains(table: bytes, chain_msgs: list[bytes], rule_msgs: list[bytes]) -> dict[str, ActualChain]:
    """Chains of `table` (NUL-terminated name) with their rules' comments, in order.

    Chain dumps are not filtered by table in the kernel, so filter here.
    """
    rules: dict[str, list[str]] = {}
    for payload in rule_msgs:
        a = attrs(payload)
        if a.get(1) == table:
            rules.setdefault(string(a[2]), []).append(_comment(a.get(7, b"")))
    chains: dict[str, ActualChain] = {}
    for payload in chain_msgs:
        a = attrs(payload)
        if a.get(1) != table:
            continue
        name = string(a[3])
        base = None
        if 4 in a:
            hook = attrs(a[4])
            hook_name = _HOOKS.get(BE32.unpack(hook[1])[0], "?")
            chain_type = string(a[7]) if 7 in a else "filter"
            if chain_type != "filter":
                hook_name = f"{hook_name} ({chain_type})"  # never equal to a hook we want
            policy = "drop" if 5 in a and BE32.unpack(a[5])[0] == 0 else "accept"
            base = BaseHook(hook_name, BE32S.unpack(hook[2])[0] if 2 in hook else 0, policy)
        chains[name] = ActualChain(name, tuple(rules.get(name, ())), base)
    return chains


def _comment(udata: bytes) -> str:
    """libnftnl rule and set element userdata is a list of (type u8, len u8, value);
    type 0 is the comment (NFTNL_UDATA_RULE_COMMENT, NFTNL_UDATA_SET_ELEM_COMMENT)."""
    i = 0
    while i + 2 <= len(udata):
        kind, length = udata[i], udata[i + 1]
        if kind == 0:
            return string(udata[i + 2 : i + 2 + length])
        i += 2 + length
    return ""
