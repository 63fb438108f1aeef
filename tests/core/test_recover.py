"""Mappings recovered from a read-back table (core.recover): only what the kernel can vouch for."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

from tests.core.strategies import NOW
from tests.core.test_compile import pol, world
from tests.core.test_diff import actual_of
from userseg.core.compile import compile_state
from userseg.core.recover import RecoveredMapping, kernel_mappings
from userseg.core.render import render
from userseg.core.table import NO_EXPIRY, ActualChain, ActualState, BaseHook, MapElement, SetKind, SetSpec
from userseg.core.usermap import TRUNCATION_MARK

A = ipaddress.ip_address
HOUR = NOW + timedelta(hours=1)


def _state(elements4: Sequence[MapElement], elements6: Sequence[MapElement] = ()) -> ActualState:
    return ActualState(
        True,
        {"user4": SetSpec("user4", SetKind.VMAP4), "user6": SetSpec("user6", SetKind.VMAP6)},
        {"user4": frozenset(elements4), "user6": frozenset(elements6)},
        {
            "c_fin": ActualChain("c_fin", ()),
            "c_eng": ActualChain("c_eng", ()),
            "forward": ActualChain("forward", (), BaseHook()),
        },
    )


def test_recovery_returns_the_trusted_mappings_in_address_order() -> None:
    v6 = int(A("2001:db8::5"))
    state = _state(
        [
            MapElement(int(A("198.18.10.12")), "c_eng", HOUR, "bob"),
            MapElement(int(A("198.18.10.11")), "c_fin", HOUR, 'o\'brien "zoë"'),
            MapElement(int(A("198.18.10.13")), "c_fin", HOUR, "l" * 125 + TRUNCATION_MARK),  # cut
            MapElement(int(A("198.18.10.14")), "c_fin", HOUR, ""),  # no comment
            MapElement(int(A("198.18.10.15")), "!accept", HOUR, "eve"),  # a verdict we never write
            MapElement(int(A("198.18.10.16")), "c_gone", HOUR, "eve"),  # no such chain
            MapElement(int(A("198.18.10.17")), "forward", HOUR, "eve"),  # a base chain is no class
            MapElement(int(A("198.18.10.18")), "c_fin", NO_EXPIRY, "eve"),  # ours always time out
        ],
        [MapElement(v6, "c_fin", HOUR, "carol")],
    )
    assert kernel_mappings(state) == [
        RecoveredMapping(A("198.18.10.11"), 'o\'brien "zoë"', HOUR),
        RecoveredMapping(A("198.18.10.12"), "bob", HOUR),
        RecoveredMapping(A("2001:db8::5"), "carol", HOUR),
    ]


def test_recovery_ignores_maps_that_are_not_ours() -> None:
    state = _state([MapElement(int(A("198.18.10.11")), "c_fin", HOUR, "alice")])
    foreign = replace(state, sets={**state.sets, "user4": SetSpec("user4", SetKind.NET4)})
    assert kernel_mappings(foreign) == []
    assert kernel_mappings(ActualState.empty()) == []
    assert kernel_mappings(state) == [RecoveredMapping(A("198.18.10.11"), "alice", HOUR)]


def test_what_render_wrote_is_recovered_whole() -> None:
    snap = world([pol("fin-web", 10, "group:finance", "web", "allow")])
    desired = compile_state(snap, NOW)
    got = kernel_mappings(actual_of(render(desired)))
    assert got == sorted(RecoveredMapping(ip, t.user, t.expires_at) for ip, t in desired.mappings.items())
    assert [m.user for m in got] == ["alice", "bob", "carol"]  # eve is disabled: no element
