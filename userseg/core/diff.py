"""diff(desired table, actual table, now) -> Plan.  Pure.

Ordering is what keeps the kernel gap-free (see table.Plan):
prelude  new table, new sets, new chains (all created, then the non-base ones filled);
bulk     elements for keys the kernel does not have yet (safe to split);
main     element deletes, then element adds/replacements of existing sets,
         rule changes of existing chains and of base chains, then obsolete chains
         (flushed first, since they may reference each other) and obsolete sets.
A set or base chain of the wrong type cannot be fixed in place: the table is then
rebuilt inside ONE transaction (delete + add), so packets still see old or new.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from userseg.core.table import (
    ActualState,
    AddChain,
    AddElements,
    AddSet,
    AddTable,
    DeleteChain,
    DeleteElements,
    DeleteSet,
    DeleteTable,
    MapElement,
    Op,
    Plan,
    SetRules,
    TableSpec,
    kernel_signatures,
)

# Map elements whose expiry differs by less than this are left alone: the kernel
# reports remaining time in whole seconds and we must not churn on rounding.
EXPIRY_TOLERANCE = timedelta(seconds=5)


def _sorted(elements: set[object] | frozenset[object]) -> tuple[object, ...]:
    """Deterministic order (plans are compared in tests and printed for admins);
    every element type of one set is a single orderable type."""
    if len(elements) > 5000:
        return tuple(elements)  # big bulk loads: sorting would cost more than the apply
    return tuple(sorted(elements))  # type: ignore[type-var]


def _full_build(spec: TableSpec) -> list[Op]:
    ops: list[Op] = [AddTable()]
    ops += [AddSet(s) for s in spec.sets.values()]
    ops += [AddChain(c.name, c.base) for c in spec.chains.values()]
    ops += [SetRules(c.name, c.rules) for c in spec.chains.values() if c.rules]
    return ops


def rebuild(spec: TableSpec, now: datetime) -> Plan:
    """Delete and recreate the whole table in one transaction."""
    ops = [DeleteTable(), *_full_build(spec)]
    ops += [
        AddElements(name, spec.sets[name].kind, _sorted(els)) for name, els in spec.elements.items() if els
    ]
    return Plan(now=now, main=tuple(ops))


def _map_diff(
    desired: frozenset[object], actual: frozenset[object]
) -> tuple[list[object], list[object], list[object]]:
    """(new keys, deleted, replaced-new) for a vmap; replaced old elements go in deleted.

    An element is replaced when its class, its user (comment) or, beyond the
    tolerance, its expiry differs.  Replacing is delete + add of the same key in
    the one `main` transaction: the kernel keeps an existing element's comment
    on a plain add (and our `create` refuses it), and inside one transaction no
    packet ever sees the key missing.
    """
    want = {e.addr: e for e in desired if isinstance(e, MapElement)}
    have = {e.addr: e for e in actual if isinstance(e, MapElement)}
    new: list[object] = [want[a] for a in want.keys() - have.keys()]
    deleted: list[object] = [have[a] for a in have.keys() - want.keys()]
    replaced: list[object] = []
    for addr in want.keys() & have.keys():
        w, h = want[addr], have[addr]
        if w.target != h.target or w.user != h.user or abs(w.expires_at - h.expires_at) > EXPIRY_TOLERANCE:
            deleted.append(h)
            replaced.append(w)
    return new, deleted, replaced


def diff(spec: TableSpec, actual: ActualState, now: datetime) -> Plan:
    if not actual.table_present:
        build = _full_build(spec)
        base_rules = [op for op in build if isinstance(op, SetRules) and spec.chains[op.chain].base]
        cold = [op for op in build if op not in base_rules]
        loads = [
            AddElements(name, spec.sets[name].kind, _sorted(els))
            for name, els in spec.elements.items()
            if els
        ]
        return Plan(now=now, prelude=tuple(cold), bulk=tuple(loads), main=tuple(base_rules))

    for name, s in spec.sets.items():
        # Same name but another type or flags (e.g. a map recreated without timeouts)
        # cannot be altered in place: every later element write would fail.
        if name in actual.sets and actual.sets[name] != s:
            return rebuild(spec, now)
    for name, c in spec.chains.items():
        if name in actual.chains and actual.chains[name].base != c.base:
            return rebuild(spec, now)

    prelude: list[Op] = []
    bulk: list[AddElements] = []
    deletes: list[Op] = []
    adds: list[Op] = []
    rules: list[Op] = []

    new_sets = [s for name, s in spec.sets.items() if name not in actual.sets]
    prelude += [AddSet(s) for s in new_sets]
    new_chains = [c for name, c in spec.chains.items() if name not in actual.chains]
    prelude += [AddChain(c.name, c.base) for c in new_chains]
    for c in new_chains:
        if not c.rules:
            continue
        (rules if c.base else prelude).append(SetRules(c.name, c.rules))

    for name, s in spec.sets.items():
        want = spec.elements.get(name, frozenset())
        if name not in actual.sets:
            if want:
                bulk.append(AddElements(name, s.kind, _sorted(want)))
            continue
        have = actual.elements.get(name, frozenset())
        if s.kind.is_map:
            new, gone, replaced = _map_diff(want, have)
            if new:
                bulk.append(AddElements(name, s.kind, _sorted(set(new))))
            if gone:
                deletes.append(DeleteElements(name, s.kind, _sorted(set(gone))))
            if replaced:
                adds.append(AddElements(name, s.kind, _sorted(set(replaced))))
        else:
            if have - want:
                deletes.append(DeleteElements(name, s.kind, _sorted(have - want)))
            if want - have:
                adds.append(AddElements(name, s.kind, _sorted(want - have)))

    for name, c in spec.chains.items():
        if name in actual.chains and actual.chains[name].signatures != kernel_signatures(c.rules):
            rules.append(SetRules(name, c.rules))

    obsolete_chains = [name for name in actual.chains if name not in spec.chains]
    obsolete_sets = [name for name in actual.sets if name not in spec.sets]
    cleanup: list[Op] = [SetRules(name, ()) for name in obsolete_chains]
    cleanup += [DeleteChain(name) for name in obsolete_chains]
    cleanup += [DeleteSet(name) for name in obsolete_sets]

    return Plan(
        now=now,
        prelude=tuple(prelude),
        bulk=tuple(bulk),
        main=tuple(deletes + adds + rules + cleanup),
    )
