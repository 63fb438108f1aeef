"""A small company in a lab: users as client addresses, applications as server ports.

Shared by the scenario tests: one Lab shape, one directory, one policy set, and a
Gateway harness that runs the real reconciler against real nftables and conntrack
inside the lab's gateway namespace.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from userseg.adapters.firewall.addresses import LocalAddresses
from userseg.adapters.firewall.conntrack import Conntrack
from userseg.adapters.firewall.nft import NftFirewall
from userseg.lab import ClientSpec, Lab, LabSpec, ServerSpec
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
from userseg.reconciler import Reconciler

ALICE, BOB, CAROL, GUEST = "198.18.10.11", "198.18.10.12", "198.18.10.13", "198.18.10.19"
DC, FIN, HR = "198.18.20.53", "198.18.20.10", "198.18.20.20"
FIN6 = "2001:db8:20::10"
ALICE6 = "2001:db8:10::11"

LAB_SPEC = LabSpec(
    clients=[ClientSpec("c1", addresses=[ALICE, BOB, CAROL, GUEST])],
    servers=[
        ServerSpec("dc", address=DC, tcp_ports=[88, 389], udp_ports=[53]),
        ServerSpec("fin", address=FIN, tcp_ports=[80, 443, 8443], udp_ports=[5000]),
        ServerSpec("hr", address=HR, tcp_ports=[80, 443]),
    ],
)


class WallClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def r(text: str) -> AddressRange:
    return AddressRange.parse(text)


def gateway_settings(lab: Lab) -> GatewaySettings:
    return GatewaySettings(
        client_interfaces=(lab.client_if,),
        infrastructure=(
            Application("dc", (r(DC),), tuple(Service.parse(s) for s in ("tcp/88", "tcp/389", "udp/53"))),
        ),
    )


APPS = {
    "fin-web": Application("fin-web", (r(FIN), r(FIN6)), (Service.parse("tcp/80,443"),)),
    "fin-admin": Application("fin-admin", (r(FIN),), (Service.parse("tcp/8443"), Service.parse("udp/5000"))),
    "hr-web": Application("hr-web", (r(HR),), (Service.parse("tcp/80,443"),)),
}
POLICIES = (
    Policy("finance-web", 10, (Subject.parse("group:finance"),), "fin-web", Action.ALLOW),
    Policy("it-fin-admin", 20, (Subject.parse("group:it"),), "fin-admin", Action.ALLOW),
    Policy("hr-web", 30, (Subject.parse("group:hr"), Subject.parse("user:alice")), "hr-web", Action.ALLOW),
)
USERS = {
    "alice": User("alice", groups=frozenset({"finance"})),
    "bob": User("bob", groups=frozenset({"hr"})),
    "carol": User("carol", groups=frozenset({"finance", "it"})),
}


def mappings(now: datetime, **who: str) -> tuple[Mapping, ...]:
    exp = now + timedelta(minutes=45)
    return tuple(
        Mapping(ipaddress.ip_address(addr), user, "test", now, now, exp) for user, addr in who.items()
    )


def snapshot(lab: Lab, now: datetime, users: dict[str, User] | None = None, **who: str) -> Snapshot:
    return Snapshot(
        users=USERS if users is None else users,
        mappings=mappings(now, **who),
        applications=APPS,
        policies=POLICIES,
        default_action=Action.DENY,
        gateway=gateway_settings(lab),
    )


def with_stage(snap: Snapshot) -> Snapshot:
    staged = Policy("stage-deny", 1, (Subject.parse("group:finance"),), "fin-web", Action.DENY, Mode.STAGE)
    return replace(snap, policies=(*snap.policies, staged))


class Gateway:
    """The real enforcer stack for a lab's gateway namespace."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.clock = WallClock()
        self.firewall = NftFirewall(netns=lab.gateway_ns)
        self.connections = Conntrack(netns=lab.gateway_ns)
        self.local = LocalAddresses(lab.gateway_ns)
        self.reconciler = Reconciler(self.firewall, self.clock, self.connections, self.local)

    def close(self) -> None:
        self.firewall.close()
        self.connections.close()
        self.local.close()

    def nft(self, *args: str) -> str:
        return self.lab.run("gateway", ["nft", *args]).stdout
