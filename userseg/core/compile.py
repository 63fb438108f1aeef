"""compile(snapshot, now) -> DesiredState: who may reach what, as entitlement classes.

Users whose applicable rule list is identical share an *entitlement class*
(Cilium's identities): the kernel maps an IP to its class in one lookup and the
class to its allowed destinations in one more, so per-packet cost does not grow
with users or policies, and one login is one map element.

First-match semantics are flattened per class into a disjoint region of boxes
holding the *non-default* verdict (allow under default deny, deny under
default allow).  Staged rules change no verdict: we compute the verdict with
them treated as enforced too, and the region where the two differ is logged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from userseg.core import space
from userseg.core.table import Box
from userseg.model import (
    Action,
    Application,
    GatewaySettings,
    IPAddress,
    Mode,
    Policy,
    Snapshot,
    SubjectKind,
    User,
)

UNKNOWN_MARK = "<unknown>"
GROUPLESS = "\0groupless"  # no account has this name, so no `user:` subject names it


class CompileError(ValueError):
    """The snapshot cannot be compiled (e.g. a policy names a missing application).

    Raised before anything is produced, so nothing partial ever reaches the kernel.
    """


@dataclass(frozen=True)
class EntitlementClass:
    name: str
    key: tuple[str, ...]  # names of the enabled policies that apply, in evaluation order
    match_action: Action  # what a hit in `boxes` means (the non-default verdict)
    boxes: frozenset[Box]  # disjoint; both IP versions
    staged: frozenset[Box]  # disjoint; where staged rules would change the verdict
    has_staged_rules: bool


class MapTarget(NamedTuple):
    """Where one IP goes; a NamedTuple because a full compile makes 250k of them."""

    user: str
    class_name: str
    expires_at: datetime


@dataclass(frozen=True)
class DesiredState:
    default_action: Action
    gateway: GatewaySettings
    infrastructure: frozenset[Box]
    classes: Mapping[str, EntitlementClass]
    user_class: Mapping[str, str]  # every known enabled user -> class name (fast path)
    unknown_class: str
    mappings: Mapping[IPAddress, MapTarget]  # active mappings of enabled users
    # For the login fast path, so that a logon needs no full sync just because the account
    # is not in the directory (out of scope, not synced yet) or is disabled there:
    disabled_users: frozenset[str] = frozenset()  # their IPs are unknown clients
    named_users: frozenset[str] = frozenset()  # named by a `user:` subject: classed individually
    groupless_class: str = ""  # the class of any other account the directory does not know

    def class_of_ip(self, addr: IPAddress) -> EntitlementClass:
        target = self.mappings.get(addr)
        return self.classes[target.class_name if target else self.unknown_class]


def class_name(key: tuple[str, ...]) -> str:
    """Stable name from the rule list, so a policy edit changes set contents in place
    instead of renaming classes (which would churn every user's map element)."""
    return "c_" + hashlib.sha256("\x1f".join(key).encode()).hexdigest()[:12]


class PolicyIndex:
    """Which enabled policies apply to whom, indexed so that classifying 100k users
    costs a few dict lookups each instead of a scan of every policy."""

    def __init__(self, ordered: Iterable[Policy]) -> None:
        self.ordered = tuple(p for p in ordered if p.enabled)
        self._group: dict[str, list[int]] = {}
        self._user: dict[str, list[int]] = {}
        self._any: list[int] = []
        self._unknown: list[int] = []
        for i, p in enumerate(self.ordered):
            for s in p.subjects:
                if s.kind is SubjectKind.GROUP:
                    self._group.setdefault(s.name, []).append(i)
                elif s.kind is SubjectKind.USER:
                    self._user.setdefault(s.name, []).append(i)
                elif s.kind is SubjectKind.ANY_AUTHENTICATED:
                    self._any.append(i)
                else:
                    self._unknown.append(i)

    def applicable(self, user: User | None) -> tuple[Policy, ...]:
        if user is None:
            hits = set(self._unknown)
        else:
            hits = set(self._any)
            hits.update(self._user.get(user.name, ()))
            for g in user.groups:
                hits.update(self._group.get(g, ()))
        return tuple(self.ordered[i] for i in sorted(hits))

    def names_user(self, name: str) -> bool:
        return name in self._user

    @property
    def named_users(self) -> frozenset[str]:
        return frozenset(self._user)

    def key(self, user: User | None) -> tuple[str, ...]:
        names = tuple(p.name for p in self.applicable(user))
        return (UNKNOWN_MARK, *names) if user is None else names


def _region(rules: Iterable[tuple[Action, list[Box]]], default: Action) -> space.Region:
    """Region where the first matching rule's action is not the default."""
    decided: space.Region = []
    result: space.Region = []
    for action, boxes in rules:
        fresh = space.minus(boxes, decided)
        if action is not default:
            result.extend(fresh)  # fresh is disjoint from everything decided so far
        space.union(decided, fresh)
    return result


def build_class(
    key: tuple[str, ...],
    policies: Mapping[str, Policy],
    app_boxes: Mapping[str, list[Box]],
    default: Action,
) -> EntitlementClass:
    rules = [policies[name] for name in key if name != UNKNOWN_MARK]
    enforced = [(p.action, app_boxes[p.application]) for p in rules if p.mode is Mode.ENFORCE]
    region_e = _region(enforced, default)
    has_staged = any(p.mode is Mode.STAGE for p in rules)
    staged: space.Region = []
    if has_staged:
        region_s = _region([(p.action, app_boxes[p.application]) for p in rules], default)
        staged = space.minus(region_e, region_s) + space.minus(region_s, region_e)
    match = Action.ALLOW if default is Action.DENY else Action.DENY
    return EntitlementClass(
        name=class_name(key),
        key=key,
        match_action=match,
        boxes=frozenset(region_e),
        staged=frozenset(staged),
        has_staged_rules=has_staged,
    )


def check_references(policies: Iterable[Policy], apps: Mapping[str, Application]) -> None:
    missing = [
        f"policy {p.name!r} refers to application {p.application!r}, which does not exist"
        for p in policies
        if p.enabled and p.application not in apps
    ]
    if missing:
        raise CompileError("; ".join(missing))


def compile_state(snapshot: Snapshot, now: datetime) -> DesiredState:
    """Pure: same snapshot and `now` give the same DesiredState."""
    policies = snapshot.ordered_policies()
    check_references(policies, snapshot.applications)
    by_name = {p.name: p for p in policies}
    app_boxes = {name: space.boxes_of(app) for name, app in snapshot.applications.items()}

    infra: space.Region = []
    for app in snapshot.gateway.infrastructure:
        space.union(infra, space.boxes_of(app))

    classes: dict[str, EntitlementClass] = {}

    index = PolicyIndex(policies)
    by_groups: dict[frozenset[str], str] = {}  # users without user-specific rules share by groups

    def class_for(user: User | None) -> str:
        memo = user is not None and not index.names_user(user.name)
        if memo and user is not None and user.groups in by_groups:
            return by_groups[user.groups]
        key = index.key(user)
        name = class_name(key)
        if name not in classes:
            classes[name] = build_class(key, by_name, app_boxes, snapshot.default_action)
        if memo and user is not None:
            by_groups[user.groups] = name
        return name

    unknown = class_for(None)
    user_class = {name: class_for(user) for name, user in snapshot.users.items() if not user.disabled}
    mappings: dict[IPAddress, MapTarget] = {}
    for m in snapshot.mappings:
        if m.expires_at <= now:
            continue
        user = snapshot.users.get(m.user)
        if user is None:
            # Logged on but not (yet) in the directory: authenticated, no groups.
            user = User(name=m.user)
            cname = user_class.get(m.user) or class_for(user)
        elif user.disabled:
            continue  # a disabled account's IP is just an unknown client
        else:
            cname = user_class[m.user]
        mappings[m.ip] = MapTarget(m.user, cname, m.expires_at)

    return DesiredState(
        default_action=snapshot.default_action,
        gateway=snapshot.gateway,
        infrastructure=frozenset(infra),
        classes=classes,
        user_class=user_class,
        unknown_class=unknown,
        mappings=mappings,
        disabled_users=frozenset(name for name, user in snapshot.users.items() if user.disabled),
        named_users=index.named_users,
        # Only named, not instantiated: the fast path uses it once a full sync has built it.
        groupless_class=class_name(index.key(User(name=GROUPLESS))),
    )
