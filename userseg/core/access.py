"""Effective access of one user, per application, with the rules that decide it.

`userseg users alice` answers "what can alice reach?" without the admin
probing destinations one by one.  An application's destinations x services
are walked through the user's enforced policies in order, exactly as the
compiler does: each rule decides the part of the application not yet decided
by an earlier rule, so a higher-priority policy of *another* application that
overlaps (e.g. a deny on a shared subnet) shows up as deciding part of it.
Infrastructure, always reachable, is taken out first.
"""

from __future__ import annotations

from dataclasses import dataclass

from userseg.core import space
from userseg.core.compile import PolicyIndex, check_references
from userseg.core.simulate import DEFAULT, INFRASTRUCTURE
from userseg.model import Action, Mode, Snapshot, User


@dataclass(frozen=True)
class Decision:
    rule: str  # policy name, "infrastructure" or "default"
    action: Action
    whole: bool  # decides the entire application (no other rule decides any part of it)


@dataclass(frozen=True)
class AppAccess:
    application: str
    verdict: str  # "allow", "deny" or "partial" (some parts allowed, some denied)
    decisions: tuple[Decision, ...]
    staged: tuple[str, ...] = ()  # staged policies that apply to this user and touch this application


def access_by_application(snapshot: Snapshot, user: User | None) -> list[AppAccess]:
    """One entry per application, sorted by name; `user` None means an unknown client."""
    ordered = snapshot.ordered_policies()
    check_references(ordered, snapshot.applications)
    applicable = PolicyIndex(ordered).applicable(user)
    enforced = [p for p in applicable if p.mode is Mode.ENFORCE]
    infra: space.Region = []
    for app in snapshot.gateway.infrastructure:
        space.union(infra, space.boxes_of(app))
    app_boxes = {name: space.boxes_of(app) for name, app in snapshot.applications.items()}
    out: list[AppAccess] = []
    for name in sorted(snapshot.applications):
        whole = app_boxes[name]
        remaining = space.minus(whole, infra)
        decisions: list[tuple[str, Action]] = []
        if remaining != whole:
            decisions.append((INFRASTRUCTURE, Action.ALLOW))
        for p in enforced:
            if not remaining:
                break
            rest = space.minus(remaining, app_boxes[p.application])
            if rest != remaining:
                decisions.append((p.name, p.action))
                remaining = rest
        if remaining:
            decisions.append((DEFAULT, snapshot.default_action))
        actions = {a for _, a in decisions}
        verdict = "partial" if len(actions) > 1 else next(iter(actions)).value
        staged = tuple(
            p.name for p in applicable if p.mode is Mode.STAGE and _touches(app_boxes[p.application], whole)
        )
        one = len(decisions) == 1
        out.append(AppAccess(name, verdict, tuple(Decision(r, a, one) for r, a in decisions), staged))
    return out


def _touches(a: space.Region, b: space.Region) -> bool:
    return space.minus(a, b) != a
