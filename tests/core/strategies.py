"""Hypothesis strategies for small but adversarial policy worlds.

Addresses and ports are drawn from tiny ranges so that random applications
overlap often: overlap is where first-match and box subtraction can go wrong.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from userseg.model import (
    Action,
    AddressRange,
    Application,
    GatewaySettings,
    Mapping,
    Mode,
    Policy,
    PortRange,
    Proto,
    Service,
    Snapshot,
    Subject,
    SubjectKind,
    User,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
BASE4 = int(ipaddress.IPv4Address("198.18.20.0"))
BASE6 = int(ipaddress.IPv6Address("2001:db8:20::"))
GROUPS = ["finance", "hr", "it", "sales"]
USERS = ["alice", "bob", "carol", "dave", "erin"]


@st.composite
def address_ranges(draw: st.DrawFn) -> AddressRange:
    v6 = draw(st.booleans()) if draw(st.integers(0, 4)) == 0 else False
    base = BASE6 if v6 else BASE4
    a = draw(st.integers(0, 15))
    b = draw(st.integers(a, min(15, a + draw(st.integers(0, 6)))))
    return AddressRange(6 if v6 else 4, base + a, base + b)


@st.composite
def services(draw: st.DrawFn) -> Service:
    proto = draw(st.sampled_from(list(Proto)))
    if proto is Proto.ICMP:
        return Service(proto)
    ranges = []
    for _ in range(draw(st.integers(0, 3))):
        a = draw(st.integers(1, 30))
        ranges.append(PortRange(a, draw(st.integers(a, 30))))
    return Service(proto, tuple(ranges))


@st.composite
def applications(draw: st.DrawFn, name: str) -> Application:
    return Application(
        name=name,
        destinations=tuple(draw(st.lists(address_ranges(), min_size=1, max_size=3))),
        services=tuple(draw(st.lists(services(), min_size=1, max_size=3))),
    )


subjects = st.one_of(
    st.sampled_from(GROUPS).map(lambda g: Subject(SubjectKind.GROUP, g)),
    st.sampled_from(USERS).map(lambda u: Subject(SubjectKind.USER, u)),
    st.just(Subject(SubjectKind.ANY_AUTHENTICATED)),
    st.just(Subject(SubjectKind.UNKNOWN)),
)


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    app_names = [f"app{i}" for i in range(draw(st.integers(1, 5)))]
    apps = {n: draw(applications(n)) for n in app_names}
    policies = tuple(
        Policy(
            name=f"p{i}",
            priority=draw(st.integers(0, 5)),
            subjects=tuple(draw(st.lists(subjects, min_size=1, max_size=2))),
            application=draw(st.sampled_from(app_names)),
            action=draw(st.sampled_from(list(Action))),
            mode=draw(st.sampled_from([Mode.ENFORCE, Mode.ENFORCE, Mode.STAGE])),
            enabled=draw(st.integers(0, 5)) > 0,
        )
        for i in range(draw(st.integers(0, 8)))
    )
    users = {
        u: User(
            u,
            disabled=draw(st.integers(0, 6)) == 0,
            groups=frozenset(draw(st.lists(st.sampled_from(GROUPS), max_size=3))),
        )
        for u in USERS
        if draw(st.booleans()) or u == "alice"
    }
    mappings = tuple(
        Mapping(
            ip=ipaddress.IPv4Address(f"198.18.10.{10 + i}"),
            user=u,
            source="test",
            first_seen=NOW - timedelta(minutes=5),
            last_seen=NOW - timedelta(minutes=1),
            expires_at=NOW + timedelta(seconds=draw(st.sampled_from([-10, 60, 3600]))),
        )
        for i, u in enumerate([*USERS, "zed"])  # zed is logged on but not in the directory
    )
    infra = tuple(draw(st.lists(applications("infra"), max_size=1)))
    return Snapshot(
        users=users,
        mappings=mappings,
        applications=apps,
        policies=policies,
        default_action=draw(st.sampled_from(list(Action))),
        gateway=GatewaySettings(
            client_networks=(AddressRange.parse("198.18.10.0/24"),), infrastructure=infra
        ),
    )


@st.composite
def probes(draw: st.DrawFn) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, Proto, int]:
    v6 = draw(st.integers(0, 4)) == 0
    base = BASE6 if v6 else BASE4
    dest = (
        ipaddress.ip_address(base + draw(st.integers(0, 17)))
        if not v6
        else ipaddress.IPv6Address(base + draw(st.integers(0, 17)))
    )
    proto = draw(st.sampled_from(list(Proto)))
    port = 0 if proto is Proto.ICMP else draw(st.integers(0, 32))
    return dest, proto, port
