from __future__ import annotations

import ipaddress
from dataclasses import replace
from datetime import timedelta

from tests.core.strategies import NOW
from tests.core.test_compile import pol, world
from userseg.core.compile import compile_state
from userseg.core.diff import diff
from userseg.core.render import render
from userseg.core.table import (
    ActualChain,
    ActualState,
    AddChain,
    AddElements,
    AddTable,
    DeleteChain,
    DeleteElements,
    DeleteSet,
    DeleteTable,
    MapElement,
    SetKind,
    SetRules,
    SetSpec,
    TableSpec,
    kernel_signatures,
)


def actual_of(spec: TableSpec) -> ActualState:
    """What a perfect kernel would read back after applying spec."""
    return ActualState(
        table_present=True,
        sets=dict(spec.sets),
        elements={n: spec.elements.get(n, frozenset()) for n in spec.sets},
        chains={n: ActualChain(n, kernel_signatures(c.rules), c.base) for n, c in spec.chains.items()},
    )


def spec_for(*policies: object) -> TableSpec:
    return render(compile_state(world(list(policies)), NOW))  # type: ignore[arg-type]


def test_cold_start_builds_structure_first_and_enables_base_chain_last() -> None:
    spec = spec_for(pol("fin-web", 10, "group:finance", "web", "allow"))
    plan = diff(spec, ActualState.empty(), NOW)
    assert plan.prelude[0] == AddTable()
    assert any(isinstance(op, AddChain) and op.name == "forward" for op in plan.prelude)
    assert not any(isinstance(op, SetRules) and op.chain == "forward" for op in plan.prelude)
    assert next(op for op in plan.main if isinstance(op, SetRules)).chain == "forward"
    assert all(isinstance(op, AddElements) for op in plan.bulk)
    users = [op for op in plan.bulk if op.set_name == "user4"]
    assert len(users[0].elements) == 3  # alice, bob, carol; eve is disabled


def test_in_sync_means_empty_plan() -> None:
    spec = spec_for(pol("fin-web", 10, "group:finance", "web", "allow"))
    assert diff(spec, actual_of(spec), NOW).is_empty


def test_expiry_within_tolerance_is_left_alone_beyond_it_is_replaced_atomically() -> None:
    spec = spec_for()
    actual = actual_of(spec)
    shifted = {e._replace(expires_at=e.expires_at + timedelta(seconds=3)) for e in actual.elements["user4"]}  # type: ignore[type-var]
    assert diff(
        spec, replace(actual, elements={**actual.elements, "user4": frozenset(shifted)}), NOW
    ).is_empty
    far = {e._replace(expires_at=e.expires_at - timedelta(minutes=10)) for e in actual.elements["user4"]}  # type: ignore[type-var]
    plan = diff(spec, replace(actual, elements={**actual.elements, "user4": frozenset(far)}), NOW)
    assert not plan.bulk and not plan.prelude
    kinds = [type(op) for op in plan.main]
    assert kinds == [DeleteElements, AddElements]


def test_another_user_on_the_same_ip_and_class_rewrites_the_element_in_one_phase() -> None:
    """The comment names the user: when it changes, the element is deleted and re-added in
    `main` (one transaction), since the kernel keeps an existing element's comment on add."""
    spec = spec_for()
    actual = actual_of(spec)
    els = {e.addr: e for e in actual.elements["user4"] if isinstance(e, MapElement)}
    alice = els[int(ipaddress.ip_address("198.18.10.11"))]
    stale = alice._replace(user="mallory")
    tampered = replace(
        actual, elements={**actual.elements, "user4": frozenset({*els.values(), stale} - {alice})}
    )
    plan = diff(spec, tampered, NOW)
    assert not plan.prelude and not plan.bulk
    assert plan.main == (
        DeleteElements("user4", SetKind.VMAP4, (stale,)),
        AddElements("user4", SetKind.VMAP4, (alice,)),
    )
    assert alice.user == "alice" and diff(spec, actual, NOW).is_empty


def test_new_mapping_is_a_bulk_add_and_a_removed_one_a_delete() -> None:
    spec = spec_for()
    actual = actual_of(spec)
    extra = MapElement(int(ipaddress.ip_address("198.18.10.99")), "c_x", NOW, "x")
    els = set(actual.elements["user4"])
    gone = els.pop()
    plan = diff(spec, replace(actual, elements={**actual.elements, "user4": frozenset(els | {extra})}), NOW)
    assert plan.bulk == (AddElements("user4", SetKind.VMAP4, (gone,)),)
    assert plan.main == (DeleteElements("user4", SetKind.VMAP4, (extra,)),)


def test_policy_change_edits_set_contents_in_place() -> None:
    old = spec_for(pol("fin-web", 10, "group:finance", "web", "allow"))
    new = spec_for(pol("fin-web", 10, "group:finance", "ssh", "allow"))
    assert old.chains.keys() == new.chains.keys()
    plan = diff(new, actual_of(old), NOW)
    assert not plan.prelude and not plan.bulk
    assert {type(op) for op in plan.main} == {DeleteElements, AddElements}
    # deletes come before adds, so the interval set never sees an overlap
    first_add = next(i for i, op in enumerate(plan.main) if isinstance(op, AddElements))
    assert all(isinstance(op, DeleteElements) for op in plan.main[:first_add])


def test_obsolete_chains_are_flushed_before_any_is_deleted_and_sets_go_last() -> None:
    old = spec_for(pol("fin-web", 10, "group:finance", "web", "allow"))
    new = spec_for()
    plan = diff(new, actual_of(old), NOW)
    names = [type(op).__name__ for op in plan.main]
    last_flush = max(i for i, op in enumerate(plan.main) if isinstance(op, SetRules) and not op.rules)
    first_delete = min(i for i, op in enumerate(plan.main) if isinstance(op, DeleteChain))
    assert last_flush < first_delete
    assert names[-1] == "DeleteSet" and all(
        isinstance(op, DeleteSet) for op in plan.main[names.index("DeleteSet") :]
    )


def test_foreign_rule_in_our_chain_is_replaced() -> None:
    spec = spec_for()
    actual = actual_of(spec)
    police = actual.chains["police"]
    tampered = replace(police, signatures=(*police.signatures, ""))
    plan = diff(spec, replace(actual, chains={**actual.chains, "police": tampered}), NOW)
    assert plan.main == (SetRules("police", spec.chains["police"].rules),)


def test_foreign_set_and_chain_in_our_table_are_removed() -> None:
    spec = spec_for()
    actual = actual_of(spec)
    plan = diff(
        spec,
        replace(
            actual,
            sets={**actual.sets, "junk": SetSpec("junk", SetKind.NET4)},
            chains={**actual.chains, "junk": ActualChain("junk", ("",))},
        ),
        NOW,
    )
    assert DeleteChain("junk") in plan.main and DeleteSet("junk") in plan.main


def test_set_of_wrong_type_rebuilds_the_table_in_one_transaction() -> None:
    spec = spec_for()
    actual = actual_of(spec)
    plan = diff(spec, replace(actual, sets={**actual.sets, "user4": SetSpec("user4", SetKind.NET4)}), NOW)
    assert not plan.prelude and not plan.bulk
    assert plan.main[0] == DeleteTable() and plan.main[1] == AddTable()
