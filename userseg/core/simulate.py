"""simulate() answers "can alice (or this IP) reach X?" with the deciding rule and why.

It walks the ordered policies directly (no entitlement classes, no box
algebra), so it is an independent oracle for the compiled dataplane: the
tests check that simulate, `evaluate` over the DesiredState and real packets
through the gateway all agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from userseg.core.compile import DesiredState, PolicyIndex, check_references, class_name
from userseg.core.space import contains
from userseg.model import (
    Action,
    IPAddress,
    Mode,
    Policy,
    Proto,
    Snapshot,
    User,
)

INFRASTRUCTURE = "infrastructure"
DEFAULT = "default"


@dataclass(frozen=True)
class StagedNote:
    policy: str
    action: Action


@dataclass(frozen=True)
class SimulationResult:
    action: Action
    rule: str  # policy name, "infrastructure" or "default"
    reason: str
    user: str | None
    ip: IPAddress | None
    class_name: str | None  # None when infrastructure decides before any class
    staged: StagedNote | None = None  # what the verdict would be if staged rules were enforced
    applicable: tuple[str, ...] = field(default=())


def resolve(
    snapshot: Snapshot, who: str | IPAddress, now: datetime
) -> tuple[User | None, IPAddress | None, str]:
    """Who the gateway would think this is: a user, or None for an unknown client."""
    if isinstance(who, str):
        name = who.strip().casefold()
        user = snapshot.users.get(name)
        if user is None:
            return (
                User(name=name),
                None,
                f"user {name!r} is not in the directory; treated as authenticated with no groups",
            )
        if user.disabled:
            return None, None, f"user {name!r} is disabled, so its IPs are unknown clients"
        return user, None, f"user {name!r}"
    active = [m for m in snapshot.mappings if m.ip == who and m.expires_at > now]
    if not active:
        return None, who, f"{who} has no active mapping (unknown client)"
    m = max(active, key=lambda m: m.last_seen)
    user = snapshot.users.get(m.user) or User(name=m.user)
    if user.disabled:
        return None, who, f"{who} is mapped to disabled user {m.user!r} (unknown client)"
    return user, who, f"{who} is mapped to {m.user!r} (source {m.source})"


def _first_match(
    policies: tuple[Policy, ...], apps: Snapshot, dest: IPAddress, proto: Proto, port: int | None
) -> Policy | None:
    for p in policies:
        if apps.applications[p.application].matches(dest, proto, port):
            return p
    return None


def simulate(
    snapshot: Snapshot,
    who: str | IPAddress,
    dest: IPAddress,
    proto: Proto,
    port: int | None,
    now: datetime,
) -> SimulationResult:
    ordered = snapshot.ordered_policies()
    check_references(ordered, snapshot.applications)
    user, ip, who_text = resolve(snapshot, who, now)
    what = f"{dest} {proto.value}" + (f"/{port}" if port is not None and proto is not Proto.ICMP else "")
    user_name = user.name if user else None

    for infra in snapshot.gateway.infrastructure:
        if infra.matches(dest, proto, port):
            return SimulationResult(
                Action.ALLOW,
                INFRASTRUCTURE,
                f"{who_text}; {what} is infrastructure {infra.name!r}, always reachable",
                user_name,
                ip,
                None,
            )

    index = PolicyIndex(ordered)
    applicable = index.applicable(user)
    cname = class_name(index.key(user))
    enforced = tuple(p for p in applicable if p.mode is Mode.ENFORCE)
    decided = _first_match(enforced, snapshot, dest, proto, port)
    would = _first_match(applicable, snapshot, dest, proto, port)
    action = decided.action if decided else snapshot.default_action
    would_action = would.action if would else snapshot.default_action
    staged = None
    if would is not None and would.mode is Mode.STAGE and would_action is not action:
        staged = StagedNote(would.name, would_action)
    if decided:
        reason = (
            f"{who_text}; policy {decided.name!r} ({decided.action.value}) is the first enforced rule "
            f"matching {what} (application {decided.application!r})"
        )
    else:
        reason = f"{who_text}; no enforced rule matches {what}; default action {action.value}"
    if staged:
        reason += f"; staged policy {staged.policy!r} would {staged.action.value} it"
    return SimulationResult(
        action,
        decided.name if decided else DEFAULT,
        reason,
        user_name,
        ip,
        cname,
        staged,
        tuple(p.name for p in applicable),
    )


def evaluate(desired: DesiredState, src: IPAddress, dest: IPAddress, proto: int, port: int) -> Action:
    """The verdict the compiled dataplane gives a new connection (kernel semantics).

    Used to decide which tracked flows must be cut after a revocation, and as the
    middle term of the simulate == evaluate == kernel equivalence tests.
    """
    v, addr = dest.version, int(dest)
    if contains(desired.infrastructure, v, addr, proto, port):
        return Action.ALLOW
    cls = desired.class_of_ip(src)
    if contains(cls.boxes, v, addr, proto, port):
        return cls.match_action
    return desired.default_action
