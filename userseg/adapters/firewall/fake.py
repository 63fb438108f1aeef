"""An in-memory Firewall that behaves like nf_tables, for fast tests of everything above it.

It applies Plan ops with the kernel's transaction semantics (all or nothing,
the same refusals, measured on nftables 1.0.6 / kernel 6.18), keeps the Rule
objects so it can answer "would this packet pass?" (`evaluate`), and offers
`tamper_*` hooks so tests can simulate drift made behind our back.  The
contract suite (tests/adapters/firewall/test_contract.py) runs the same cases
against this fake and real nftables, which is what keeps the two honest.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from userseg.adapters.firewall.fake_packet import ChainRule, ForeignRule, Interpreter, Packet, expired
from userseg.adapters.firewall.nft_render import (
    COMMENT_PROBLEM,
    element_timeout,
    rule_kernel_signatures,
    split_transactions,
)
from userseg.core.table import (
    AcceptIfDestIn,
    ActualChain,
    ActualState,
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
    Goto,
    GotoIfDestIn,
    JumpIfIifname,
    JumpIfSaddrIn,
    LogIfDestIn,
    MapElement,
    Op,
    Plan,
    SetKind,
    SetRules,
    SetSpec,
    VmapSaddr,
)
from userseg.core.usermap import comment_fits
from userseg.model import AddressRange, IPAddress
from userseg.ports import FirewallError

__all__ = ["ChainRule", "FakeFirewall", "ForeignRule"]

ENOENT = "No such file or directory"
EEXIST = "File exists"
EBUSY = "Device or resource busy"
EOPNOTSUPP = "Operation not supported"
ELOOP = "Too many levels of symbolic links"


@dataclass
class _Chain:
    base: BaseHook | None
    rules: list[ChainRule] = field(default_factory=list)


@dataclass
class _State:
    present: bool = False
    sets: dict[str, SetSpec] = field(default_factory=dict)
    elements: dict[str, dict[object, object]] = field(default_factory=dict)  # set -> key -> element
    chains: dict[str, _Chain] = field(default_factory=dict)

    def copy(self) -> _State:
        """Copy for a transaction; element dicts are shared until first written (see _Txn)."""
        return _State(
            self.present,
            dict(self.sets),
            dict(self.elements),
            {n: _Chain(c.base, list(c.rules)) for n, c in self.chains.items()},
        )


class _Refused(Exception):
    """One op was refused; the transaction is dropped."""


def _key(kind: SetKind, element: object) -> object:
    return element.addr if isinstance(element, MapElement) and kind.is_map else element


def _set_refs(rule: ChainRule) -> list[tuple[str, SetKind]]:
    """(set name, required kind) the rule looks up."""
    if isinstance(rule, JumpIfIifname):
        return [(rule.set_name, SetKind.IFNAME)]
    if isinstance(rule, JumpIfSaddrIn):
        return [(rule.set_name, SetKind.NET4 if rule.version == 4 else SetKind.NET6)]
    if isinstance(rule, AcceptIfDestIn | GotoIfDestIn | LogIfDestIn):
        return [(rule.set_name, SetKind.DEST4 if rule.version == 4 else SetKind.DEST6)]
    if isinstance(rule, VmapSaddr):
        return [(rule.map_name, SetKind.VMAP4 if rule.version == 4 else SetKind.VMAP6)]
    return []


def _chain_ref(rule: ChainRule) -> str | None:
    if isinstance(rule, JumpIfIifname | JumpIfSaddrIn | GotoIfDestIn | Goto):
        return rule.chain
    return None


class _Txn:
    """Applies ops to a copy of the state, raising _Refused like the kernel would."""

    def __init__(self, state: _State, now: datetime) -> None:
        self.s = state.copy()
        self.now = now
        self._owned: set[str] = set()  # element dicts already copied in this transaction

    def _elements(self, name: str) -> dict[object, object]:
        if name not in self._owned:
            self.s.elements[name] = dict(self.s.elements.get(name, {}))
            self._owned.add(name)
        return self.s.elements[name]

    def apply(self, op: Op) -> None:
        s = self.s
        if isinstance(op, AddTable):
            s.present = True
            return
        if not s.present:
            raise _Refused(f"{type(op).__name__}: table inet userseg: {ENOENT}")
        if isinstance(op, DeleteTable):
            self.s = _State()
            self._owned.clear()
        elif isinstance(op, AddSet):
            if op.spec.name in s.sets and s.sets[op.spec.name] != op.spec:
                raise _Refused(f"add set {op.spec.name}: {EEXIST} (with another type)")
            if op.spec.name not in s.sets:
                s.sets[op.spec.name] = op.spec
                s.elements[op.spec.name] = {}
                self._owned.add(op.spec.name)
        elif isinstance(op, AddChain):
            self._add_chain(op)
        elif isinstance(op, SetRules):
            if op.chain not in s.chains:
                raise _Refused(f"flush chain {op.chain}: {ENOENT}")
            for rule in op.rules:
                self._check_rule(op.chain, rule)
            s.chains[op.chain].rules = list(op.rules)
        elif isinstance(op, AddElements):
            self._add_elements(op)
        elif isinstance(op, DeleteElements):
            self._delete_elements(op)
        elif isinstance(op, DeleteChain):
            if op.name not in s.chains:
                raise _Refused(f"delete chain {op.name}: {ENOENT}")
            s.chains[op.name].rules = []
            if self._chain_in_use(op.name):
                raise _Refused(f"delete chain {op.name}: {EBUSY}")
            del s.chains[op.name]
        elif isinstance(op, DeleteSet):
            if op.name not in s.sets:
                raise _Refused(f"delete set {op.name}: {ENOENT}")
            if any(name == op.name for c in s.chains.values() for r in c.rules for name, _ in _set_refs(r)):
                raise _Refused(f"delete set {op.name}: {EBUSY}")
            del s.sets[op.name]
            s.elements.pop(op.name, None)
        else:
            raise TypeError(f"not a plan op: {op!r}")

    def _add_chain(self, op: AddChain) -> None:
        have = self.s.chains.get(op.name)
        if have is None:
            self.s.chains[op.name] = _Chain(op.base)
            return
        if op.base is None:
            return
        if have.base is None or (have.base.hook, have.base.priority) != (op.base.hook, op.base.priority):
            raise _Refused(f"add chain {op.name}: {EOPNOTSUPP} (exists with another hook)")
        have.base = op.base  # only the policy can differ: the kernel updates it

    def _check_target(self, what: str, chain: str) -> None:
        if chain not in self.s.chains:
            raise _Refused(f"{what}: chain {chain}: {ENOENT}")
        if self.s.chains[chain].base is not None:
            raise _Refused(f"{what}: cannot jump to base chain {chain}: {EOPNOTSUPP}")

    def _check_rule(self, chain: str, rule: ChainRule) -> None:
        for name, kind in _set_refs(rule):
            if name not in self.s.sets:
                raise _Refused(f"add rule to {chain}: set {name}: {ENOENT}")
            if self.s.sets[name].kind is not kind:
                raise _Refused(
                    f"add rule to {chain}: set {name} is not a {kind.value} set: datatype mismatch"
                )
        target = _chain_ref(rule)
        if target is not None:
            self._check_target(f"add rule to {chain}", target)

    def _add_elements(self, op: AddElements) -> None:
        spec = self.s.sets.get(op.set_name)
        if spec is None:
            raise _Refused(f"add element {op.set_name}: {ENOENT}")
        if spec.kind is not op.kind:
            raise _Refused(f"add element {op.set_name}: set is {spec.kind.value}, not {op.kind.value}")
        elems = self._elements(op.set_name)
        for e in op.elements:
            _check_type(op.kind, e)
            key = _key(op.kind, e)
            if key in elems and isinstance(e, AddressRange):
                continue  # NET sets are written with `add`: an identical range is a no-op
            if key in elems:
                raise _Refused(f"add element {op.set_name} {e!r}: {EEXIST}")
            if isinstance(e, MapElement):
                if not comment_fits(e.user):
                    raise ValueError(f"{e!r}: {COMMENT_PROBLEM}")  # as the encoders refuse it
                self._check_target(f"add element {op.set_name}", e.target)
                timeout = element_timeout(e.expires_at, self.now)
                e = e._replace(expires_at=self.now + timedelta(seconds=timeout))
            elif isinstance(e, Box | AddressRange):
                clash = next((o for o in elems.values() if _overlaps(e, o)), None)
                if clash is not None:
                    why = EEXIST if isinstance(e, Box) else "interval overlaps with an existing one"
                    raise _Refused(f"add element {op.set_name} {e!r}: overlaps {clash!r}: {why}")
            elems[key] = e

    def _delete_elements(self, op: DeleteElements) -> None:
        if op.set_name not in self.s.sets:
            raise _Refused(f"delete element {op.set_name}: {ENOENT}")
        elems = self._elements(op.set_name)
        for e in op.elements:
            key = _key(op.kind, e)
            if key not in elems:
                raise _Refused(f"delete element {op.set_name} {e!r}: {ENOENT}")
            del elems[key]

    def _chain_in_use(self, name: str) -> bool:
        if any(_chain_ref(r) == name for c in self.s.chains.values() for r in c.rules):
            return True
        return any(
            isinstance(e, MapElement) and e.target == name
            for set_name, spec in self.s.sets.items()
            if spec.kind.is_map
            for e in self.s.elements.get(set_name, {}).values()
        )

    def check_loops(self) -> None:
        """The kernel refuses a commit that makes jumps/gotos cycle."""
        edges: dict[str, set[str]] = {n: set() for n in self.s.chains}
        for name, chain in self.s.chains.items():
            for rule in chain.rules:
                target = _chain_ref(rule)
                if target is not None:
                    edges[name].add(target)
                if isinstance(rule, VmapSaddr):
                    targets = self.s.elements.get(rule.map_name, {}).values()
                    edges[name].update(e.target for e in targets if isinstance(e, MapElement))
        done: set[str] = set()

        def visit(node: str, path: set[str]) -> None:
            if node in path:
                raise _Refused(f"chain {node} jumps to itself: {ELOOP}")
            if node in done:
                return
            for nxt in edges.get(node, ()):
                visit(nxt, path | {node})
            done.add(node)

        for node in edges:
            visit(node, set())


def _check_type(kind: SetKind, e: object) -> None:
    ok = {
        SetKind.DEST4: isinstance(e, Box) and e.version == 4,
        SetKind.DEST6: isinstance(e, Box) and e.version == 6,
        SetKind.NET4: isinstance(e, AddressRange) and e.version == 4,
        SetKind.NET6: isinstance(e, AddressRange) and e.version == 6,
        SetKind.IFNAME: isinstance(e, str) and bool(e),
        SetKind.VMAP4: isinstance(e, MapElement),
        SetKind.VMAP6: isinstance(e, MapElement),
    }[kind]
    if not ok:
        raise _Refused(f"{e!r} is not a {kind.value} element: invalid data type")


def _overlaps(a: object, b: object) -> bool:
    if isinstance(a, Box) and isinstance(b, Box):
        return (
            a.proto == b.proto
            and a.addr_first <= b.addr_last
            and b.addr_first <= a.addr_last
            and a.port_first <= b.port_last
            and b.port_first <= a.port_last
        )
    if isinstance(a, AddressRange) and isinstance(b, AddressRange):
        return a.first <= b.last and b.first <= a.last
    return False


class FakeFirewall:
    """Firewall port in memory; `clock` (optional) makes map elements expire like the kernel's."""

    def __init__(self, chunk_elements: int = 20000, clock: Callable[[], datetime] | None = None) -> None:
        self.chunk_elements = chunk_elements
        self.clock = clock
        self.transactions_run = 0
        self.plans: list[Plan] = []  # every plan apply() was given, refused ones included
        self._state = _State()
        self._failures: list[str] = []

    # ------------------------------------------------------------ Firewall port

    def read(self) -> ActualState:
        s = self._state
        if not s.present:
            return ActualState.empty()
        now = self.clock() if self.clock else None
        elements = {
            name: frozenset(e for e in elems.values() if not expired(e, now))
            for name, elems in s.elements.items()
        }
        chains = {
            name: ActualChain(name, tuple(sig for r in c.rules for sig in _signatures(r)), c.base)
            for name, c in s.chains.items()
        }
        return ActualState(True, dict(s.sets), elements, chains)

    def apply(self, plan: Plan) -> None:
        self.plans.append(plan)
        if self._failures:
            raise FirewallError(self._failures.pop(0))
        for index, ops in enumerate(split_transactions(plan, self.chunk_elements)):
            txn = _Txn(self._state, plan.now)
            try:
                for op in ops:
                    txn.apply(op)
                txn.check_loops()
            except _Refused as exc:
                raise FirewallError(f"transaction {index + 1} refused: {exc}") from None
            self._state = txn.s
            self.transactions_run += 1

    def fail_next(self, n: int = 1, message: str = "injected failure") -> None:
        """Make the next n apply() calls raise FirewallError without changing anything."""
        self._failures.extend([message] * n)

    # ------------------------------------------------------------ drift, as made by someone else

    def rules(self, chain: str) -> tuple[ChainRule, ...]:
        return tuple(self._state.chains[chain].rules)

    def tamper_delete_table(self) -> None:
        self._state = _State()

    def tamper_flush_chain(self, chain: str) -> None:
        self._state.chains[chain].rules.clear()

    def tamper_insert_rule(self, chain: str, rule: ChainRule, index: int = 0) -> None:
        self._state.chains[chain].rules.insert(index, rule)

    def tamper_delete_element(self, set_name: str, element: object) -> None:
        del self._state.elements[set_name][_key(self._state.sets[set_name].kind, element)]

    def tamper_add_element(self, set_name: str, element: object) -> None:
        self._state.elements[set_name][_key(self._state.sets[set_name].kind, element)] = element

    def tamper_add_set(self, spec: SetSpec) -> None:
        self._state.sets[spec.name] = spec
        self._state.elements[spec.name] = {}

    def tamper_add_chain(self, name: str, base: BaseHook | None = None) -> None:
        self._state.chains[name] = _Chain(base)

    # ------------------------------------------------------------ behaviour

    def evaluate(
        self,
        iif: str,
        saddr: IPAddress | str,
        daddr: IPAddress | str,
        proto: int,
        dport: int,
        established: bool = False,
    ) -> str:
        """ "accept" | "reject" | "drop" for a forwarded packet, as the kernel would decide.

        Base chains on the forward hook run in priority order; accept there lets
        the next base chain look, drop/reject is final; falling off a base chain
        is its policy.  jump returns to the caller, goto does not.
        """
        pkt = Packet(iif, ipaddress.ip_address(saddr), ipaddress.ip_address(daddr), proto, dport, established)
        now = self.clock() if self.clock else None
        bases = sorted(
            (c.base.priority, name)
            for name, c in self._state.chains.items()
            if c.base is not None and c.base.hook == "forward"
        )
        for _prio, name in bases:
            rules = {n: c.rules for n, c in self._state.chains.items()}
            verdict = Interpreter(rules, self._state.elements, pkt, now).run(name)
            if verdict is None:
                base = self._state.chains[name].base
                verdict = base.policy if base is not None else "accept"
            if verdict != "accept":
                return verdict
        return "accept"


def _signatures(rule: ChainRule) -> tuple[str, ...]:
    return ("",) if isinstance(rule, ForeignRule) else rule_kernel_signatures(rule)
