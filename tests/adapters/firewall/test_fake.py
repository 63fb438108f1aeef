"""The fake firewall: kernel-like refusals and packet verdicts (the contract suite covers read/apply)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from userseg.adapters.firewall.fake import FakeFirewall, ForeignRule
from userseg.core.diff import diff
from userseg.core.table import (
    Accept,
    AddChain,
    AddElements,
    AddSet,
    AddTable,
    BaseHook,
    DeleteChain,
    DeleteElements,
    DeleteSet,
    DeleteTable,
    Goto,
    JumpIfSaddrIn,
    MapElement,
    Op,
    Plan,
    SetKind,
    SetRules,
    SetSpec,
    TableSpec,
    VmapSaddr,
)
from userseg.ports import FirewallError

from . import a4, box, net, realistic_spec

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def loaded(spec: TableSpec | None = None, **kwargs: object) -> FakeFirewall:
    fw = FakeFirewall(**kwargs)  # type: ignore[arg-type]
    fw.apply(diff(spec or realistic_spec(NOW), fw.read(), NOW))
    return fw


def refused(fw: FakeFirewall, *ops: Op, match: str) -> None:
    before = fw.read()
    with pytest.raises(FirewallError, match=match):
        fw.apply(Plan(NOW, main=ops))
    assert fw.read() == before, "a refused transaction must change nothing"


# ---------------------------------------------------------------- verdicts


@pytest.mark.parametrize(
    ("iif", "src", "dst", "proto", "port", "established", "verdict"),
    [
        ("veth-c1", "198.18.0.10", "198.19.1.5", 6, 443, False, "accept"),  # finance user, finance app
        ("veth-c1", "198.18.0.10", "198.19.1.5", 6, 80, False, "reject"),  # ... wrong port
        ("veth-c1", "198.18.0.10", "198.19.1.15", 17, 1500, False, "accept"),  # range box
        ("veth-c1", "198.18.0.10", "198.19.0.10", 17, 53, False, "accept"),  # infrastructure
        ("veth-c1", "198.18.0.99", "198.19.1.5", 6, 443, False, "reject"),  # unmapped
        ("veth-c1", "198.18.0.99", "198.19.0.10", 6, 3269, False, "accept"),  # unmapped may log on
        ("veth-c1", "198.18.0.99", "198.19.1.5", 6, 443, True, "accept"),  # established
        ("veth-c2", "198.18.0.11", "198.19.1.5", 6, 443, False, "reject"),  # eng: finance goto deny
        ("veth-c2", "198.18.0.11", "198.19.9.9", 6, 80, False, "accept"),  # eng: deny-class accepts the rest
        ("eth9", "198.18.7.5", "198.19.1.5", 6, 443, False, "reject"),  # client network, unmapped
        ("eth9", "198.18.200.1", "198.19.1.5", 6, 443, False, "accept"),  # not a client: not policed
        ("eth9", "2001:db8:1::10", "2001:db8:f1::1", 6, 443, False, "accept"),
        ("eth9", "2001:db8:1::10", "2001:db8:f1::1", 58, 0, False, "accept"),
        ("eth9", "2001:db8:1::10", "2001:db8:f1::1", 6, 22, False, "reject"),
        ("eth9", "2001:db8:1::99", "2001:db8:ff::10", 6, 88, False, "accept"),
    ],
)
def test_evaluate_realistic_table(
    iif: str, src: str, dst: str, proto: int, port: int, established: bool, verdict: str
) -> None:
    assert loaded().evaluate(iif, src, dst, proto, port, established) == verdict


def test_drop_mode_and_empty_table() -> None:
    assert FakeFirewall().evaluate("veth-c1", "198.18.0.99", "198.19.1.5", 6, 443) == "accept"
    fw = loaded(realistic_spec(NOW, "b"))
    assert fw.evaluate("veth-c1", "198.18.0.99", "198.19.1.5", 6, 443) == "drop"


def test_base_chain_policy_applies_when_falling_off() -> None:
    fw = FakeFirewall()
    fw.apply(Plan(NOW, main=(AddTable(), AddChain("forward", BaseHook(policy="drop")))))
    assert fw.evaluate("x", "198.18.0.1", "198.19.0.1", 6, 1) == "drop"


def test_jump_returns_but_goto_does_not() -> None:
    fw = FakeFirewall()
    spec = SetSpec("n4", SetKind.NET4)
    fw.apply(
        Plan(
            NOW,
            main=(
                AddTable(),
                AddSet(spec),
                AddElements("n4", SetKind.NET4, (net("198.18.0.0/24"),)),
                AddChain("empty"),
                AddChain("forward", BaseHook(policy="drop")),
                SetRules("forward", (JumpIfSaddrIn(4, "n4", "empty"), Accept())),
            ),
        )
    )
    assert fw.evaluate("x", "198.18.0.1", "198.19.0.1", 6, 1) == "accept"  # jumped, returned, accepted
    fw.apply(Plan(NOW, main=(SetRules("forward", (Goto("empty"), Accept())),)))
    assert fw.evaluate("x", "198.18.0.1", "198.19.0.1", 6, 1) == "drop"  # goto fell off: policy


def test_map_elements_expire_with_the_clock() -> None:
    clock = [NOW]
    fw = loaded(clock=lambda: clock[0])
    assert fw.evaluate("veth-c1", "198.18.0.10", "198.19.1.5", 6, 443) == "accept"
    clock[0] = NOW + timedelta(minutes=46)
    assert fw.evaluate("veth-c1", "198.18.0.10", "198.19.1.5", 6, 443) == "reject"
    assert fw.read().elements["user4"] == frozenset()


def test_a_foreign_rule_is_evaluated_and_reads_back_unsigned() -> None:
    fw = loaded()
    fw.tamper_insert_rule("police", ForeignRule("accept"))
    assert fw.evaluate("veth-c1", "198.18.0.99", "198.19.1.5", 6, 443) == "accept"
    assert fw.read().chains["police"].signatures[0] == ""


def test_map_timeouts_are_rounded_like_the_kernels() -> None:
    fw = loaded()
    element = MapElement(a4("198.18.0.77"), "c_fin", NOW + timedelta(seconds=10.2), "alice")
    fw.apply(Plan(NOW, main=(AddElements("user4", SetKind.VMAP4, (element,)),)))
    (got,) = [e for e in fw.read().elements["user4"] if isinstance(e, MapElement) and e.addr == element.addr]
    assert got.expires_at == NOW + timedelta(seconds=11)


# ---------------------------------------------------------------- refusals


def test_refusals_match_the_kernel() -> None:
    fw = loaded()
    u = MapElement(a4("198.18.0.10"), "c_fin", NOW, "user0")
    refused(fw, AddElements("user4", SetKind.VMAP4, (u,)), match="File exists")
    refused(
        fw,
        DeleteElements("user4", SetKind.VMAP4, (MapElement(a4("198.18.9.9"), "c", NOW, "x"),)),
        match="No such file",
    )
    refused(
        fw, AddElements("c_fin_4", SetKind.DEST4, (box("198.19.1.7", 6, (400, 500)),)), match="File exists"
    )
    refused(fw, AddElements("clients4", SetKind.NET4, (net("198.18.0.128/25"),)), match="interval overlaps")
    refused(fw, AddElements("nope", SetKind.NET4, (net("198.18.9.0/24"),)), match="No such file")
    refused(
        fw, AddElements("user4", SetKind.VMAP4, (MapElement(1, "ghost", NOW, "x"),)), match="No such file"
    )
    refused(
        fw, AddElements("user4", SetKind.VMAP4, (MapElement(2, "forward", NOW, "x"),)), match="base chain"
    )
    refused(fw, AddElements("clients4", SetKind.NET6, (net("2001:db8::/64"),)), match="set is net4")
    refused(fw, AddElements("clients_if", SetKind.IFNAME, (net("198.18.0.1"),)), match="invalid data type")
    refused(fw, DeleteChain("c_eng"), match="Device or resource busy")  # map elements goto it
    refused(fw, DeleteChain("deny"), match="Device or resource busy")  # rules goto it
    refused(fw, DeleteChain("ghost"), match="No such file")
    refused(fw, DeleteSet("c_fin_4"), match="Device or resource busy")
    refused(fw, DeleteSet("ghost"), match="No such file")
    refused(fw, SetRules("ghost", ()), match="No such file")
    refused(fw, SetRules("c_fin", (VmapSaddr(4, "clients4"),)), match="datatype mismatch")
    refused(fw, SetRules("c_fin", (Goto("ghost"),)), match="No such file")
    refused(fw, SetRules("deny", (Goto("c_fin"),)), match="Too many levels")  # c_fin -> deny -> c_fin
    refused(fw, AddSet(SetSpec("user4", SetKind.VMAP6)), match="File exists")
    refused(fw, AddChain("forward", BaseHook(priority=10)), match="Operation not supported")
    refused(fw, AddChain("c_fin", BaseHook()), match="Operation not supported")


def test_idempotent_adds_are_accepted_like_the_kernel() -> None:
    fw = loaded()
    before = fw.read()
    fw.apply(
        Plan(
            NOW,
            main=(
                AddTable(),
                AddSet(SetSpec("user4", SetKind.VMAP4)),
                AddChain("c_fin"),
                AddElements("clients4", SetKind.NET4, (net("198.18.0.0/24"),)),  # NET uses `add`
            ),
        )
    )
    assert fw.read() == before
    fw.apply(Plan(NOW, main=(AddChain("forward", BaseHook(policy="drop")),)))  # policy may change
    assert fw.read().chains["forward"].base == BaseHook(policy="drop")


def test_without_table_everything_but_add_table_is_refused() -> None:
    refused(FakeFirewall(), AddSet(SetSpec("x", SetKind.NET4)), match="No such file")


def test_delete_chain_after_dropping_its_references_in_the_same_transaction() -> None:
    fw = loaded()
    gone = tuple(e for e in fw.read().elements["user4"] if isinstance(e, MapElement) and e.target == "c_eng")
    fw.apply(
        Plan(
            NOW,
            main=(DeleteElements("user4", SetKind.VMAP4, gone), DeleteChain("c_eng"), DeleteSet("c_eng_4")),
        )
    )
    state = fw.read()
    assert "c_eng" not in state.chains and "c_eng_4" not in state.sets


def test_rebuild_in_one_transaction() -> None:
    fw = loaded()
    before = fw.read()
    fw.apply(diff(realistic_spec(NOW), before, NOW))
    plan = Plan(NOW, main=(DeleteTable(), *diff(realistic_spec(NOW), FakeFirewall().read(), NOW).ops()))
    fw.apply(plan)
    assert fw.read() == before


# ---------------------------------------------------------------- injection and chunking


def test_fail_next_refuses_without_changing_anything() -> None:
    fw = FakeFirewall()
    fw.fail_next(2, "boom")
    plan = diff(realistic_spec(NOW), fw.read(), NOW)
    for _ in range(2):
        with pytest.raises(FirewallError, match="boom"):
            fw.apply(plan)
        assert fw.read().table_present is False
    fw.apply(plan)
    assert fw.read().table_present
    assert len(fw.plans) == 3


def test_a_failing_chunk_keeps_the_earlier_ones() -> None:
    fw = FakeFirewall(chunk_elements=2)
    fw.apply(Plan(NOW, main=(AddTable(), AddSet(SetSpec("i", SetKind.IFNAME)))))
    plan = Plan(NOW, bulk=(AddElements("i", SetKind.IFNAME, ("a", "b", "c", "a")),))
    with pytest.raises(FirewallError, match=r"transaction 2 refused.*File exists"):
        fw.apply(plan)
    assert fw.read().elements["i"] == frozenset({"a", "b"})


def test_tamper_hooks_simulate_drift() -> None:
    fw = loaded()
    fw.tamper_delete_element("clients_if", "veth-c1")
    fw.tamper_add_element("clients_if", "veth-x")
    fw.tamper_flush_chain("police")
    fw.tamper_add_chain("stray")
    state = fw.read()
    assert state.elements["clients_if"] == frozenset({"veth-c2", "veth-x"})
    assert state.chains["police"].signatures == ()
    assert "stray" in state.chains
    fw.apply(diff(realistic_spec(NOW), state, NOW))
    assert diff(realistic_spec(NOW), fw.read(), NOW).is_empty
    fw.tamper_delete_table()
    assert fw.read().table_present is False
