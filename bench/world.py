"""Synthetic but realistic worlds for the benchmarks.

Addresses: clients in 198.18.0.0/15 first, then 2001:db8::/32 (documentation
space) once the /15 is used up; applications in 2001:db8:ffff::/48 and the
top of the /15.  Nothing here sends traffic; it only fills kernel sets.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

from userseg.model import (
    Action,
    AddressRange,
    Application,
    GatewaySettings,
    Mapping,
    Policy,
    Service,
    Snapshot,
    Subject,
    SubjectKind,
    User,
)

# The real time, not a fixed date: the kernel counts element timeouts from the
# moment of the apply, and reading back compares against the wall clock.
NOW = datetime.now(UTC).replace(microsecond=0)
V4_BASE = int(ipaddress.IPv4Address("198.18.0.0"))
V4_CLIENTS = 120_000  # below the /15's 131,072 addresses, leaving room for servers
V6_BASE = int(ipaddress.IPv6Address("2001:db8:10::"))


def client_ip(i: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if i < V4_CLIENTS:
        return ipaddress.IPv4Address(V4_BASE + 256 + i)
    return ipaddress.IPv6Address(V6_BASE + i)


def client_index(ip: str) -> int:
    """The mapping index i whose client_ip(i) is this IPv4 address (inverse of client_ip)."""
    return int(ipaddress.IPv4Address(ip)) - V4_BASE - 256


def world(
    users: int,
    mappings: int,
    classes: int,
    apps: int,
    policies: int | None = None,
    ttl: timedelta = timedelta(minutes=45),
    logins: bool = False,
) -> Snapshot:
    """`classes` groups, user i in group i % classes; policy j grants group j % classes app j % apps.

    Mapping i binds client_ip(i) to user i % users and expires `ttl` after NOW.  With
    `logins`, each mapping looks like one the ingest pipeline made from a Samba logon: its
    own times within the last 45 minutes and the provenance such an event leaves (~12
    keys, ~400 bytes of JSON), which is what reading a real store has to decode.
    """
    policies = policies if policies is not None else max(classes, apps)
    app_objs = {}
    for j in range(apps):
        dest = ipaddress.IPv4Address(int(ipaddress.IPv4Address("198.19.240.0")) + j % 4000)
        app_objs[f"app{j}"] = Application(
            f"app{j}",
            (
                AddressRange.of(dest),
                AddressRange.of(ipaddress.IPv6Address(int(ipaddress.IPv6Address("2001:db8:ffff::")) + j)),
            ),
            (Service.parse(f"tcp/{1000 + j % 5000}"), Service.parse("udp/53")),
        )
    pols = tuple(
        Policy(f"p{j}", j, (Subject(SubjectKind.GROUP, f"g{j % classes}"),), f"app{j % apps}", Action.ALLOW)
        for j in range(policies)
    )
    user_objs = {f"u{i}": User(f"u{i}", groups=frozenset({f"g{i % classes}"})) for i in range(users)}
    exp = NOW + ttl
    if logins:
        maps = tuple(login_mapping(i, f"u{i % users}", ttl) for i in range(mappings))
    else:
        maps = tuple(Mapping(client_ip(i), f"u{i % users}", "bench", NOW, NOW, exp) for i in range(mappings))
    gw = GatewaySettings(
        client_interfaces=("veth-clients",),
        client_networks=(AddressRange.parse("198.18.0.0/16"),),
        infrastructure=(
            Application(
                "dc",
                (AddressRange.parse("198.19.0.10"),),
                tuple(
                    Service.parse(s) for s in ("tcp/53", "udp/53", "tcp/88", "udp/88", "tcp/389", "tcp/445")
                ),
            ),
        ),
    )
    return Snapshot(user_objs, maps, app_objs, pols, Action.DENY, gw)


def login_mapping(i: int, user: str, ttl: timedelta) -> Mapping:
    """Mapping i as the pipeline stores a Samba Kerberos logon (provenance as core.ingest writes it)."""
    last = NOW - timedelta(seconds=i % 2700, microseconds=i * 7919 % 1_000_000)
    first = last - timedelta(seconds=i % 3 * 600)  # a third never refreshed (first == last)
    provenance = {
        "source": "samba",
        "time": last.isoformat(),
        "kind": "logon",
        "event_id": "4624",
        "logon_type": "3",
        "domain": "LAB",
        "logon_id": f"{i:016x}",
        "service": "Kerberos KDC",
        "auth": "ENC-TS Pre-authentication",
        "password_type": "aes256-cts-hmac-sha1-96",
        "status": "NT_STATUS_OK",
        "timestamp": last.strftime("%Y-%m-%dT%H:%M:%S.%f+0000"),
    }
    return Mapping(client_ip(i), user, "samba", first, last, last + ttl, provenance)
