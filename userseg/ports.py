"""The small typed interfaces the reconciler talks to; adapters implement them.

Kept apart from the adapters so that the reconciler, the CLI and the tests
depend on a contract, not on libnftables or pyroute2.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from userseg.core.table import ActualState, Plan
from userseg.model import IPAddress


class FirewallError(RuntimeError):
    """A transaction was refused; the kernel is unchanged for that transaction."""


@dataclass(frozen=True)
class Flow:
    """One tracked connection, as seen in its original direction."""

    saddr: IPAddress
    daddr: IPAddress
    proto: int  # IP protocol number
    dport: int  # 0 where the protocol has no ports
    sport: int = 0


class Firewall(Protocol):
    def read(self) -> ActualState:
        """Read back our table (ActualState.empty() when it does not exist)."""
        ...

    def apply(self, plan: Plan) -> None:
        """Apply the plan; every transaction is atomic. Raises FirewallError."""
        ...


class ConnectionTable(Protocol):
    """Connection tracking of the gateway, so revocation can cut live flows."""

    def flows_from(self, sources: Iterable[IPAddress] | None) -> list[Flow]:
        """Flows whose original source is one of `sources` (None: all flows)."""
        ...

    def delete(self, flows: Iterable[Flow]) -> int:
        """Delete these flows; returns how many were removed (gone already is fine)."""
        ...


class Clock(Protocol):
    def now(self) -> datetime: ...
