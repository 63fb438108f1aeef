"""Traffic probes against a real gateway namespace, with throw-away nft rules in the gateway.

The rules live in a table of the tests' own (`inet labtest`) inside the lab's gateway
namespace, and each test deletes it again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest

from tests.lab_fixtures import MakeLab
from userseg.lab import (
    ClientSpec,
    ContinuousTraffic,
    Lab,
    LabSpec,
    LongConnection,
    Probe,
    ServerSpec,
    Target,
    probe_many,
    probe_tcp,
    probe_udp,
)

pytestmark = pytest.mark.netns

MANY = list(range(8000, 8200))
SPEC = LabSpec(
    clients=[ClientSpec("c1", ["198.18.10.11", "198.18.10.12"]), ClientSpec("c2")],
    servers=[
        ServerSpec("s1", tcp_ports=[80, 81, 82, 443], udp_ports=[53, 54, 55]),
        ServerSpec("s2", tcp_ports=MANY, udp_ports=MANY),
    ],
)
TABLE = "labtest"


@pytest.fixture(scope="module")
def lab(make_module_lab: MakeLab) -> Lab:
    return make_module_lab(SPEC)


@contextmanager
def gateway_rules(lab: Lab, rules: Sequence[str]) -> Iterator[None]:
    """A forward chain in our own throw-away table in the gateway namespace."""
    body = "\n".join(["type filter hook forward priority 0; policy accept;", *rules])
    lab.run("gateway", ["nft", "-f", "-"], input=f"table inet {TABLE} {{\nchain fw {{\n{body}\n}}\n}}\n")
    try:
        yield
    finally:
        lab.run("gateway", ["nft", "delete", "table", "inet", TABLE])


def add_rule(lab: Lab, rule: str) -> None:
    lab.run("gateway", ["nft", "add", "rule", "inet", TABLE, "fw", *rule.split()])


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_probe_tcp_tells_open_refused_timeout(lab: Lab, v6: bool) -> None:
    c1, s1 = lab.clients["c1"], lab.servers["s1"]
    src, dst = (c1.addresses6[0], s1.address6) if v6 else (c1.addresses[0], s1.address)
    assert dst is not None
    # iifname lab.client_if is how the firewall tells client traffic: prove it matches
    reject = f"iifname {lab.client_if} tcp dport 81 reject with tcp reset"
    with gateway_rules(lab, [reject, "tcp dport 82 drop"]):
        assert probe_tcp(lab, "c1", src, dst, 80) == "open"
        started = time.monotonic()
        assert probe_tcp(lab, "c1", src, dst, 81) == "refused"  # the server listens: the reset is ours
        assert time.monotonic() - started < 0.2, "a reset must come back at once"
        started = time.monotonic()
        assert probe_tcp(lab, "c1", src, dst, 82, timeout=0.3) == "timeout"
        assert 0.3 <= time.monotonic() - started < 0.6
    assert probe_tcp(lab, "c1", src, dst, 82) == "open"
    assert probe_tcp(lab, "c1", src, dst, 8) == "refused"  # closed port: the server's own RST


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_probe_udp_tells_open_refused_timeout(lab: Lab, v6: bool) -> None:
    c1, s1 = lab.clients["c1"], lab.servers["s1"]
    src, dst = (c1.addresses6[1], s1.address6) if v6 else (c1.addresses[1], s1.address)
    assert dst is not None
    with gateway_rules(lab, ["udp dport 54 reject", "udp dport 55 drop"]):
        assert probe_udp(lab, "c1", src, dst, 53) == "open"
        assert probe_udp(lab, "c1", src, dst, 54) == "refused"  # ICMP unreachable from the gateway
        assert probe_udp(lab, "c1", src, dst, 55, timeout=0.3) == "timeout"
    assert probe_udp(lab, "c1", src, dst, 56) == "refused"  # closed port: the server's ICMP


def test_source_address_selects_the_user(lab: Lab) -> None:
    """One client namespace speaks as two users; the firewall sees each source apart."""
    a, b = lab.clients["c1"].addresses
    with gateway_rules(lab, [f"ip saddr {b} tcp dport 443 reject with tcp reset"]):
        assert probe_tcp(lab, "c1", a, "198.18.20.10", 443) == "open"
        assert probe_tcp(lab, "c1", b, "198.18.20.10", 443) == "refused"


def test_binding_a_foreign_source_is_a_clear_error(lab: Lab) -> None:
    with pytest.raises(OSError, match=r"cannot bind 198\.18\.10\.99 in c1"):
        probe_tcp(lab, "c1", "198.18.10.99", "198.18.20.10", 80)


def test_probe_many_is_fast_and_ordered(lab: Lab) -> None:
    src = lab.clients["c2"].addresses[0]
    s2 = lab.servers["s2"].address
    probes = [Probe("c2", src, s2, p) for p in MANY]  # 200 open
    probes += [Probe("c2", src, s2, p, "udp") for p in MANY[:50]]  # 50 UDP echoes
    probes += [Probe("c2", src, s2, p) for p in range(9000, 9050)]  # 50 closed: refused
    started = time.monotonic()
    results = probe_many(lab, probes)
    elapsed = time.monotonic() - started
    assert results == ["open"] * 250 + ["refused"] * 50
    assert elapsed < 3.0, f"300 probes took {elapsed:.2f}s"


def test_long_connection_dies_on_revocation_while_another_survives(lab: Lab) -> None:
    """Drop rule alone spares established flows; the conntrack flush then kills the victim fast."""
    user, other = lab.clients["c1"].addresses
    with gateway_rules(lab, ["ct state established,related accept"]):
        victim = LongConnection(lab, "c1", user, "198.18.20.10", 443)
        survivor = LongConnection(lab, "c1", other, "198.18.20.10", 443)
        try:
            assert victim.wait_pings(3, timeout=2) and survivor.wait_pings(3, timeout=2)
            add_rule(lab, f"ip saddr {user} tcp dport 443 drop")
            assert victim.wait_pings(5, timeout=2), "established flow must survive the new rule"
            revoked = time.monotonic()
            lab.run("gateway", ["conntrack", "-F"])
            died = victim.wait_dead(timeout=1.0 + victim.dead_after, since=revoked)
            assert died is not None and died < 1.0, f"victim died after {died}"
            assert not victim.alive()
            assert survivor.wait_pings(5, timeout=2) and survivor.alive()
        finally:
            victim.close()
            survivor.close()


def test_continuous_traffic_counts(lab: Lab) -> None:
    src = lab.clients["c2"].addresses[0]
    targets = [Target("198.18.20.10", 80), Target("198.18.20.10", 8), Target("198.18.20.10", 53, "udp")]
    with gateway_rules(lab, []):
        traffic = ContinuousTraffic(lab, "c2", src, targets, rate=300.0).start()
        assert traffic.wait_for(lambda s: s.total() >= 150, timeout=5)
        stats = traffic.stop()
    ok, closed, udp = (stats.per_target[t] for t in targets)
    assert stats.total() >= 150
    assert ok.attempts == ok.open and ok.refused == ok.timeout == 0
    assert closed.attempts == closed.refused and closed.open == closed.timeout == 0
    assert udp.attempts == udp.open
    assert len(closed.failures) == closed.refused
    assert abs(ok.attempts - closed.attempts) <= 1  # round-robin
    assert stats.total() <= 300 * stats.duration * 1.1 + 3  # the rate is honoured


def test_continuous_traffic_sees_a_blackout(lab: Lab) -> None:
    src = lab.clients["c2"].addresses[0]
    target = Target("198.18.20.10", 80)
    traffic = ContinuousTraffic(lab, "c2", src, [target], rate=200.0, timeout=0.3).start()
    try:
        assert traffic.wait_for(lambda s: s.total("open") >= 20, timeout=5)
        with gateway_rules(lab, ["tcp dport 80 drop"]):
            assert traffic.wait_for(lambda s: s.total("timeout") >= 5, timeout=5)
        stats = traffic.stop()
    finally:
        traffic.close()
    assert stats.per_target[target].timeout >= 5
    assert all(result == "timeout" for _, result in stats.per_target[target].failures)
