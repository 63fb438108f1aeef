"""Rendering of plans and rules to libnftables JSON (pure, no root needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from userseg.adapters.firewall.nft_render import (
    ElementEncoder,
    element_timeout,
    encode_element,
    encode_key,
    render_op,
    rule_bodies,
    rule_kernel_signatures,
    set_json,
    split_transactions,
)
from userseg.core.table import (
    Accept,
    AcceptEstablished,
    AcceptIfDestIn,
    AddChain,
    AddElements,
    AddSet,
    AddTable,
    BaseHook,
    DeleteChain,
    DeleteElements,
    DeleteSet,
    DeleteTable,
    Deny,
    Goto,
    GotoIfDestIn,
    JumpIfIifname,
    JumpIfSaddrIn,
    LogIfDestIn,
    MapElement,
    Plan,
    Rule,
    SetKind,
    SetRules,
    SetSpec,
    VmapSaddr,
    kernel_signatures,
    rule_signature,
)
from userseg.model import AddressRange, DenyMode

from . import a4, a6, box, net

NOW = datetime(2026, 1, 1, tzinfo=UTC)
T = {"family": "inet", "table": "userseg"}
DEST4 = {
    "concat": [
        {"payload": {"protocol": "ip", "field": "daddr"}},
        {"meta": {"key": "l4proto"}},
        {"payload": {"protocol": "th", "field": "dport"}},
    ]
}

ALL_RULES: list[Rule] = [
    AcceptEstablished(),
    JumpIfIifname("clients_if", "police"),
    JumpIfSaddrIn(4, "clients4", "police"),
    JumpIfSaddrIn(6, "clients6", "police"),
    AcceptIfDestIn(4, "infra4"),
    AcceptIfDestIn(6, "infra6"),
    GotoIfDestIn(4, "c1_4", "deny"),
    LogIfDestIn(6, "c1_6", "userseg:stage c1 ", 100, 50),
    VmapSaddr(4, "user4"),
    VmapSaddr(6, "user6"),
    Goto("deny"),
    Accept(),
    Deny(DenyMode.REJECT, "userseg:deny ", 100, 50),
    Deny(DenyMode.REJECT, "p", None, 50),
    Deny(DenyMode.DROP, "p", 7, 5),
    Deny(DenyMode.DROP, "p", None, 5),
]


def test_each_rule_renders_to_the_documented_nft() -> None:
    assert rule_bodies(AcceptEstablished()) == [
        [
            {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
            {"accept": None},
        ]
    ]
    assert rule_bodies(JumpIfIifname("ifs", "police")) == [
        [
            {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "@ifs"}},
            {"jump": {"target": "police"}},
        ]
    ]
    assert rule_bodies(JumpIfSaddrIn(6, "n6", "police"))[0][0]["match"]["left"] == {
        "payload": {"protocol": "ip6", "field": "saddr"}
    }
    assert rule_bodies(AcceptIfDestIn(4, "d")) == [
        [{"match": {"op": "==", "left": DEST4, "right": "@d"}}, {"accept": None}]
    ]
    assert rule_bodies(GotoIfDestIn(4, "d", "deny"))[0][1] == {"goto": {"target": "deny"}}
    assert rule_bodies(LogIfDestIn(4, "d", "pfx ", 9, 20))[0][1:] == [
        {"limit": {"rate": 20, "per": "second"}},
        {"log": {"prefix": "pfx ", "group": 9}},
    ]
    assert rule_bodies(VmapSaddr(6, "user6")) == [
        [{"vmap": {"key": {"payload": {"protocol": "ip6", "field": "saddr"}}, "data": "@user6"}}]
    ]
    assert rule_bodies(Goto("x")) == [[{"goto": {"target": "x"}}]]
    assert rule_bodies(Accept()) == [[{"accept": None}]]


def test_deny_expands_to_log_resets_and_drop() -> None:
    bodies = rule_bodies(Deny(DenyMode.REJECT, "userseg:deny ", 100, 50))
    assert bodies == [
        [{"limit": {"rate": 50, "per": "second"}}, {"log": {"prefix": "userseg:deny ", "group": 100}}],
        [
            {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
            {"reject": {"type": "tcp reset"}},
        ],
        [{"reject": {"type": "icmpx", "expr": "admin-prohibited"}}],
        [{"drop": None}],
    ]
    assert rule_bodies(Deny(DenyMode.DROP, "x", None, 5)) == [[{"drop": None}]]


@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda r: type(r).__name__)
def test_signatures_are_one_per_kernel_rule_and_agree_with_table(rule: Rule) -> None:
    sigs = rule_kernel_signatures(rule)
    assert len(sigs) == len(rule_bodies(rule))
    assert sigs == kernel_signatures((rule,))
    base = rule_signature(rule)
    assert all(s.startswith(base) for s in sigs)
    assert len(set(sigs)) == len(sigs)


def test_set_rules_flushes_then_adds_commented_rules() -> None:
    rules = (AcceptEstablished(), Deny(DenyMode.REJECT, "d ", 1, 1))
    cmds = render_op(SetRules("police", rules), NOW)
    assert cmds[0] == {"flush": {"chain": {**T, "name": "police"}}}
    added = [c["add"]["rule"] for c in cmds[1:]]
    assert [r["chain"] for r in added] == ["police"] * 5
    assert tuple(r["comment"] for r in added) == kernel_signatures(rules)


def test_set_declarations() -> None:
    assert set_json(SetSpec("d4", SetKind.DEST4)) == {
        "set": {**T, "name": "d4", "type": ["ipv4_addr", "inet_proto", "inet_service"], "flags": ["interval"]}
    }
    assert set_json(SetSpec("d6", SetKind.DEST6))["set"]["type"][0] == "ipv6_addr"
    assert set_json(SetSpec("n6", SetKind.NET6)) == {
        "set": {**T, "name": "n6", "type": "ipv6_addr", "flags": ["interval"]}
    }
    assert set_json(SetSpec("i", SetKind.IFNAME)) == {"set": {**T, "name": "i", "type": "ifname"}}
    assert set_json(SetSpec("u4", SetKind.VMAP4)) == {
        "map": {**T, "name": "u4", "type": "ipv4_addr", "map": "verdict", "flags": ["timeout"]}
    }


def test_element_encoding_per_kind() -> None:
    assert encode_element(SetKind.DEST4, box("198.18.1.0/24", 6, (80, 90))) == {
        "concat": [{"range": ["198.18.1.0", "198.18.1.255"]}, 6, {"range": [80, 90]}]
    }
    assert encode_element(SetKind.DEST6, box("2001:db8::9", 17, (53, 53))) == {
        "concat": ["2001:db8::9", 17, 53]
    }
    assert encode_element(SetKind.NET4, net("198.18.3.1-198.18.3.5")) == {
        "range": ["198.18.3.1", "198.18.3.5"]
    }
    assert encode_element(SetKind.NET6, net("2001:db8::1")) == "2001:db8::1"
    assert encode_element(SetKind.IFNAME, "veth0") == "veth0"
    element = MapElement(a4("198.18.0.1"), "c1", NOW + timedelta(seconds=2700), "alice")
    assert encode_element(SetKind.VMAP4, element, NOW) == [
        {"elem": {"val": "198.18.0.1", "timeout": 2700, "comment": "alice"}},
        {"goto": {"target": "c1"}},
    ]
    assert encode_element(SetKind.VMAP4, element._replace(user=""), NOW) == [
        {"elem": {"val": "198.18.0.1", "timeout": 2700}},  # no user, no comment
        {"goto": {"target": "c1"}},
    ]
    assert encode_key(SetKind.VMAP4, element) == "198.18.0.1"
    assert encode_key(SetKind.VMAP6, MapElement(a6("2001:db8::7"), "c", NOW, "bob")) == "2001:db8::7"
    assert encode_key(SetKind.DEST4, box("198.18.1.1", 6, (1, 1))) == {"concat": ["198.18.1.1", 6, 1]}


@pytest.mark.parametrize(
    ("kind", "element"),
    [
        (SetKind.DEST4, box("2001:db8::1", 6)),
        (SetKind.NET4, "198.18.0.1"),
        (SetKind.NET6, AddressRange(4, 1, 2)),
        (SetKind.IFNAME, ""),
        (SetKind.VMAP4, net("198.18.0.1")),
    ],
)
def test_wrong_element_types_are_named(kind: SetKind, element: object) -> None:
    with pytest.raises(TypeError, match=kind.value if kind is not SetKind.IFNAME else "interface"):
        encode_element(kind, element, NOW)


def test_map_element_needs_now_and_valid_address() -> None:
    with pytest.raises(ValueError, match="needs `now`"):
        encode_element(SetKind.VMAP4, MapElement(1, "c", NOW, "u"))
    with pytest.raises(ValueError, match="not an IPv4 address"):
        encode_element(SetKind.VMAP4, MapElement(1 << 40, "c", NOW, "u"), NOW)


@pytest.mark.parametrize("user", ["x" * 129, "ü" * 65, "a\0b", "\udcff"])
def test_a_comment_nft_would_refuse_or_cut_is_refused_by_name(user: str) -> None:
    """Only core.usermap.element_comment's output is ever written; anything else is a bug upstream."""
    with pytest.raises(ValueError, match=r"comment .* at most 128 bytes"):
        encode_element(SetKind.VMAP4, MapElement(1, "c", NOW + timedelta(hours=1), user), NOW)


@pytest.mark.parametrize(
    ("delta", "want"),
    [
        (timedelta(seconds=2700), 2700),
        (timedelta(seconds=0.2), 1),
        (timedelta(seconds=-30), 1),
        (timedelta(seconds=9.01), 10),
    ],
)
def test_timeouts_round_up_and_are_at_least_one_second(delta: timedelta, want: int) -> None:
    assert element_timeout(NOW + delta, NOW) == want
    enc = ElementEncoder(SetKind.VMAP4, NOW)
    assert enc.element(MapElement(1, "c", NOW + delta, "u"))[0]["elem"]["timeout"] == want


def test_ops_render() -> None:
    assert render_op(AddTable(), NOW) == [{"add": {"table": {"family": "inet", "name": "userseg"}}}]
    assert render_op(DeleteTable(), NOW) == [{"delete": {"table": {"family": "inet", "name": "userseg"}}}]
    assert render_op(AddSet(SetSpec("i", SetKind.IFNAME)), NOW) == [
        {"add": {"set": {**T, "name": "i", "type": "ifname"}}}
    ]
    assert render_op(AddChain("forward", BaseHook(priority=5)), NOW) == [
        {
            "add": {
                "chain": {
                    **T,
                    "name": "forward",
                    "type": "filter",
                    "hook": "forward",
                    "prio": 5,
                    "policy": "accept",
                }
            }
        }
    ]
    assert render_op(AddChain("c1"), NOW) == [{"add": {"chain": {**T, "name": "c1"}}}]
    assert render_op(DeleteChain("c1"), NOW) == [
        {"flush": {"chain": {**T, "name": "c1"}}},
        {"delete": {"chain": {**T, "name": "c1"}}},
    ]
    assert render_op(DeleteSet("u4"), NOW) == [{"delete": {"set": {**T, "name": "u4"}}}]
    add = render_op(AddElements("i", SetKind.IFNAME, ("a", "b")), NOW)
    assert add == [{"create": {"element": {**T, "name": "i", "elem": ["a", "b"]}}}]
    # nft 1.0.6 refuses `create` into an rbtree interval set made in the same batch
    assert "add" in render_op(AddElements("n", SetKind.NET4, (net("198.18.0.0/24"),)), NOW)[0]
    gone = render_op(DeleteElements("u", SetKind.VMAP4, (MapElement(a4("198.18.0.1"), "c", NOW, "u"),)), NOW)
    assert gone == [{"delete": {"element": {**T, "name": "u", "elem": ["198.18.0.1"]}}}]
    assert render_op(AddElements("i", SetKind.IFNAME, ()), NOW) == []
    assert render_op(DeleteElements("i", SetKind.IFNAME, ()), NOW) == []


def _elements(n: int, start: int = 0) -> tuple[object, ...]:
    return tuple(MapElement(start + i, "c", NOW, f"u{i}") for i in range(n))


def test_small_plan_is_one_transaction_in_phase_order() -> None:
    plan = Plan(
        NOW,
        prelude=(AddTable(),),
        bulk=(AddElements("u", SetKind.VMAP4, _elements(10)),),
        main=(DeleteSet("x"),),
    )
    assert list(split_transactions(plan, 10)) == [plan.ops()]
    assert list(split_transactions(Plan(NOW), 10)) == []


def test_large_plan_splits_bulk_only() -> None:
    bulk = (
        AddElements("u", SetKind.VMAP4, _elements(250)),
        AddElements("v", SetKind.VMAP4, _elements(30, 1000)),
        AddElements("w", SetKind.VMAP4, _elements(95, 2000)),
    )
    main = (DeleteElements("u", SetKind.VMAP4, _elements(5, 5000)), DeleteChain("old"))
    plan = Plan(NOW, prelude=(AddTable(),), bulk=bulk, main=main)
    txns = list(split_transactions(plan, 100))
    assert txns[0] == (AddTable(),)
    assert txns[-1] == main
    pieces = txns[1:-1]
    sizes = [sum(len(op.elements) for op in piece if isinstance(op, AddElements)) for piece in pieces]
    assert sizes == [100, 100, 100, 75]
    flat = [
        (op.set_name, e)
        for piece in pieces
        for op in piece
        if isinstance(op, AddElements)
        for e in op.elements
    ]
    assert flat == [(op.set_name, e) for op in bulk for e in op.elements]


def test_chunk_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        list(split_transactions(Plan(NOW), 0))
