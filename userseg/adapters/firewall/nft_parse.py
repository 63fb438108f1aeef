"""Pure translation of `nft -j list table inet userseg` into an ActualState.

The kernel prints back a normalised form of what we wrote (a /24 range becomes
a prefix, protocol numbers become names, element order changes), so this module
maps every spelling back onto the core's integer-based vocabulary.  Anything it
does not recognise is kept *visibly different* rather than dropped, so that the
diff replaces or deletes it: a rule without our comment yields signature "", a
set whose declaration matches no SetKind becomes a ForeignSetSpec (never equal
to any SetSpec), and a map element whose verdict is not `goto chain` gets a
target starting with FOREIGN_TARGET_PREFIX.  A map element's comment is its
user (core.usermap); without one, the user is "".
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from userseg.adapters.firewall.nft_render import set_flags, set_type
from userseg.core.table import (
    NO_EXPIRY,
    TABLE_FAMILY,
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

FOREIGN_TARGET_PREFIX = "!"  # a map verdict we did not write, e.g. "!jump c1" or "!accept"


@dataclass(frozen=True)
class ForeignSetSpec(SetSpec):
    """A set in our table whose declaration matches no SetKind.

    Dataclass equality compares classes, so it never equals the SetSpec the diff
    wants under that name: the diff sees a mismatch and replaces the set.  `kind`
    is only a best guess (maps guess VMAP4/6) so code asking `.kind.is_map` works.
    """

    declaration: str = field(default="", compare=False)  # for humans; readers word it differently


class NftParseError(ValueError):
    """The listing is not the JSON shape libnftables prints."""


class InconsistentListing(NftParseError):
    """A hash set listed a key twice: the kernel rehashed it mid-dump, so some keys are
    missing too (each dump message restarts the walk and skips by count). Read again."""


_PROTO_NAMES = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "icmpv6": 58, "sctp": 132, "udplite": 136}
# keys of a set we write; "comment" and "auto-merge" live in userdata and change nothing in the kernel
_KNOWN_SET_KEYS = frozenset(
    {"family", "name", "table", "type", "handle", "flags", "elem", "map", "comment", "auto-merge"}
)


class _Unrecognised(Exception):
    """An element we cannot map onto the set's kind: the set is treated as foreign."""


def proto_number(value: object) -> int:
    """`tcp`, `ipv6-icmp` or 6 -> the IP protocol number."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value.isdigit():
            return int(value)
        if value in _PROTO_NAMES:
            return _PROTO_NAMES[value]
        try:
            return socket.getprotobyname(value)
        except OSError:
            pass
    raise _Unrecognised(f"unknown IP protocol {value!r}")


def _addr_int(version: int, text: object) -> int:
    if not isinstance(text, str):
        raise _Unrecognised(f"expected an address, got {text!r}")
    try:
        raw = socket.inet_pton(socket.AF_INET if version == 4 else socket.AF_INET6, text)
    except OSError:
        raise _Unrecognised(f"bad IPv{version} address {text!r}") from None
    return int.from_bytes(raw, "big")


def _addr_interval(version: int, value: object) -> tuple[int, int]:
    """A single address, `{"prefix": {addr, len}}` or `{"range": [a, b]}` -> (first, last)."""
    if isinstance(value, dict):
        if "prefix" in value:
            p = value["prefix"]
            first = _addr_int(version, p["addr"])
            host_bits = (32 if version == 4 else 128) - int(p["len"])
            return first, first | ((1 << host_bits) - 1)
        if "range" in value:
            a, b = value["range"]
            return _addr_int(version, a), _addr_int(version, b)
        raise _Unrecognised(f"unexpected address element {value!r}")
    n = _addr_int(version, value)
    return n, n


def _port(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value.isdigit():
            return int(value)
        try:
            return socket.getservbyname(value)
        except OSError:
            pass
    raise _Unrecognised(f"unexpected port {value!r}")


def _port_interval(value: object) -> tuple[int, int]:
    if isinstance(value, dict) and "range" in value:
        a, b = value["range"]
        return _port(a), _port(b)
    n = _port(value)
    return n, n


class _MapDecoder:
    """Map elements in bulk: caches the per-expiry datetime, the dominant cost at 250k."""

    def __init__(self, version: int, read_time: datetime) -> None:
        self.version = version
        self.read_time = read_time
        self._expiry: dict[int, datetime] = {}
        self._targets: dict[str, str] = {}

    def expiry(self, seconds: int) -> datetime:
        at = self._expiry.get(seconds)
        if at is None:
            at = self._expiry[seconds] = self.read_time + timedelta(seconds=seconds)
        return at

    def decode(self, raw: object) -> MapElement:
        if not (isinstance(raw, list) and len(raw) == 2):
            raise _Unrecognised(f"unexpected map element {raw!r}")
        key, verdict = raw
        expires_at = NO_EXPIRY
        user = ""
        if isinstance(key, dict) and "elem" in key:
            e = key["elem"]
            key = e["val"]
            if "expires" in e:
                expires_at = self.expiry(int(e["expires"]))
            elif "timeout" in e:
                expires_at = self.expiry(int(e["timeout"]))
            user = e.get("comment", "")
            if not isinstance(user, str):
                raise _Unrecognised(f"unexpected element comment {user!r}")
        addr = _addr_int(self.version, key)
        target = self._target(verdict)
        return MapElement(addr, target, expires_at, user)

    def _target(self, verdict: object) -> str:
        if not (isinstance(verdict, dict) and len(verdict) == 1):
            raise _Unrecognised(f"unexpected map verdict {verdict!r}")
        ((kind, arg),) = verdict.items()
        if kind == "goto" and isinstance(arg, dict):
            name = str(arg["target"])
        elif isinstance(arg, dict) and "target" in arg:
            name = f"{FOREIGN_TARGET_PREFIX}{kind} {arg['target']}"
        else:
            name = f"{FOREIGN_TARGET_PREFIX}{kind}"
        return self._targets.setdefault(name, name)


def _decode_element(kind: SetKind, raw: object, maps: _MapDecoder | None) -> object:
    if kind in (SetKind.DEST4, SetKind.DEST6):
        if not (isinstance(raw, dict) and isinstance(raw.get("concat"), list) and len(raw["concat"]) == 3):
            raise _Unrecognised(f"unexpected {kind.value} element {raw!r}")
        addr, proto, port = raw["concat"]
        v = 4 if kind is SetKind.DEST4 else 6
        a1, a2 = _addr_interval(v, addr)
        p1, p2 = _port_interval(port)
        return Box(v, a1, a2, proto_number(proto), p1, p2)
    if kind in (SetKind.NET4, SetKind.NET6):
        v = 4 if kind is SetKind.NET4 else 6
        first, last = _addr_interval(v, raw)
        return AddressRange(v, first, last)
    if kind is SetKind.IFNAME:
        if not isinstance(raw, str):
            raise _Unrecognised(f"unexpected interface name {raw!r}")
        return raw
    assert maps is not None
    return maps.decode(raw)


def classify_set(body: Mapping[str, Any]) -> tuple[SetSpec, SetKind | None]:
    """(the set's spec, the kind to decode its elements as, or None to skip them).

    Same key and data types as a SetKind but other flags or extra attributes
    (size, policy, default timeout, ...) -> a ForeignSetSpec of that kind whose
    elements are still decoded; an unknown type -> a ForeignSetSpec, no elements.
    """
    name = str(body["name"])
    for kind in SetKind:
        if body.get("type") != set_type(kind) or (body.get("map") == "verdict") != kind.is_map:
            continue
        extras = sorted(set(body) - _KNOWN_SET_KEYS)
        flags = sorted(body.get("flags", []))
        if flags != sorted(set_flags(kind)) or extras:
            return ForeignSetSpec(name, kind, f"flags {flags}, extras {extras}"), kind
        return SetSpec(name, kind), kind
    decl = {k: v for k, v in body.items() if k not in ("elem", "handle", "family", "table")}
    guess = SetKind.NET6 if "ipv6_addr" in str(body.get("type")) else SetKind.NET4
    return ForeignSetSpec(name, guess, f"unrecognised declaration {decl}"), None


def _parse_set(body: Mapping[str, Any], read_time: datetime) -> tuple[SetSpec, frozenset[object] | None]:
    spec, kind = classify_set(body)
    if kind is None:
        return spec, None
    maps = _MapDecoder(kind.version or 4, read_time) if kind.is_map else None
    raw_elems = body.get("elem", ())
    try:
        elems = frozenset(_decode_element(kind, raw, maps) for raw in raw_elems)
    except (_Unrecognised, KeyError, TypeError, ValueError) as exc:
        return ForeignSetSpec(spec.name, kind, f"unrecognised element: {exc}"), None
    distinct = len({e.addr for e in elems if isinstance(e, MapElement)}) if kind.is_map else len(elems)
    if distinct != len(raw_elems):
        raise InconsistentListing(
            f"set {spec.name} listed {len(raw_elems)} elements but {distinct} distinct keys"
        )
    return spec, elems


def _base_hook(body: Mapping[str, Any]) -> BaseHook | None:
    if "hook" not in body:
        return None
    hook = str(body["hook"])
    if body.get("type", "filter") != "filter":
        hook = f"{hook} ({body['type']})"  # never equal to a hook we want
    prio = body.get("prio", 0)
    return BaseHook(
        hook=hook, priority=prio if isinstance(prio, int) else 0, policy=str(body.get("policy", "accept"))
    )


def parse_table(doc: Mapping[str, Any] | Iterable[Mapping[str, Any]], read_time: datetime) -> ActualState:
    """Listing JSON (`{"nftables": [...]}` or its list) -> ActualState of `inet userseg`.

    `read_time` anchors map element expiry: expires_at = read_time + `expires` seconds.
    Objects of other tables, if present, are ignored.
    """
    items = doc.get("nftables") if isinstance(doc, Mapping) else doc
    if items is None:
        raise NftParseError("listing has no 'nftables' array")
    present = False
    sets: dict[str, SetSpec] = {}
    elements: dict[str, frozenset[object]] = {}
    chain_bases: dict[str, BaseHook | None] = {}
    chain_rules: dict[str, list[str]] = {}
    for item in items:
        if not isinstance(item, Mapping) or len(item) != 1:
            raise NftParseError(f"unexpected listing item {item!r}")
        ((what, body),) = item.items()
        if what == "metainfo":
            continue
        if body.get("family") != TABLE_FAMILY or body.get("table", body.get("name")) != TABLE_NAME:
            continue
        if what == "table":
            present = True
        elif what in ("set", "map"):
            spec, elems = _parse_set(body, read_time)
            sets[spec.name] = spec
            if elems is not None:
                elements[spec.name] = elems
        elif what == "chain":
            chain_bases[str(body["name"])] = _base_hook(body)
            chain_rules.setdefault(str(body["name"]), [])
        elif what == "rule":
            chain_rules.setdefault(str(body["chain"]), []).append(str(body.get("comment", "")))
        # other object types (counters, flowtables, ...) cannot be expressed in ActualState
    if not present:
        return ActualState.empty()
    chains = {
        name: ActualChain(name, tuple(chain_rules.get(name, ())), base) for name, base in chain_bases.items()
    }
    return ActualState(table_present=True, sets=sets, elements=elements, chains=chains)
