"""Packet verdicts for the fake firewall: walks stored Rule objects like nf_tables would.

Kept apart from fake.py (transaction semantics) so each stays readable; the
contract suite and test_fake check the two together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from userseg.core.table import (
    Accept,
    AcceptEstablished,
    AcceptIfDestIn,
    Box,
    Deny,
    Goto,
    GotoIfDestIn,
    JumpIfIifname,
    JumpIfSaddrIn,
    LogIfDestIn,
    MapElement,
    Rule,
    VmapSaddr,
)
from userseg.model import AddressRange, DenyMode, IPAddress
from userseg.ports import FirewallError

MAX_DEPTH = 16  # nf_tables' jump stack limit


@dataclass(frozen=True)
class ForeignRule:
    """A rule somebody else put into one of our chains: no signature, optional verdict."""

    verdict: str | None = None  # "accept" / "drop" / None (only matches, e.g. a counter)


ChainRule = Rule | ForeignRule


def expired(e: object, now: datetime | None) -> bool:
    return now is not None and isinstance(e, MapElement) and e.expires_at <= now


@dataclass(frozen=True)
class Packet:
    iif: str
    saddr: IPAddress
    daddr: IPAddress
    proto: int
    dport: int
    established: bool


class Interpreter:
    """Walks chains for one packet; run() returns a final verdict or None (fell off / returned)."""

    def __init__(
        self,
        chains: Mapping[str, Sequence[ChainRule]],
        elements: Mapping[str, Mapping[object, object]],
        pkt: Packet,
        now: datetime | None,
    ) -> None:
        self.chains = chains
        self.elements = elements  # set name -> key (map: address) -> element
        self.p = pkt
        self.now = now

    def _members(self, set_name: str) -> list[object]:
        return list(self.elements.get(set_name, {}).values())

    def _saddr_in(self, version: int, set_name: str) -> bool:
        p = self.p
        return p.saddr.version == version and any(
            isinstance(r, AddressRange) and r.contains(p.saddr) for r in self._members(set_name)
        )

    def _dest_in(self, version: int, set_name: str) -> bool:
        p = self.p
        if p.daddr.version != version:
            return False
        addr = int(p.daddr)
        return any(
            isinstance(b, Box) and b.contains(version, addr, p.proto, p.dport)
            for b in self._members(set_name)
        )

    def run(self, chain: str, depth: int = 0) -> str | None:
        if depth > MAX_DEPTH:
            raise FirewallError(f"chain {chain}: jumps nest deeper than {MAX_DEPTH}")
        for rule in self.chains[chain]:
            jump: str | None = None
            goto: str | None = None
            if isinstance(rule, ForeignRule):
                if rule.verdict is not None:
                    return rule.verdict
            elif isinstance(rule, AcceptEstablished):
                if self.p.established:
                    return "accept"
            elif isinstance(rule, JumpIfIifname):
                if self.p.iif in self.elements.get(rule.set_name, {}):
                    jump = rule.chain
            elif isinstance(rule, JumpIfSaddrIn):
                if self._saddr_in(rule.version, rule.set_name):
                    jump = rule.chain
            elif isinstance(rule, AcceptIfDestIn):
                if self._dest_in(rule.version, rule.set_name):
                    return "accept"
            elif isinstance(rule, GotoIfDestIn):
                if self._dest_in(rule.version, rule.set_name):
                    goto = rule.chain
            elif isinstance(rule, LogIfDestIn):
                pass  # logging has no verdict
            elif isinstance(rule, VmapSaddr):
                if self.p.saddr.version == rule.version:
                    e = self.elements.get(rule.map_name, {}).get(int(self.p.saddr))
                    if isinstance(e, MapElement) and not expired(e, self.now):
                        goto = e.target
            elif isinstance(rule, Goto):
                goto = rule.chain
            elif isinstance(rule, Accept):
                return "accept"
            elif isinstance(rule, Deny):
                return "reject" if rule.mode is DenyMode.REJECT else "drop"
            if goto is not None:
                return self.run(goto, depth + 1)
            if jump is not None:
                verdict = self.run(jump, depth + 1)
                if verdict is not None:
                    return verdict
        return None
