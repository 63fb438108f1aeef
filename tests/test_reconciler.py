"""The reconciler against the in-memory fake firewall and a fake connection table:
fast path, error handling, and which flows revocation cuts (and when it looks at none)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from tests.core.strategies import NOW
from tests.core.test_compile import pol, world
from tests.core.test_diff import actual_of
from userseg.adapters.firewall.fake import FakeFirewall
from userseg.core.compile import compile_state
from userseg.core.diff import diff
from userseg.core.render import render
from userseg.core.table import ActualState, AddElements, DeleteElements, MapElement
from userseg.model import (
    AddressRange,
    Application,
    GatewaySettings,
    IPAddress,
    Mapping,
    Service,
    Snapshot,
    User,
)
from userseg.ports import FirewallError, Flow
from userseg.reconciler import EVERYONE, Reconciler, affected_sources

A = ipaddress.ip_address
ALICE, BOB = A("198.18.10.11"), A("198.18.10.12")
WEB, SSH = A("198.18.20.10"), A("198.18.20.3")


class Clock:
    def now(self) -> datetime:
        return NOW


class Flows:
    """A connection table that records what the reconciler asked for."""

    def __init__(self, flows: list[Flow]) -> None:
        self.flows = flows
        self.queries: list[list[IPAddress] | None] = []

    def flows_from(self, sources: Iterable[IPAddress] | None) -> list[Flow]:
        wanted = None if sources is None else list(sources)
        self.queries.append(wanted)
        return [f for f in self.flows if wanted is None or f.saddr in wanted]

    def delete(self, flows: Iterable[Flow]) -> int:
        doomed = list(flows)
        self.flows = [f for f in self.flows if f not in doomed]
        return len(doomed)


def company(alice_groups: frozenset[str] = frozenset({"finance"})) -> Snapshot:
    snap = world(
        [
            pol("fin-web", 10, "group:finance", "web", "allow"),
            pol("it-ssh", 20, "group:it", "ssh", "allow"),
            pol("alice-ssh", 30, "user:alice", "ssh", "allow"),
        ]
    )
    return replace(snap, users={**snap.users, "alice": User("alice", groups=alice_groups)})


def test_fast_path_applies_exactly_one_element() -> None:
    fw = FakeFirewall()
    rec = Reconciler(fw, Clock())
    rec.full_sync(company())
    assert rec.set_mapping(A("198.18.10.50"), "bob", NOW + timedelta(minutes=5))
    plan = fw.plans[-1]
    assert not plan.prelude and not plan.bulk
    assert [type(op) for op in plan.main] == [AddElements] and len(plan.main[0].elements) == 1  # type: ignore[union-attr]
    assert fw.evaluate("x", "198.18.10.50", WEB, 6, 80) == "accept"  # bob is in finance
    assert diff(render(rec.desired), fw.read(), NOW).is_empty  # type: ignore[arg-type]


def test_another_user_on_an_ip_of_the_same_class_rewrites_the_comment_in_one_transaction() -> None:
    fw = FakeFirewall()
    rec = Reconciler(fw, Clock())
    rec.full_sync(company())
    carol = A("198.18.10.13")  # carol and alice share the finance class
    expiry = rec.desired.mappings[carol].expires_at  # type: ignore[union-attr]
    before = fw.transactions_run
    assert rec.set_mappings([(carol, ("alice", expiry)), (A("198.18.10.60"), ("bob", expiry))])
    assert fw.transactions_run == before + 1  # the whole batch, the swap included, is one transaction
    plan = fw.plans[-1]
    assert [type(op) for op in plan.main] == [DeleteElements, AddElements]
    users = {e.addr: e.user for e in fw.read().elements["user4"] if isinstance(e, MapElement)}
    assert users[int(carol)] == "alice" and users[int(A("198.18.10.60"))] == "bob"
    assert diff(render(rec.desired), fw.read(), NOW).is_empty  # type: ignore[arg-type]
    assert rec.set_mappings([(carol, ("alice", expiry))])  # nothing changed: nothing written
    assert fw.transactions_run == before + 1


def test_timeouts_count_from_after_the_read_back() -> None:
    """A 250k read takes seconds: timeouts reckoned from before it would outlast the
    mappings by that long, beyond the diff's tolerance, and every sync would rewrite them."""

    class SlowRead(FakeFirewall):
        def read(self) -> ActualState:
            clock.t += timedelta(seconds=30)
            return super().read()

    class StepClock:
        t = NOW

        def now(self) -> datetime:
            return self.t

    clock = StepClock()
    fw = SlowRead()
    Reconciler(fw, clock).full_sync(company())
    assert fw.plans[-1].now == NOW + timedelta(seconds=30)


def test_fast_path_declines_when_no_class_or_no_state() -> None:
    rec = Reconciler(FakeFirewall(), Clock())
    assert not rec.set_mapping(ALICE, "alice", NOW + timedelta(minutes=5))  # no full sync yet
    rec.full_sync(company())
    assert not rec.set_mapping(ALICE, "stranger", NOW + timedelta(minutes=5))  # needs a full sync


def _with(snap: Snapshot, *mapped: tuple[IPAddress, str]) -> Snapshot:
    until = NOW + timedelta(minutes=5)
    extra = tuple(Mapping(ip, user, "test", NOW, NOW, until) for ip, user in mapped)
    taken = {ip for ip, _ in mapped}  # a logon on a mapped IP replaces that mapping
    return replace(snap, mappings=(*(m for m in snap.mappings if m.ip not in taken), *extra))


def test_accounts_the_directory_does_not_know_take_the_fast_path_once_their_class_exists() -> None:
    """Logons of accounts outside the directory's scope must not cost a full sync each
    (a stream of them once kept the service in back-to-back full reconciles)."""
    fw = FakeFirewall()
    rec = Reconciler(fw, Clock())
    snap = company()
    until = NOW + timedelta(minutes=5)
    rec.full_sync(snap)
    stranger, visitor = A("198.18.10.60"), A("198.18.10.61")
    assert not rec.set_mapping(stranger, "stranger", until)  # the groupless class is not built yet
    snap = _with(snap, (stranger, "stranger"))
    rec.full_sync(snap)
    plans = len(fw.plans)
    assert rec.set_mapping(visitor, "visitor", until)  # now one element, no full sync
    assert len(fw.plans) == plans + 1 and not fw.plans[-1].prelude
    # Exactly what a full sync would have decided for the same store:
    assert diff(render(compile_state(_with(snap, (visitor, "visitor")), NOW)), fw.read(), NOW).is_empty


def test_an_account_named_by_a_policy_but_not_in_the_directory_still_needs_a_full_sync() -> None:
    rec = Reconciler(FakeFirewall(), Clock())
    snap = company()
    snap = replace(snap, users={k: v for k, v in snap.users.items() if k != "alice"})  # user:alice policy
    stranger = A("198.18.10.60")
    rec.full_sync(_with(snap, (stranger, "stranger")))  # the groupless class exists
    assert not rec.set_mapping(A("198.18.10.62"), "alice", NOW + timedelta(minutes=5))


def test_a_disabled_account_logging_on_leaves_the_ip_unknown_as_a_full_sync_would() -> None:
    fw = FakeFirewall()
    rec = Reconciler(fw, Clock())
    snap = company()  # eve is disabled in the directory
    rec.full_sync(snap)
    assert rec.set_mapping(ALICE, "eve", NOW + timedelta(minutes=5))
    assert fw.evaluate("x", str(ALICE), WEB, 6, 80) != "accept"
    assert diff(render(compile_state(_with(snap, (ALICE, "eve")), NOW)), fw.read(), NOW).is_empty


def test_failed_apply_marks_dirty_and_the_next_full_sync_repairs() -> None:
    fw = FakeFirewall()
    rec = Reconciler(fw, Clock())
    rec.full_sync(company())
    fw.fail_next()
    with pytest.raises(FirewallError):
        rec.set_mapping(A("198.18.10.50"), "bob", NOW + timedelta(minutes=5))
    assert rec.dirty
    assert not rec.set_mapping(A("198.18.10.51"), "bob", NOW + timedelta(minutes=5))
    rec.full_sync(company())
    assert not rec.dirty and diff(render(rec.desired), fw.read(), NOW).is_empty  # type: ignore[arg-type]


def test_group_removal_cuts_only_the_forbidden_flow_of_that_user() -> None:
    flows = Flows([Flow(ALICE, WEB, 6, 443), Flow(ALICE, SSH, 6, 22), Flow(BOB, SSH, 6, 22)])
    rec = Reconciler(FakeFirewall(), Clock(), flows)
    rec.full_sync(company())
    flows.queries.clear()
    report = rec.full_sync(company(alice_groups=frozenset()))
    assert report.flows_cut == 1
    assert flows.flows == [Flow(ALICE, SSH, 6, 22), Flow(BOB, SSH, 6, 22)]
    assert flows.queries == [[ALICE]]  # only alice's flows were examined


def test_restart_with_kernel_in_step_touches_no_flow() -> None:
    fw = FakeFirewall()
    flows = Flows([Flow(ALICE, WEB, 6, 443)])
    Reconciler(fw, Clock(), flows).full_sync(company())
    flows.queries.clear()
    report = Reconciler(fw, Clock(), flows).full_sync(company())  # a new process: same desired state
    assert report.plan.is_empty and not report.applied
    assert flows.queries == []


def test_flows_to_the_gateway_itself_are_never_cut() -> None:
    gw = A("198.18.10.1")
    flows = Flows([Flow(ALICE, gw, 6, 22), Flow(ALICE, WEB, 6, 443)])
    rec = Reconciler(FakeFirewall(), Clock(), flows, local_addresses=lambda: {gw})
    rec.full_sync(company())
    assert rec.remove_mapping(ALICE)
    assert flows.flows == [Flow(ALICE, gw, 6, 22)]


def test_affected_sources() -> None:
    base = company()
    before = render(compile_state(base, NOW))
    actual = actual_of(before)
    # a policy now grants less: the class's users are affected, nobody else
    narrower = replace(base, policies=tuple(p for p in base.policies if p.name != "alice-ssh"))
    desired = compile_state(narrower, NOW)
    assert affected_sources(diff(render(desired), actual, NOW), desired) == {ALICE}
    # the infrastructure shrinks: everyone
    infra = replace(
        base,
        gateway=GatewaySettings(
            infrastructure=(
                Application("dc", (AddressRange.parse("198.18.20.53"),), (Service.parse("udp/53"),)),
            )
        ),
    )
    with_infra = render(compile_state(infra, NOW))
    desired = compile_state(base, NOW)
    assert affected_sources(diff(render(desired), actual_of(with_infra), NOW), desired) is EVERYONE
