"""simulate() and real connection attempts through the gateway must agree, probe for probe.

A seeded random company (users, nested-looking group sets, ordered allow/deny and
staged policies over overlapping applications) is compiled into the kernel, then
hundreds of random (source, destination, port, protocol) probes are sent for real.
"""

from __future__ import annotations

import ipaddress
import random
from datetime import UTC, datetime, timedelta

import pytest

from tests.lab_fixtures import MakeLab
from userseg.adapters.firewall.nft import NftFirewall
from userseg.core.simulate import simulate
from userseg.lab import ClientSpec, Lab, LabSpec, Probe, ServerSpec, probe_many
from userseg.model import (
    Action,
    AddressRange,
    Application,
    GatewaySettings,
    Mapping,
    Mode,
    Policy,
    Proto,
    Service,
    Snapshot,
    Subject,
    User,
)
from userseg.reconciler import Reconciler

pytestmark = pytest.mark.netns

SOURCES = [f"198.18.10.{i}" for i in range(11, 35)]  # 24 clients: 18 mapped, 6 unknown
SERVERS = {"s1": "198.18.20.11", "s2": "198.18.20.12", "s3": "198.18.20.13"}
TCP = [22, 80, 443, 3389, 8000, 8001, 8080, 9000]
UDP = [53, 500, 5000]
GROUPS = ["finance", "hr", "it", "sales", "ops"]


class Clock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def random_world(rng: random.Random, client_if: str, default: Action, now: datetime) -> Snapshot:
    apps = {}
    for i in range(6):
        dests = rng.sample(list(SERVERS.values()), rng.randint(1, 2))
        if rng.random() < 0.3:
            dests = ["198.18.20.8/29"]  # covers all three servers
        services = []
        for _ in range(rng.randint(1, 2)):
            if rng.random() < 0.7:
                lo = rng.choice(TCP)
                hi = rng.choice([p for p in TCP if p >= lo])
                services.append(Service.parse(f"tcp/{lo}-{hi}" if rng.random() < 0.4 else f"tcp/{lo}"))
            else:
                services.append(Service.parse(f"udp/{rng.choice(UDP)}"))
        apps[f"a{i}"] = Application(f"a{i}", tuple(AddressRange.parse(d) for d in dests), tuple(services))
    subjects = [f"group:{g}" for g in GROUPS] + ["any-authenticated", "unknown", "user:u3", "user:u7"]
    policies = tuple(
        Policy(
            f"p{i}",
            rng.randint(0, 50),
            tuple(Subject.parse(s) for s in rng.sample(subjects, rng.randint(1, 2))),
            rng.choice(list(apps)),
            rng.choice([Action.ALLOW, Action.ALLOW, Action.DENY]),
            Mode.STAGE if rng.random() < 0.15 else Mode.ENFORCE,
            rng.random() > 0.1,
        )
        for i in range(14)
    )
    users = {
        f"u{i}": User(
            f"u{i}", disabled=rng.random() < 0.08, groups=frozenset(rng.sample(GROUPS, rng.randint(0, 3)))
        )
        for i in range(16)
    }
    exp = now + timedelta(minutes=30)
    maps = tuple(
        Mapping(ipaddress.ip_address(SOURCES[i]), f"u{i}" if i < 16 else "newcomer", "test", now, now, exp)
        for i in range(18)
    )
    infra = (Application("dc", (AddressRange.parse(SERVERS["s3"]),), (Service.parse("udp/53"),)),)
    return Snapshot(
        users,
        maps,
        apps,
        policies,
        default,
        GatewaySettings(client_interfaces=(client_if,), infrastructure=infra),
    )


@pytest.fixture(scope="module")
def lab(make_module_lab: MakeLab) -> Lab:
    return make_module_lab(
        LabSpec(
            clients=[ClientSpec("c1", addresses=SOURCES)],
            servers=[ServerSpec(n, address=a, tcp_ports=TCP, udp_ports=UDP) for n, a in SERVERS.items()],
            ipv6=False,
        )
    )


@pytest.mark.parametrize(("seed", "default"), [(1, Action.DENY), (2, Action.DENY), (3, Action.ALLOW)])
def test_simulate_and_kernel_agree(lab: Lab, seed: int, default: Action) -> None:
    rng = random.Random(seed)
    fw = NftFirewall(netns=lab.gateway_ns)
    try:
        rec = Reconciler(fw, Clock())
        now = Clock().now()
        snap = random_world(rng, lab.client_if, default, now)
        rec.full_sync(snap)
        probes = []
        for _ in range(200):
            proto = "udp" if rng.random() < 0.25 else "tcp"
            probes.append(
                Probe(
                    "c1",
                    rng.choice(SOURCES),
                    rng.choice(list(SERVERS.values())),
                    rng.choice(UDP if proto == "udp" else TCP),
                    proto,
                    timeout=1.5,
                )
            )
        results = probe_many(lab, probes, parallelism=48)
        mismatches = []
        allowed = 0
        for p, got in zip(probes, results, strict=True):
            sim = simulate(
                snap,
                ipaddress.ip_address(p.src_ip),
                ipaddress.ip_address(p.dst_ip),
                Proto(p.proto),
                p.port,
                now,
            )
            want = "open" if sim.action is Action.ALLOW else "refused"
            allowed += want == "open"
            if got != want:
                mismatches.append(
                    f"{p.src_ip} -> {p.dst_ip}:{p.port}/{p.proto}: kernel {got}, "
                    f"simulate {sim.action.value} ({sim.reason})"
                )
        assert not mismatches, "\n".join(mismatches[:10])
        assert 10 < allowed < len(probes) - 10, "the random world must exercise both verdicts"
    finally:
        fw.close()
        lab.run("gateway", ["nft", "delete", "table", "inet", "userseg"], check=False)
