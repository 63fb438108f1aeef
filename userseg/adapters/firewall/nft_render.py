"""Pure translation of the firewall vocabulary (core.table) into libnftables JSON.

Kept free of I/O so that what we send to the kernel can be unit-tested without
root, and so that the fake firewall and the diff share the exact same notion of
"which kernel rules does this Rule become" (`kernel_signatures`).

Conventions that the rest of the adapter relies on:
- every kernel rule carries a comment: the signature of the Rule it came from;
  a Rule that needs several kernel rules (Deny) suffixes `#0`, `#1`, ...
  (table.kernel_signatures owns that convention; rule_bodies must agree);
- element additions use `create`, not `add`: the kernel then refuses an element
  that already exists ("File exists") instead of silently keeping the old one,
  which is what the diff assumed absent; the fake firewall mirrors this.
  Exception: NET4/NET6 (rbtree interval sets) use `add`, because nftables 1.0.6
  refuses `create element` into an interval set created in the same batch
  (it re-sends its own 0.0.0.0 end marker); there re-adding an identical
  range is a no-op and an overlapping one fails ("interval overlaps");
- map element timeouts are whole seconds, rounded up and at least 1;
- a map element's user is its `comment` (core.usermap); none when empty.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from userseg.core.table import (
    TABLE_FAMILY,
    TABLE_NAME,
    Accept,
    AcceptEstablished,
    AcceptIfDestIn,
    AddChain,
    AddElements,
    AddSet,
    AddTable,
    BaseHook,
    Box,
    DeleteChain,
    DeleteElements,
    DeleteSet,
    DeleteTable,
    Deny,
    Goto,
    GotoIfDestIn,
    JumpIfIifname,
    JumpIfSaddrIn,
    LogIfDestIn,
    MapElement,
    Op,
    Plan,
    Rule,
    SetKind,
    SetRules,
    SetSpec,
    VmapSaddr,
    kernel_signatures,
)
from userseg.core.usermap import COMMENT_MAX_BYTES, comment_fits
from userseg.model import AddressRange, DenyMode

Json = dict[str, Any]

_T = {"family": TABLE_FAMILY, "table": TABLE_NAME}

_SET_TYPES: dict[SetKind, str | list[str]] = {
    SetKind.DEST4: ["ipv4_addr", "inet_proto", "inet_service"],
    SetKind.DEST6: ["ipv6_addr", "inet_proto", "inet_service"],
    SetKind.NET4: "ipv4_addr",
    SetKind.NET6: "ipv6_addr",
    SetKind.IFNAME: "ifname",
    SetKind.VMAP4: "ipv4_addr",
    SetKind.VMAP6: "ipv6_addr",
}
_SET_FLAGS: dict[SetKind, list[str]] = {
    SetKind.DEST4: ["interval"],
    SetKind.DEST6: ["interval"],
    SetKind.NET4: ["interval"],
    SetKind.NET6: ["interval"],
    SetKind.IFNAME: [],
    SetKind.VMAP4: ["timeout"],
    SetKind.VMAP6: ["timeout"],
}


_ADD_NOT_CREATE = frozenset({SetKind.NET4, SetKind.NET6})
COMMENT_PROBLEM = (
    f"a map element's comment (its user) must be UTF-8 without NUL, at most {COMMENT_MAX_BYTES} bytes "
    "(core.usermap.element_comment makes one from any name)"
)


def set_type(kind: SetKind) -> str | list[str]:
    """The nft `type` of a set kind (a list for concatenations), as JSON prints it."""
    t = _SET_TYPES[kind]
    return list(t) if isinstance(t, list) else t


def set_flags(kind: SetKind) -> list[str]:
    return list(_SET_FLAGS[kind])


# ---------------------------------------------------------------- addresses & elements


def addr_text(version: int, value: int) -> str:
    """Integer address -> the text nft expects; integers are how the core stores addresses."""
    if version == 4:
        return socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))
    if version == 6:
        return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))
    raise ValueError(f"IP version must be 4 or 6, not {version!r}")


def _interval(first: Any, last: Any) -> Any:
    return first if first == last else {"range": [first, last]}


def element_timeout(expires_at: datetime, now: datetime) -> int:
    """Seconds the kernel should keep a map element: rounded up so it never expires early."""
    return max(1, math.ceil((expires_at - now).total_seconds()))


class ElementEncoder:
    """Encodes the elements of one set kind; memoises per-expiry timeouts.

    Bulk loads of a quarter million map elements share a handful of expiry
    instants, so caching the timeout arithmetic halves the rendering time.
    `now` is needed for map elements only: their absolute expiry becomes a timeout.
    """

    def __init__(self, kind: SetKind, now: datetime | None = None) -> None:
        self.kind = kind
        self.now = now
        self._is_map = kind.is_map  # enum properties are slow in a 250k-element loop
        self._af = socket.AF_INET6 if kind.version == 6 else socket.AF_INET
        self._addr_len = 16 if kind.version == 6 else 4
        self._timeouts: dict[datetime, int] = {}
        self._verdicts: dict[str, Json] = {}  # one shared {"goto": ...} object per target

    def timeout(self, expires_at: datetime) -> int:
        secs = self._timeouts.get(expires_at)
        if secs is None:
            if self.now is None:
                raise ValueError("encoding a map element needs `now` to turn its expiry into a timeout")
            secs = self._timeouts[expires_at] = element_timeout(expires_at, self.now)
        return secs

    def element(self, element: object) -> Any:
        """One element as nft JSON for adding it (map elements carry timeout, verdict and comment)."""
        kind = self.kind
        if self._is_map:
            if not isinstance(element, MapElement):
                raise TypeError(f"a {kind.value} map holds MapElement elements, not {element!r}")
            verdict = self._verdicts.get(element.target)
            if verdict is None:
                verdict = self._verdicts[element.target] = {"goto": {"target": element.target}}
            elem = {"val": self._addr(element.addr), "timeout": self.timeout(element.expires_at)}
            if element.user:
                if not comment_fits(element.user):
                    raise ValueError(f"{element!r}: {COMMENT_PROBLEM}")
                elem["comment"] = element.user
            return [{"elem": elem}, verdict]
        if kind in (SetKind.DEST4, SetKind.DEST6):
            if not isinstance(element, Box) or element.version != kind.version:
                raise TypeError(f"a {kind.value} set holds IPv{kind.version} Box elements, not {element!r}")
            return {
                "concat": [
                    _interval(self._addr(element.addr_first), self._addr(element.addr_last)),
                    element.proto,
                    _interval(element.port_first, element.port_last),
                ]
            }
        if kind in (SetKind.NET4, SetKind.NET6):
            if not isinstance(element, AddressRange) or element.version != kind.version:
                raise TypeError(
                    f"a {kind.value} set holds IPv{kind.version} AddressRange elements, not {element!r}"
                )
            return _interval(self._addr(element.first), self._addr(element.last))
        if not isinstance(element, str) or not element:
            raise TypeError(f"an ifname set holds non-empty interface names, not {element!r}")
        return element

    def key(self, element: object) -> Any:
        """An element as nft JSON for deleting it: the key alone for maps, else the element itself."""
        if self._is_map:
            if not isinstance(element, MapElement):
                raise TypeError(f"a {self.kind.value} map holds MapElement elements, not {element!r}")
            return self._addr(element.addr)
        return self.element(element)

    def _addr(self, value: int) -> str:
        try:
            return socket.inet_ntop(self._af, value.to_bytes(self._addr_len, "big"))
        except OverflowError:
            raise ValueError(f"{value} is not an IPv{self.kind.version} address") from None


def encode_element(kind: SetKind, element: object, now: datetime | None = None) -> Any:
    """One element as nft JSON for adding it; see ElementEncoder."""
    return ElementEncoder(kind, now).element(element)


def encode_key(kind: SetKind, element: object) -> Any:
    """One element as nft JSON for deleting it; see ElementEncoder."""
    return ElementEncoder(kind).key(element)


# ---------------------------------------------------------------- rules


def _l3(version: int) -> str:
    if version == 4:
        return "ip"
    if version == 6:
        return "ip6"
    raise ValueError(f"IP version must be 4 or 6, not {version!r}")


def _match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(protocol: str, field: str) -> Json:
    return {"payload": {"protocol": protocol, "field": field}}


def _dest_in(version: int, set_name: str) -> Json:
    key = {"concat": [_payload(_l3(version), "daddr"), {"meta": {"key": "l4proto"}}, _payload("th", "dport")]}
    return _match(key, "@" + set_name)


def _log(prefix: str, group: int, rate_per_second: int) -> list[Json]:
    out: list[Json] = []
    if rate_per_second > 0:
        out.append({"limit": {"rate": rate_per_second, "per": "second"}})
    out.append({"log": {"prefix": prefix, "group": group}})
    return out


def rule_bodies(rule: Rule) -> list[list[Json]]:
    """The expression lists of the kernel rules one Rule becomes (usually one)."""
    if isinstance(rule, AcceptEstablished):
        return [[_match({"ct": {"key": "state"}}, ["established", "related"], "in"), {"accept": None}]]
    if isinstance(rule, JumpIfIifname):
        return [[_match({"meta": {"key": "iifname"}}, "@" + rule.set_name), {"jump": {"target": rule.chain}}]]
    if isinstance(rule, JumpIfSaddrIn):
        return [
            [
                _match(_payload(_l3(rule.version), "saddr"), "@" + rule.set_name),
                {"jump": {"target": rule.chain}},
            ]
        ]
    if isinstance(rule, AcceptIfDestIn):
        return [[_dest_in(rule.version, rule.set_name), {"accept": None}]]
    if isinstance(rule, GotoIfDestIn):
        return [[_dest_in(rule.version, rule.set_name), {"goto": {"target": rule.chain}}]]
    if isinstance(rule, LogIfDestIn):
        return [[_dest_in(rule.version, rule.set_name), *_log(rule.prefix, rule.group, rule.rate_per_second)]]
    if isinstance(rule, VmapSaddr):
        return [[{"vmap": {"key": _payload(_l3(rule.version), "saddr"), "data": "@" + rule.map_name}}]]
    if isinstance(rule, Goto):
        return [[{"goto": {"target": rule.chain}}]]
    if isinstance(rule, Accept):
        return [[{"accept": None}]]
    if isinstance(rule, Deny):
        bodies: list[list[Json]] = []
        if rule.log_group is not None:
            bodies.append(_log(rule.log_prefix, rule.log_group, rule.rate_per_second))
        if rule.mode is DenyMode.REJECT:
            bodies.append([_match({"meta": {"key": "l4proto"}}, "tcp"), {"reject": {"type": "tcp reset"}}])
            bodies.append([{"reject": {"type": "icmpx", "expr": "admin-prohibited"}}])
        bodies.append([{"drop": None}])  # unreachable after reject; kept so the count matches table.py
        return bodies
    raise TypeError(f"not a firewall rule: {rule!r}")


def rule_kernel_signatures(rule: Rule) -> tuple[str, ...]:
    """Comments of the kernel rules one Rule becomes, in order (see table.kernel_signatures)."""
    sigs = kernel_signatures((rule,))
    if len(sigs) != len(rule_bodies(rule)):  # the two must never drift apart
        raise AssertionError(f"{rule!r}: table.kernel_signatures disagrees with the rendered rules")
    return sigs


# ---------------------------------------------------------------- objects & ops


def table_json() -> Json:
    return {"table": {"family": TABLE_FAMILY, "name": TABLE_NAME}}


def set_json(spec: SetSpec) -> Json:
    body: Json = {**_T, "name": spec.name, "type": set_type(spec.kind)}
    if spec.kind.is_map:
        body["map"] = "verdict"
    flags = set_flags(spec.kind)
    if flags:
        body["flags"] = flags
    return {"map" if spec.kind.is_map else "set": body}


def chain_json(name: str, base: BaseHook | None = None) -> Json:
    body: Json = {**_T, "name": name}
    if base is not None:
        body.update(type="filter", hook=base.hook, prio=base.priority, policy=base.policy)
    return {"chain": body}


def rule_commands(chain: str, rule: Rule) -> list[Json]:
    return [
        {"add": {"rule": {**_T, "chain": chain, "expr": body, "comment": sig}}}
        for body, sig in zip(rule_bodies(rule), rule_kernel_signatures(rule), strict=True)
    ]


def _elements_cmd(verb: str, set_name: str, elems: list[Any]) -> Json:
    return {verb: {"element": {**_T, "name": set_name, "elem": elems}}}


def render_op(op: Op, now: datetime) -> list[Json]:
    """One plan op as nft JSON commands (empty element ops render to nothing)."""
    if isinstance(op, AddTable):
        return [{"add": table_json()}]
    if isinstance(op, DeleteTable):
        return [{"delete": table_json()}]
    if isinstance(op, AddSet):
        return [{"add": set_json(op.spec)}]
    if isinstance(op, AddChain):
        return [{"add": chain_json(op.name, op.base)}]
    if isinstance(op, SetRules):
        cmds: list[Json] = [{"flush": chain_json(op.chain)}]
        for rule in op.rules:
            cmds.extend(rule_commands(op.chain, rule))
        return cmds
    if isinstance(op, AddElements):
        if not op.elements:
            return []
        enc = ElementEncoder(op.kind, now)
        verb = "add" if op.kind in _ADD_NOT_CREATE else "create"
        return [_elements_cmd(verb, op.set_name, [enc.element(e) for e in op.elements])]
    if isinstance(op, DeleteElements):
        if not op.elements:
            return []
        enc = ElementEncoder(op.kind)
        return [_elements_cmd("delete", op.set_name, [enc.key(e) for e in op.elements])]
    if isinstance(op, DeleteChain):
        return [{"flush": chain_json(op.name)}, {"delete": chain_json(op.name)}]
    if isinstance(op, DeleteSet):
        # `delete set` removes maps too: the kernel keeps sets and maps in one namespace.
        return [{"delete": {"set": {**_T, "name": op.name}}}]
    raise TypeError(f"not a plan op: {op!r}")


def render_ops(ops: Iterable[Op], now: datetime) -> list[Json]:
    return [cmd for op in ops for cmd in render_op(op, now)]


def transaction(commands: list[Json]) -> Json:
    """The JSON document libnftables runs as one atomic batch."""
    return {"nftables": commands}


# ---------------------------------------------------------------- transactions


def split_transactions(plan: Plan, chunk_elements: int) -> Iterator[tuple[Op, ...]]:
    """The plan's transactions, in order, as op tuples (lazily, to bound memory).

    Small plans are one transaction, so nothing is ever visible half-applied.
    Large ones become: the prelude, then the bulk additions cut into pieces of at
    most `chunk_elements` elements (several small ops may share a piece), then
    main.  Splitting bulk is safe because it only adds not-yet-referenced or
    brand-new elements; main stays whole because it must be atomic.
    """
    if chunk_elements < 1:
        raise ValueError(f"chunk_elements must be at least 1, not {chunk_elements}")
    if plan.element_count() <= chunk_elements:
        ops = plan.ops()
        if ops:
            yield ops
        return
    if plan.prelude:
        yield plan.prelude
    piece: list[Op] = []
    room = chunk_elements
    for op in plan.bulk:
        start = 0
        while start < len(op.elements):
            take = op.elements[start : start + room]
            piece.append(AddElements(op.set_name, op.kind, take))
            start += len(take)
            room -= len(take)
            if room == 0:
                yield tuple(piece)
                piece, room = [], chunk_elements
    if piece:
        yield tuple(piece)
    if plan.main:
        yield plan.main
