"""Revocation cuts live connections to now-forbidden destinations within 1 s,
while connections that are still allowed survive."""

from __future__ import annotations

import ipaddress
import time

import pytest

from tests.scenario.world import ALICE, DC, FIN, HR, USERS, Gateway, snapshot
from userseg.lab import Lab, LongConnection
from userseg.model import User

pytestmark = pytest.mark.netns


def test_group_removal_kills_the_forbidden_flow_and_keeps_the_allowed_one(lab: Lab, gateway: Gateway) -> None:
    rec = gateway.reconciler
    rec.full_sync(snapshot(lab, gateway.clock.now(), alice=ALICE))
    fin = LongConnection(lab, "c1", ALICE, FIN, 443)
    hr = LongConnection(lab, "c1", ALICE, HR, 80)  # allowed to alice by name, not by group
    assert fin.wait_pings(3, 2.0) and hr.wait_pings(3, 2.0)

    users = {**USERS, "alice": User("alice", groups=frozenset())}  # removed from finance in AD
    start = time.monotonic()
    report = rec.full_sync(snapshot(lab, gateway.clock.now(), users=users, alice=ALICE))
    died = fin.wait_dead(2.0, since=start)
    assert died is not None and died <= 1.0, f"finance connection survived revocation ({died})"
    assert report.flows_cut >= 1
    assert hr.wait_pings(10, 3.0), "the still-allowed connection must survive"
    fin.close()
    hr.close()


def test_logoff_kills_app_flows_but_not_infrastructure(lab: Lab, gateway: Gateway) -> None:
    rec = gateway.reconciler
    rec.full_sync(snapshot(lab, gateway.clock.now(), alice=ALICE))
    app = LongConnection(lab, "c1", ALICE, FIN, 80)
    dc = LongConnection(lab, "c1", ALICE, DC, 389)
    assert app.wait_pings(3, 2.0) and dc.wait_pings(3, 2.0)
    start = time.monotonic()
    assert rec.remove_mapping(ipaddress.ip_address(ALICE))  # fast path: one element
    died = app.wait_dead(2.0, since=start)
    assert died is not None and died <= 1.0
    assert dc.wait_pings(10, 3.0)
    app.close()
    dc.close()


def test_disabled_account_loses_access_and_connections(lab: Lab, gateway: Gateway) -> None:
    rec = gateway.reconciler
    rec.full_sync(snapshot(lab, gateway.clock.now(), alice=ALICE))
    conn = LongConnection(lab, "c1", ALICE, HR, 443)
    assert conn.wait_pings(3, 2.0)
    users = {**USERS, "alice": User("alice", disabled=True, groups=frozenset({"finance"}))}
    start = time.monotonic()
    rec.full_sync(snapshot(lab, gateway.clock.now(), users=users, alice=ALICE))
    died = conn.wait_dead(2.0, since=start)
    assert died is not None and died <= 1.0
    conn.close()
