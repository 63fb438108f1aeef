"""The firewall's vocabulary: what our nftables table should contain, what it
does contain, and the plan that turns one into the other.

These are plain data so that the pure core (render, diff) and every firewall
adapter (real nftables, the in-memory fake) speak the same language.  Rules are
small typed objects rather than nft JSON so that the fake firewall can answer
behaviour questions ("would this packet pass?") by interpreting them, and so
that every rule has a stable signature we store in its nft comment: reading
back the kernel then compares signatures, never nft's re-printed expressions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import NamedTuple

from userseg.model import DenyMode

TABLE_FAMILY = "inet"
TABLE_NAME = "userseg"
SIGNATURE_PREFIX = "us:"
NO_EXPIRY = datetime.max.replace(tzinfo=UTC)  # read back for a map element without timeout (never ours)


class SetKind(str, Enum):
    """The few set shapes the table uses; each maps to one nft set declaration."""

    DEST4 = "dest4"  # ipv4_addr . inet_proto . inet_service, flags interval; elements: Box
    DEST6 = "dest6"  # ipv6_addr . inet_proto . inet_service, flags interval; elements: Box
    NET4 = "net4"  # ipv4_addr, flags interval; elements: AddressRange (userseg.model)
    NET6 = "net6"  # ipv6_addr, flags interval; elements: AddressRange
    IFNAME = "ifname"  # ifname; elements: str
    VMAP4 = "vmap4"  # ipv4_addr : verdict, flags timeout; elements: MapElement
    VMAP6 = "vmap6"  # ipv6_addr : verdict, flags timeout; elements: MapElement

    @property
    def version(self) -> int | None:
        if self in (SetKind.DEST4, SetKind.NET4, SetKind.VMAP4):
            return 4
        if self in (SetKind.DEST6, SetKind.NET6, SetKind.VMAP6):
            return 6
        return None

    @property
    def is_map(self) -> bool:
        return self in (SetKind.VMAP4, SetKind.VMAP6)


@dataclass(frozen=True, order=True)
class Box:
    """A disjoint region of (destination address, IP protocol number, port) space.

    Interval sets of concatenations reject overlapping elements, so every set we
    write holds pairwise-disjoint boxes; core.space guarantees that.
    """

    version: int
    addr_first: int
    addr_last: int
    proto: int  # IP protocol number (6, 17, 1, 58)
    port_first: int
    port_last: int

    def contains(self, version: int, addr: int, proto: int, port: int) -> bool:
        return (
            version == self.version
            and self.addr_first <= addr <= self.addr_last
            and proto == self.proto
            and self.port_first <= port <= self.port_last
        )


class MapElement(NamedTuple):
    """One `ip -> goto chain` element of a user map, with its absolute expiry and its user.

    A NamedTuple rather than a frozen dataclass: there are 250k of these in a
    full reconcile and tuple creation, hashing and ordering run in C.

    `user` is the element's comment: the mapping's user name in the form
    core.usermap.element_comment gives it (a name too long for a comment is
    cut and marked), so that the kernel alone can say who an IP is and the
    mappings can be rebuilt from it.  Equality includes it: another user on the
    same IP is another element, rewritten (delete + add) even in the same class.
    """

    addr: int
    target: str  # chain name
    expires_at: datetime  # aware UTC; the kernel entry carries the remaining time as timeout
    user: str  # element comment ("" = none); see core.usermap


@dataclass(frozen=True)
class SetSpec:
    name: str
    kind: SetKind


# ---------------------------------------------------------------- rules


@dataclass(frozen=True)
class AcceptEstablished:
    """ct state established,related accept"""


@dataclass(frozen=True)
class JumpIfIifname:
    """iifname @set jump chain"""

    set_name: str
    chain: str


@dataclass(frozen=True)
class JumpIfSaddrIn:
    """ip[6] saddr @set jump chain"""

    version: int
    set_name: str
    chain: str


@dataclass(frozen=True)
class AcceptIfDestIn:
    """ip[6] daddr . meta l4proto . th dport @set accept"""

    version: int
    set_name: str


@dataclass(frozen=True)
class GotoIfDestIn:
    """ip[6] daddr . meta l4proto . th dport @set goto chain"""

    version: int
    set_name: str
    chain: str


@dataclass(frozen=True)
class LogIfDestIn:
    """ip[6] daddr . meta l4proto . th dport @set limit rate N/second log group G prefix P"""

    version: int
    set_name: str
    prefix: str
    group: int
    rate_per_second: int


@dataclass(frozen=True)
class VmapSaddr:
    """ip[6] saddr vmap @map"""

    version: int
    map_name: str


@dataclass(frozen=True)
class Goto:
    chain: str


@dataclass(frozen=True)
class Accept:
    pass


@dataclass(frozen=True)
class Deny:
    """The refusal: optional rate-limited NFLOG, then TCP reset / ICMP admin-prohibited or drop."""

    mode: DenyMode
    log_prefix: str
    log_group: int | None
    rate_per_second: int


Rule = (
    AcceptEstablished
    | JumpIfIifname
    | JumpIfSaddrIn
    | AcceptIfDestIn
    | GotoIfDestIn
    | LogIfDestIn
    | VmapSaddr
    | Goto
    | Accept
    | Deny
)


def rule_signature(rule: Rule) -> str:
    """Stable short id for a rule, stored as the nft rule comment.

    repr() of a frozen dataclass of str/int/enum fields is deterministic across
    runs, so the same desired rule always yields the same comment.
    """
    digest = hashlib.sha256(repr(rule).encode()).hexdigest()[:16]
    return SIGNATURE_PREFIX + digest


def kernel_signatures(rules: tuple[Rule, ...]) -> tuple[str, ...]:
    """The comments the kernel holds for these rules, one per nft rule.

    A Deny expands to several nft rules (log, tcp reset, icmpx reject, drop);
    each part carries the Deny's signature with a `#i` suffix so read-back
    comparison stays one-to-one with kernel rules.
    """
    out: list[str] = []
    for rule in rules:
        sig = rule_signature(rule)
        if isinstance(rule, Deny):
            parts = (1 if rule.log_group is not None else 0) + (2 if rule.mode is DenyMode.REJECT else 0) + 1
            out.extend(f"{sig}#{i}" for i in range(parts))
        else:
            out.append(sig)
    return tuple(out)


@dataclass(frozen=True)
class BaseHook:
    """Base-chain attributes; only the forward hook is used."""

    hook: str = "forward"
    priority: int = 0
    policy: str = "accept"


@dataclass(frozen=True)
class ChainSpec:
    name: str
    rules: tuple[Rule, ...]
    base: BaseHook | None = None

    def signatures(self) -> tuple[str, ...]:
        return tuple(rule_signature(r) for r in self.rules)


@dataclass(frozen=True)
class TableSpec:
    """The complete desired content of `table inet userseg`."""

    sets: dict[str, SetSpec]
    elements: dict[str, frozenset[object]]  # set name -> Box | AddressRange | str | MapElement
    chains: dict[str, ChainSpec]


# ---------------------------------------------------------------- actual state


@dataclass(frozen=True)
class ActualChain:
    name: str
    signatures: tuple[str, ...]  # comments of its rules, in order ("" for a rule without one)
    base: BaseHook | None = None


@dataclass(frozen=True)
class ActualState:
    """What the firewall holds right now, as read back."""

    table_present: bool
    sets: dict[str, SetSpec] = field(default_factory=dict)
    elements: dict[str, frozenset[object]] = field(default_factory=dict)
    chains: dict[str, ActualChain] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> ActualState:
        return cls(table_present=False)


# ---------------------------------------------------------------- plan


@dataclass(frozen=True)
class AddTable:
    pass


@dataclass(frozen=True)
class DeleteTable:
    """Only used inside one transaction followed by a full rebuild (repair of a table
    whose objects have the wrong type); never on its own, so no enforcement gap."""


@dataclass(frozen=True)
class AddSet:
    spec: SetSpec


@dataclass(frozen=True)
class AddChain:
    """Creates an empty chain (base chains get their hook; policy accept keeps them inert)."""

    name: str
    base: BaseHook | None = None


@dataclass(frozen=True)
class SetRules:
    """Flush the chain and add these rules (the whole chain body is replaced)."""

    chain: str
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class AddElements:
    set_name: str
    kind: SetKind
    elements: tuple[object, ...]


@dataclass(frozen=True)
class DeleteElements:
    set_name: str
    kind: SetKind
    elements: tuple[object, ...]


@dataclass(frozen=True)
class DeleteChain:
    """Flush then delete: references to it must be gone in the same transaction."""

    name: str


@dataclass(frozen=True)
class DeleteSet:
    name: str


Op = (
    AddTable
    | DeleteTable
    | AddSet
    | AddChain
    | SetRules
    | AddElements
    | DeleteElements
    | DeleteChain
    | DeleteSet
)


@dataclass(frozen=True)
class Plan:
    """The change from actual to desired, in three phases.

    prelude: new table, sets and chains (new non-base chains with their rules);
        never visible half-built because it is one transaction.
    bulk: additions of elements whose keys are absent from the kernel; safe to
        split into several transactions when huge (memory), because adding a
        not-yet-referenced or brand-new element never widens anyone else's access.
    main: everything that must be atomic: element deletes and replacements,
        rule changes of existing chains and of base chains (so a cold start
        enforces nothing until every element is loaded), deletions of chains/sets.
    `now` is the instant map-element timeouts are computed from.
    """

    now: datetime
    prelude: tuple[Op, ...] = ()
    bulk: tuple[AddElements, ...] = ()
    main: tuple[Op, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not (self.prelude or self.bulk or self.main)

    def ops(self) -> tuple[Op, ...]:
        return self.prelude + self.bulk + self.main

    def element_count(self) -> int:
        return sum(len(op.elements) for op in self.ops() if isinstance(op, AddElements | DeleteElements))
