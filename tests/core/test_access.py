"""Per-application effective access, cross-checked against the simulate() oracle."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest
from hypothesis import given, settings

from tests.core.strategies import NOW, snapshots
from userseg.core.access import AppAccess, Decision, access_by_application
from userseg.core.compile import CompileError, PolicyIndex
from userseg.core.simulate import DEFAULT, INFRASTRUCTURE, simulate
from userseg.model import (
    Action,
    AddressRange,
    Application,
    GatewaySettings,
    IPAddress,
    Mode,
    Policy,
    Proto,
    Service,
    Snapshot,
    Subject,
    User,
)

ALLOW, DENY = Action.ALLOW, Action.DENY
NOBODY = ipaddress.ip_address("203.0.113.250")  # an IP with no mapping: an unknown client


def app(name: str, *dests: str, services: tuple[str, ...] = ("tcp/443",)) -> Application:
    return Application(
        name, tuple(AddressRange.parse(d) for d in dests), tuple(Service.parse(s) for s in services)
    )


def pol(name: str, priority: int, subject: str, application: str, action: Action, **kw: object) -> Policy:
    return Policy(name, priority, (Subject.parse(subject),), application, action, **kw)  # type: ignore[arg-type]


def snap(
    apps: list[Application],
    policies: list[Policy],
    *,
    default: Action = DENY,
    infra: tuple[Application, ...] = (),
    users: dict[str, User] | None = None,
) -> Snapshot:
    return Snapshot(
        users=users or {},
        mappings=(),
        applications={a.name: a for a in apps},
        policies=tuple(policies),
        default_action=default,
        gateway=GatewaySettings(infrastructure=infra),
    )


def by_app(s: Snapshot, u: User | None) -> dict[str, AppAccess]:
    return {a.application: a for a in access_by_application(s, u)}


ALICE = User("alice", groups=frozenset({"staff", "contractors"}))
BOB = User("bob", groups=frozenset({"staff"}))


# --- hand-made cases --------------------------------------------------------------


def test_deny_on_an_overlapping_subnet_of_another_app_gives_partial() -> None:
    s = snap(
        [app("web", "10.0.0.0/24"), app("secret", "10.0.0.128/25")],
        [
            pol("no-secret", 10, "group:contractors", "secret", DENY),
            pol("web-staff", 20, "group:staff", "web", ALLOW),
        ],
    )
    alice = by_app(s, ALICE)
    assert alice["web"] == AppAccess(
        "web",
        "partial",
        (Decision("no-secret", DENY, False), Decision("web-staff", ALLOW, False)),
    )
    assert alice["secret"] == AppAccess("secret", "deny", (Decision("no-secret", DENY, True),))
    bob = by_app(s, BOB)
    assert bob["web"] == AppAccess("web", "allow", (Decision("web-staff", ALLOW, True),))
    # bob's "secret" half is allowed by the web policy: it decides all of "secret"
    assert bob["secret"] == AppAccess("secret", "allow", (Decision("web-staff", ALLOW, True),))


def test_a_lower_priority_overlap_decides_nothing() -> None:
    s = snap(
        [app("web", "10.0.0.0/24"), app("secret", "10.0.0.128/25")],
        [
            pol("web-staff", 10, "group:staff", "web", ALLOW),
            pol("no-secret", 20, "group:contractors", "secret", DENY),
        ],
    )
    assert by_app(s, ALICE)["web"].decisions == (Decision("web-staff", ALLOW, True),)
    assert by_app(s, ALICE)["secret"].decisions == (Decision("web-staff", ALLOW, True),)


def test_same_priority_ties_are_broken_by_name() -> None:
    s = snap(
        [app("web", "10.0.0.0/24")],
        [pol("b-allow", 10, "group:staff", "web", ALLOW), pol("a-deny", 10, "group:staff", "web", DENY)],
    )
    assert by_app(s, BOB)["web"].decisions == (Decision("a-deny", DENY, True),)


def test_default_action_decides_what_no_rule_covers() -> None:
    apps = [
        app("web", "10.0.0.0/24", services=("tcp/80", "tcp/443")),
        app("ssh", "10.0.1.1", services=("tcp/22",)),
    ]
    policies = [pol("web-https", 10, "group:staff", "web", ALLOW)]
    s = snap(apps, policies)
    got = by_app(s, BOB)
    assert got["ssh"] == AppAccess("ssh", "deny", (Decision(DEFAULT, DENY, True),))
    assert got["web"] == AppAccess("web", "allow", (Decision("web-https", ALLOW, True),))
    # an app with the rule's addresses but a port only partly covered by it
    narrow = snap([*apps, app("wide", "10.0.0.0/24", services=("tcp/443", "tcp/8443"))], policies)
    assert by_app(narrow, BOB)["wide"] == AppAccess(
        "wide", "partial", (Decision("web-https", ALLOW, False), Decision(DEFAULT, DENY, False))
    )
    allowing = snap(apps, [], default=ALLOW)
    assert by_app(allowing, BOB)["ssh"] == AppAccess("ssh", "allow", (Decision(DEFAULT, ALLOW, True),))


def test_unknown_client_gets_only_unknown_policies() -> None:
    s = snap(
        [app("portal", "10.0.2.1"), app("web", "10.0.0.0/24")],
        [
            pol("guests", 10, "unknown", "portal", ALLOW),
            pol("everyone", 20, "any-authenticated", "web", ALLOW),
        ],
    )
    unknown = by_app(s, None)
    assert unknown["portal"].verdict == "allow"
    assert unknown["web"].decisions == (Decision(DEFAULT, DENY, True),)
    known = by_app(s, BOB)
    assert known["portal"].decisions == (Decision(DEFAULT, DENY, True),)
    assert known["web"].verdict == "allow"


def test_user_policies_match_by_name_and_disabled_policies_are_ignored() -> None:
    s = snap(
        [app("web", "10.0.0.0/24")],
        [
            pol("off", 1, "user:bob", "web", DENY, enabled=False),
            pol("just-bob", 10, "user:bob", "web", ALLOW),
        ],
    )
    assert by_app(s, BOB)["web"].decisions == (Decision("just-bob", ALLOW, True),)
    assert by_app(s, ALICE)["web"].decisions == (Decision(DEFAULT, DENY, True),)


def test_infrastructure_comes_first() -> None:
    dcs = app("dcs", "10.0.0.10", services=("tcp/443", "tcp/88"))
    s = snap(
        [app("web", "10.0.0.0/24"), app("dc-only", "10.0.0.10")],
        [pol("deny-web", 1, "any-authenticated", "web", DENY)],
        infra=(dcs,),
    )
    got = by_app(s, BOB)
    assert got["web"] == AppAccess(
        "web", "partial", (Decision(INFRASTRUCTURE, ALLOW, False), Decision("deny-web", DENY, False))
    )
    assert got["dc-only"] == AppAccess("dc-only", "allow", (Decision(INFRASTRUCTURE, ALLOW, True),))


def test_staged_policies_that_apply_and_touch_the_app_are_listed() -> None:
    s = snap(
        [app("web", "10.0.0.0/24"), app("secret", "10.0.0.128/25"), app("far", "10.9.0.1")],
        [
            pol("try-deny-secret", 5, "group:staff", "secret", DENY, mode=Mode.STAGE),
            pol("try-far", 6, "group:staff", "far", ALLOW, mode=Mode.STAGE),
            pol("try-contractors", 7, "group:contractors", "web", DENY, mode=Mode.STAGE),
            pol("try-off", 8, "group:staff", "web", DENY, mode=Mode.STAGE, enabled=False),
            pol("web-staff", 20, "group:staff", "web", ALLOW),
        ],
    )
    bob = by_app(s, BOB)
    assert bob["web"].staged == ("try-deny-secret",)  # overlaps web; try-far does not
    assert bob["secret"].staged == ("try-deny-secret",)
    assert bob["far"].staged == ("try-far",)
    # staged rules never decide
    assert bob["secret"].decisions == (Decision("web-staff", ALLOW, True),)
    assert by_app(s, ALICE)["web"].staged == ("try-deny-secret", "try-contractors")
    assert by_app(s, None)["web"].staged == ()


def test_one_entry_per_application_sorted_by_name() -> None:
    s = snap([app("zeta", "10.0.0.1"), app("alpha", "10.0.0.2"), app("Mid", "10.0.0.3")], [])
    assert [a.application for a in access_by_application(s, BOB)] == ["Mid", "alpha", "zeta"]
    assert access_by_application(snap([], []), BOB) == []


def test_policy_naming_a_missing_application_is_refused() -> None:
    s = snap([app("web", "10.0.0.1")], [pol("p", 1, "any-authenticated", "gone", ALLOW)])
    with pytest.raises(CompileError, match="'gone'"):
        access_by_application(s, BOB)


# --- cross-check against simulate() ------------------------------------------------


def cuts(s: Snapshot) -> tuple[dict[int, set[int]], set[int]]:
    """Where anything can change: the first and one-past-last of every address and port range."""
    apps = [*s.applications.values(), *s.gateway.infrastructure]
    addrs: dict[int, set[int]] = {4: set(), 6: set()}
    ports = {0}
    for a in apps:
        for d in a.destinations:
            addrs[d.version].update((d.first, d.last + 1))
        for svc in a.services:
            for r in svc.ports:
                ports.update((r.first, r.last + 1))
    return addrs, {p for p in ports if p <= 65535}


def points(a: Application, s: Snapshot) -> Iterator[tuple[IPAddress, Proto, int]]:
    """One probe in every cell of the application that the snapshot's ranges can tell apart.

    Every verdict region is a union of boxes whose edges are range endpoints,
    so the cells between consecutive cut points are uniform and one probe per
    cell (its first point) is exhaustive.
    """
    addr_cuts, port_cuts = cuts(s)
    seen: set[tuple[IPAddress, Proto, int]] = set()
    for d in a.destinations:
        firsts = {d.first} | {c for c in addr_cuts[d.version] if d.first <= c <= d.last}
        for n in sorted(firsts):
            addr = ipaddress.ip_address(n) if d.version == 4 else ipaddress.IPv6Address(n)
            for svc in a.services:
                for port in [0] if svc.proto is Proto.ICMP else sorted(port_cuts):
                    if svc.matches(svc.proto, port) and (addr, svc.proto, port) not in seen:
                        seen.add((addr, svc.proto, port))
                        yield addr, svc.proto, port


def check_against_simulate(s: Snapshot, who: str | IPAddress, user: User | None) -> None:
    order = {p.name: i for i, p in enumerate(s.ordered_policies())}
    staged_rules = [p for p in PolicyIndex(s.ordered_policies()).applicable(user) if p.mode is Mode.STAGE]
    for access in access_by_application(s, user):
        a = s.applications[access.application]
        reported = {d.rule: d.action for d in access.decisions}
        assert len(reported) == len(access.decisions), "a rule is reported twice"
        witnessed: set[str] = set()
        staged_touching: set[str] = set()
        for dest, proto, port in points(a, s):
            sim = simulate(s, who, dest, proto, port, NOW)
            assert sim.rule in reported, (access, sim.reason)
            assert reported[sim.rule] is sim.action, (access, sim.reason)
            witnessed.add(sim.rule)
            staged_touching.update(
                p.name for p in staged_rules if s.applications[p.application].matches(dest, proto, port)
            )
        # every reported rule really decides some part of the application
        assert witnessed == set(reported), access
        actions = set(reported.values())
        assert access.verdict == ("partial" if len(actions) > 1 else next(iter(actions)).value)
        assert all(d.whole == (len(access.decisions) == 1) for d in access.decisions)
        # infrastructure first, then policy order, default last
        rank = [
            -1 if d.rule == INFRASTRUCTURE else len(order) if d.rule == DEFAULT else order[d.rule]
            for d in access.decisions
        ]
        assert rank == sorted(rank), access
        # staged: applicable to the user and overlapping the application (even its infrastructure part)
        assert set(access.staged) == staged_touching, access
        assert list(access.staged) == sorted(access.staged, key=order.__getitem__)


@settings(max_examples=100, deadline=None)
@given(snapshots())
def test_every_reported_decision_is_what_simulate_gives_inside_the_app(s: Snapshot) -> None:
    try:
        access_by_application(s, None)
    except CompileError:
        return
    check_against_simulate(s, NOBODY, None)
    for name, u in s.users.items():
        check_against_simulate(s, name, None if u.disabled else u)
    check_against_simulate(s, "zed", User("zed"))  # logged on, not in the directory
