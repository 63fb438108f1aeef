"""Shared helpers for the firewall adapter tests: namespaces, a realistic table, state comparison.

Kept here (not in a conftest) because the contract, fake and conntrack tests
all build the same realistic table and namespaces.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import pytest

from userseg.core.table import (
    Accept,
    AcceptEstablished,
    AcceptIfDestIn,
    ActualState,
    BaseHook,
    Box,
    ChainSpec,
    Deny,
    Goto,
    GotoIfDestIn,
    JumpIfIifname,
    JumpIfSaddrIn,
    LogIfDestIn,
    MapElement,
    SetKind,
    SetSpec,
    TableSpec,
    VmapSaddr,
)
from userseg.model import AddressRange, DenyMode

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")


def run(*argv: str, input: str | None = None) -> str:
    """Run a command (argv list, never a shell); fail with its stderr."""
    res = subprocess.run(list(argv), input=input, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


@contextmanager
def new_netns() -> Iterator[str]:
    """A fresh, uniquely named namespace (prefix usfw) with lo up; always deleted."""
    name = "usfw" + secrets.token_hex(4)
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


def a4(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def a6(text: str) -> int:
    return int(ipaddress.IPv6Address(text))


def net(text: str) -> AddressRange:
    return AddressRange.parse(text)


def box(text: str, proto: int, ports: tuple[int, int] = (0, 65535)) -> Box:
    r = AddressRange.parse(text)
    return Box(r.version, r.first, r.last, proto, ports[0], ports[1])


def _sets(*specs: tuple[str, SetKind]) -> dict[str, SetSpec]:
    return {name: SetSpec(name, kind) for name, kind in specs}


def realistic_spec(now: datetime, variant: str = "a", users: int = 6) -> TableSpec:
    """A table shaped like core.render's: forward -> police -> per-class chains -> deny.

    variant "a" is the baseline; "b" changes nearly every kind of object
    (drops a class, its set and chain, retargets and replaces users, puts
    another user on an IP in the same class, edits client networks and
    interfaces, and switches the deny mode).  Map elements name their users
    (element comments), one of them with quotes and non-ASCII letters.
    """
    exp = now + timedelta(minutes=45)
    sets = _sets(
        ("clients_if", SetKind.IFNAME),
        ("clients4", SetKind.NET4),
        ("clients6", SetKind.NET6),
        ("infra4", SetKind.DEST4),
        ("infra6", SetKind.DEST6),
        ("user4", SetKind.VMAP4),
        ("user6", SetKind.VMAP6),
        ("c_fin_4", SetKind.DEST4),
        ("c_fin_6", SetKind.DEST6),
        ("c_eng_4", SetKind.DEST4),
    )
    users4 = {a4(f"198.18.0.{10 + i}"): ("c_fin" if i % 2 == 0 else "c_eng") for i in range(users)}
    elements: dict[str, frozenset[object]] = {
        "clients_if": frozenset({"veth-c1", "veth-c2"}),
        "clients4": frozenset({net("198.18.0.0/24"), net("198.18.7.1-198.18.7.9")}),
        "clients6": frozenset({net("2001:db8:1::/48")}),
        "infra4": frozenset(
            {
                box("198.19.0.10", 6, (88, 88)),
                box("198.19.0.10", 17, (53, 53)),
                box("198.19.0.10", 6, (389, 389)),
                box("198.19.0.10", 6, (3268, 3269)),
            }
        ),
        "infra6": frozenset({box("2001:db8:ff::10", 6, (88, 88))}),
        "c_fin_4": frozenset(
            {box("198.19.1.0/24", 6, (443, 443)), box("198.19.1.10-198.19.1.20", 17, (1000, 2000))}
        ),
        "c_fin_6": frozenset({box("2001:db8:f1::/64", 6, (443, 443)), box("2001:db8:f1::/64", 58)}),
        "c_eng_4": frozenset({box("198.19.2.0/24", 6, (22, 22)), box("198.19.2.0/24", 1)}),
    }
    user6 = {a6("2001:db8:1::10"): "c_fin"}
    names = {addr: f"user{i}" for i, addr in enumerate(users4)}
    names[a4("198.18.0.11")] = 'o\'brien "zoë"'
    names[a6("2001:db8:1::10")] = "ann"
    deny = Deny(DenyMode.REJECT, "userseg:deny ", 100, 50)
    chains = {
        "forward": ChainSpec(
            "forward",
            (
                JumpIfIifname("clients_if", "police"),
                JumpIfSaddrIn(4, "clients4", "police"),
                JumpIfSaddrIn(6, "clients6", "police"),
            ),
            base=BaseHook(),
        ),
        "police": ChainSpec(
            "police",
            (
                AcceptEstablished(),
                AcceptIfDestIn(4, "infra4"),
                AcceptIfDestIn(6, "infra6"),
                VmapSaddr(4, "user4"),
                VmapSaddr(6, "user6"),
                Goto("deny"),
            ),
        ),
        "c_fin": ChainSpec(
            "c_fin",
            (AcceptIfDestIn(4, "c_fin_4"), AcceptIfDestIn(6, "c_fin_6"), Goto("deny")),
        ),
        "c_eng": ChainSpec(
            "c_eng",
            (
                LogIfDestIn(4, "c_fin_4", "userseg:stage c_eng ", 100, 50),
                GotoIfDestIn(4, "c_fin_4", "deny"),
                AcceptIfDestIn(4, "c_eng_4"),
                Accept(),
            ),
        ),
        "deny": ChainSpec("deny", (deny,)),
    }
    if variant == "b":
        for name in ("c_eng_4",):
            del sets[name], elements[name]
        del chains["c_eng"]
        users4 = {addr: "c_fin" for addr in list(users4)[1:]}  # first user gone, the rest retargeted
        users4[a4("198.18.0.200")] = "c_fin"
        user6[a6("2001:db8:1::11")] = "c_fin"
        names[a4("198.18.0.12")] = "mallory"  # was user2, stays in c_fin: only the comment changes
        names[a4("198.18.0.200")] = "newcomer"
        names[a6("2001:db8:1::11")] = "ann"
        elements["clients_if"] = frozenset({"veth-c1", "veth-c3"})
        elements["clients4"] = frozenset({net("198.18.0.0/25"), net("198.18.0.128/25")})
        elements["c_fin_4"] = frozenset({box("198.19.1.0/24", 6, (443, 443))})
        chains["deny"] = ChainSpec("deny", (Deny(DenyMode.DROP, "userseg:deny ", None, 50),))
    elements["user4"] = frozenset(MapElement(addr, t, exp, names[addr]) for addr, t in users4.items())
    elements["user6"] = frozenset(MapElement(addr, t, exp, names[addr]) for addr, t in user6.items())
    return TableSpec(sets=sets, elements=elements, chains=chains)


def with_users(spec: TableSpec, now: datetime, count: int, base: str = "198.18.16.0") -> TableSpec:
    """The spec with `count` more IPv4 users, for chunking and bulk tests."""
    exp = now + timedelta(minutes=45)
    first = a4(base)
    targets = [c for c in ("c_fin", "c_eng") if c in spec.chains]
    extra = frozenset(MapElement(first + i, targets[i % len(targets)], exp, f"bulk{i}") for i in range(count))
    return TableSpec(spec.sets, {**spec.elements, "user4": spec.elements["user4"] | extra}, spec.chains)


def expiries(state: ActualState) -> dict[tuple[str, int], datetime]:
    return {
        (name, e.addr): e.expires_at
        for name, elems in state.elements.items()
        for e in elems
        if isinstance(e, MapElement)
    }


def without_expiry(state: ActualState) -> ActualState:
    """The state with map element expiries blanked (compared separately, with a tolerance)."""
    elements = {
        name: frozenset(
            e._replace(expires_at=datetime.min) if isinstance(e, MapElement) else e for e in elems
        )
        for name, elems in state.elements.items()
    }
    return ActualState(state.table_present, state.sets, elements, state.chains)


def assert_states_match(
    got: ActualState, want: ActualState, tolerance: timedelta = timedelta(seconds=2)
) -> None:
    """Equal apart from map element expiries, which may differ by `tolerance`."""
    assert without_expiry(got) == without_expiry(want)
    g, w = expiries(got), expiries(want)
    off = {k: abs(g[k] - w[k]) for k in w if abs(g[k] - w[k]) > tolerance}
    assert not off, f"map element expiries differ by more than {tolerance}: {off}"
