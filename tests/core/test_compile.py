from __future__ import annotations

import ipaddress
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.strategies import NOW, probes, snapshots
from userseg.core import space
from userseg.core.compile import CompileError, class_name, compile_state
from userseg.core.simulate import evaluate, simulate
from userseg.model import (
    Action,
    AddressRange,
    Application,
    GatewaySettings,
    Mapping,
    Mode,
    Policy,
    Service,
    Snapshot,
    Subject,
    User,
)

A = ipaddress.ip_address


def world(policies: list[Policy], default: Action = Action.DENY, **kw: object) -> Snapshot:
    apps = {
        "web": Application("web", (AddressRange.parse("198.18.20.10"),), (Service.parse("tcp/80,443"),)),
        "ssh": Application("ssh", (AddressRange.parse("198.18.20.0/28"),), (Service.parse("tcp/22"),)),
        "dns": Application("dns", (AddressRange.parse("198.18.20.53"),), (Service.parse("udp/53"),)),
    }
    users = {
        "alice": User("alice", groups=frozenset({"finance"})),
        "bob": User("bob", groups=frozenset({"it", "finance"})),
        "carol": User("carol", groups=frozenset({"finance"})),
        "eve": User("eve", disabled=True, groups=frozenset({"finance"})),
    }
    mappings = tuple(
        Mapping(A(f"198.18.10.{i}"), u, "test", NOW, NOW, NOW + timedelta(hours=1))
        for i, u in enumerate(["alice", "bob", "carol", "eve"], start=11)
    )
    return Snapshot(
        users,
        mappings,
        apps,
        tuple(policies),
        default,
        GatewaySettings(client_networks=(AddressRange.parse("198.18.10.0/24"),)),
        **kw,
    )  # type: ignore[arg-type]


def pol(name: str, prio: int, subj: str, app: str, action: str, mode: str = "enforce") -> Policy:
    return Policy(name, prio, (Subject.parse(subj),), app, Action(action), Mode(mode))


def test_users_with_identical_rules_share_a_class_and_disabled_users_get_none() -> None:
    d = compile_state(
        world(
            [
                pol("fin-web", 10, "group:finance", "web", "allow"),
                pol("it-ssh", 20, "group:it", "ssh", "allow"),
            ]
        ),
        NOW,
    )
    assert d.user_class["alice"] == d.user_class["carol"] != d.user_class["bob"]
    assert "eve" not in d.user_class
    assert A("198.18.10.14") not in d.mappings  # eve's IP is an unknown client
    assert len(d.classes) == 3  # finance, finance+it, unknown


def test_first_match_deny_before_allow_carves_a_hole() -> None:
    d = compile_state(
        world(
            [
                pol("no-ssh-10", 5, "group:it", "web", "deny"),
                pol("it-ssh", 20, "group:it", "ssh", "allow"),
                pol("it-web", 30, "group:it", "web", "allow"),
            ]
        ),
        NOW,
    )
    bob = A("198.18.10.12")
    assert evaluate(d, bob, A("198.18.20.10"), 6, 22) is Action.ALLOW
    assert evaluate(d, bob, A("198.18.20.10"), 6, 80) is Action.DENY
    assert evaluate(d, bob, A("198.18.20.3"), 6, 22) is Action.ALLOW
    assert evaluate(d, bob, A("198.18.20.3"), 6, 23) is Action.DENY


def test_default_allow_stores_the_deny_region() -> None:
    d = compile_state(world([pol("no-web", 1, "any-authenticated", "web", "deny")], Action.ALLOW), NOW)
    alice = A("198.18.10.11")
    assert evaluate(d, alice, A("198.18.20.10"), 6, 80) is Action.DENY
    assert evaluate(d, alice, A("198.18.20.99"), 6, 80) is Action.ALLOW
    assert all(c.match_action is Action.DENY for c in d.classes.values())


def test_staged_rule_changes_no_verdict_but_marks_the_difference() -> None:
    d = compile_state(
        world(
            [
                pol("stage-deny-web", 1, "group:finance", "web", "deny", "stage"),
                pol("fin-web", 10, "group:finance", "web", "allow"),
            ]
        ),
        NOW,
    )
    alice = A("198.18.10.11")
    assert evaluate(d, alice, A("198.18.20.10"), 6, 443) is Action.ALLOW
    cls = d.class_of_ip(alice)
    assert cls.has_staged_rules
    assert space.contains(cls.staged, 4, int(A("198.18.20.10")), 6, 443)
    assert not space.contains(cls.staged, 4, int(A("198.18.20.10")), 6, 22)


def test_unknown_subject_applies_only_to_unmapped_ips() -> None:
    d = compile_state(world([pol("guest-web", 1, "unknown", "web", "allow")]), NOW)
    assert evaluate(d, A("198.18.10.200"), A("198.18.20.10"), 6, 80) is Action.ALLOW
    assert evaluate(d, A("198.18.10.11"), A("198.18.20.10"), 6, 80) is Action.DENY


def test_expired_mapping_is_not_compiled() -> None:
    snap = world([])
    late = NOW + timedelta(hours=2)
    assert compile_state(snap, late).mappings == {}


def test_missing_application_is_a_compile_error_naming_it() -> None:
    with pytest.raises(CompileError, match="policy 'x' refers to application 'nope'"):
        compile_state(world([pol("x", 1, "any-authenticated", "nope", "allow")]), NOW)


def test_class_names_are_stable() -> None:
    assert class_name(("a", "b")) == class_name(("a", "b")) != class_name(("b", "a"))


def test_compile_is_deterministic() -> None:
    snap = world([pol("fin-web", 10, "group:finance", "web", "allow")])
    assert compile_state(snap, NOW) == compile_state(snap, NOW)


@settings(max_examples=300, deadline=None)
@given(snapshots(), st.lists(probes(), min_size=1, max_size=20), st.integers(0, 6))
def test_class_compilation_agrees_with_brute_force_simulation(snap: Snapshot, ps: list, src_i: int) -> None:
    """The equivalence at the heart of the dataplane: class-based compilation gives the
    same verdict as evaluating every rule for the concrete user (and the same staged marks)."""
    try:
        desired = compile_state(snap, NOW)
    except CompileError:
        return
    src = A(f"198.18.10.{10 + src_i}")
    for dest, proto, port in ps:
        sim = simulate(snap, src, dest, proto, port, NOW)
        got = evaluate(desired, src, dest, proto.number(dest.version), port)
        assert got is sim.action, sim.reason
        if sim.class_name is not None:
            cls = desired.class_of_ip(src)
            assert cls.name == sim.class_name
            staged_hit = space.contains(cls.staged, dest.version, int(dest), proto.number(dest.version), port)
            assert staged_hit == (sim.staged is not None), sim.reason
