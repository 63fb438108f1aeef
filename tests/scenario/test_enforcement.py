"""Real packets through the gateway namespace: what a mapped user and an unknown client
can actually reach, and that refusals are immediate."""

from __future__ import annotations

import time

import pytest

from tests.scenario.world import ALICE, ALICE6, BOB, DC, FIN, FIN6, GUEST, HR, Gateway, snapshot, with_stage
from userseg.lab import Lab, Probe, probe_many, probe_tcp, probe_udp

pytestmark = pytest.mark.netns


def test_mapped_user_reaches_allowed_ports_and_is_refused_at_once_elsewhere(
    lab: Lab, gateway: Gateway
) -> None:
    gateway.reconciler.full_sync(snapshot(lab, gateway.clock.now(), alice=ALICE))
    assert probe_tcp(lab, "c1", ALICE, FIN, 443) == "open"
    assert probe_tcp(lab, "c1", ALICE, FIN, 80) == "open"
    assert probe_tcp(lab, "c1", ALICE, HR, 443) == "open"  # user:alice on hr-web
    start = time.monotonic()
    assert probe_tcp(lab, "c1", ALICE, FIN, 8443, timeout=3.0) == "refused"
    assert time.monotonic() - start < 0.5, "a denied TCP connection must be reset, not time out"
    assert probe_udp(lab, "c1", ALICE, FIN, 5000) == "refused"  # ICMP admin-prohibited
    assert probe_tcp(lab, "c1", ALICE, DC, 88) == "open"


def test_ipv6_mapping_is_enforced_too(lab: Lab, gateway: Gateway) -> None:
    gateway.reconciler.full_sync(snapshot(lab, gateway.clock.now(), alice=ALICE6))
    assert probe_tcp(lab, "c1", ALICE6, FIN6, 443) == "open"
    assert probe_tcp(lab, "c1", ALICE6, FIN6, 8443) == "refused"
    assert probe_tcp(lab, "c1", ALICE, FIN, 443) == "refused"  # her IPv4 is not mapped


def test_unmapped_client_reaches_only_infrastructure(lab: Lab, gateway: Gateway) -> None:
    gateway.reconciler.full_sync(snapshot(lab, gateway.clock.now(), alice=ALICE))
    results = probe_many(
        lab,
        [
            Probe("c1", GUEST, DC, 88),
            Probe("c1", GUEST, DC, 389),
            Probe("c1", GUEST, DC, 53, "udp"),
            Probe("c1", GUEST, FIN, 443),
            Probe("c1", GUEST, HR, 80),
            Probe("c1", BOB, FIN, 80),
        ],
    )
    assert results == ["open", "open", "open", "refused", "refused", "refused"]


def test_mapping_fast_path_is_one_element_and_takes_effect(lab: Lab, gateway: Gateway) -> None:
    rec = gateway.reconciler
    now = gateway.clock.now()
    rec.full_sync(snapshot(lab, now, alice=ALICE))
    assert probe_tcp(lab, "c1", BOB, HR, 443) == "refused"
    import ipaddress
    from datetime import timedelta

    assert rec.set_mapping(ipaddress.ip_address(BOB), "bob", now + timedelta(minutes=5))
    assert probe_tcp(lab, "c1", BOB, HR, 443) == "open"
    out = gateway.nft("list", "map", "inet", "userseg", "user4")
    assert BOB in out and "expires" in out  # kernel-side timeout: the dead-man switch
    assert rec.remove_mapping(ipaddress.ip_address(BOB))
    assert probe_tcp(lab, "c1", BOB, HR, 443) == "refused"


def test_staged_rule_logs_but_changes_no_verdict(lab: Lab, gateway: Gateway) -> None:
    gateway.reconciler.full_sync(with_stage(snapshot(lab, gateway.clock.now(), alice=ALICE)))
    assert probe_tcp(lab, "c1", ALICE, FIN, 443) == "open"
    ruleset = gateway.nft("list", "table", "inet", "userseg")
    assert 'prefix "userseg:stage' in ruleset


def test_other_tables_and_hooks_are_untouched(lab: Lab, gateway: Gateway) -> None:
    lab.run(
        "gateway",
        [
            "nft",
            "add table inet bystander; add chain inet bystander c { type filter hook "
            "forward priority 10; policy accept; }; add rule inet bystander c counter",
        ],
    )
    try:
        before = gateway.nft("list", "table", "inet", "bystander").replace("packets", "").split("counter")[0]
        gateway.reconciler.full_sync(snapshot(lab, gateway.clock.now(), alice=ALICE))
        gateway.reconciler.full_sync(snapshot(lab, gateway.clock.now(), bob=BOB))
        after = gateway.nft("list", "table", "inet", "bystander").replace("packets", "").split("counter")[0]
        assert before == after
        assert probe_tcp(lab, "c1", BOB, HR, 80) == "open"
    finally:
        lab.run("gateway", ["nft", "delete", "table", "inet", "bystander"], check=False)


def test_drop_mode_times_out_instead_of_refusing(lab: Lab, gateway: Gateway) -> None:
    from dataclasses import replace

    from userseg.model import DenyMode

    snap = snapshot(lab, gateway.clock.now(), alice=ALICE)
    snap = replace(snap, gateway=replace(snap.gateway, deny_mode=DenyMode.DROP))
    gateway.reconciler.full_sync(snap)
    assert probe_tcp(lab, "c1", ALICE, FIN, 443) == "open"
    assert probe_tcp(lab, "c1", ALICE, FIN, 8443, timeout=0.5) == "timeout"  # listening, but dropped
