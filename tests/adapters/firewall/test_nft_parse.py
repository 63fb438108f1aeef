"""Parsing of `nft -j list table inet userseg` (canned output of nftables 1.0.6; pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from userseg.adapters.firewall.nft_parse import (
    FOREIGN_TARGET_PREFIX,
    ForeignSetSpec,
    InconsistentListing,
    NftParseError,
    classify_set,
    parse_table,
    proto_number,
)
from userseg.core.table import NO_EXPIRY, ActualState, BaseHook, MapElement, SetKind, SetSpec

from . import a4, a6, box, net

READ = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
META = {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}
T = {"family": "inet", "table": "userseg"}


def _set(name: str, type_: Any, elem: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    body = {**T, "name": name, "type": type_, "handle": 3, **extra}
    if elem is not None:
        body["elem"] = elem
    return {"map" if "map" in extra else "set": body}


DEST = ["ipv4_addr", "inet_proto", "inet_service"]
LISTING: dict[str, Any] = {
    "nftables": [
        META,
        {"table": {"family": "inet", "name": "userseg", "handle": 1}},
        _set(
            "d4",
            DEST,
            [
                {"concat": [{"prefix": {"addr": "198.18.1.0", "len": 24}}, "tcp", {"range": [80, 90]}]},
                {"concat": ["198.18.5.5", "udp", 53]},
                {"concat": [{"range": ["198.18.6.1", "198.18.6.3"]}, "icmp", {"range": [0, 65535]}]},
            ],
            flags=["interval"],
        ),
        _set(
            "d6",
            ["ipv6_addr", "inet_proto", "inet_service"],
            [{"concat": [{"range": ["2001:db8::1", "2001:db8::5"]}, "ipv6-icmp", {"range": [0, 65535]}]}],
            flags=["interval"],
        ),
        _set(
            "n4",
            "ipv4_addr",
            [
                {"prefix": {"addr": "198.18.0.0", "len": 25}},
                "198.18.2.1",
                {"range": ["198.18.3.1", "198.18.3.5"]},
            ],
            flags=["interval"],
        ),
        _set("n6", "ipv6_addr", [{"prefix": {"addr": "2001:db8:1::", "len": 112}}], flags=["interval"]),
        _set("ifs", "ifname", ["eth1", "veth0"]),
        _set("empty", "ifname"),
        _set(
            "user4",
            "ipv4_addr",
            [
                [
                    {"elem": {"val": "198.18.0.1", "timeout": 3600, "expires": 3599, "comment": "alice"}},
                    {"goto": {"target": "c1"}},
                ],
                [{"elem": {"val": "198.18.0.2", "timeout": 100, "expires": 99}}, {"jump": {"target": "c1"}}],
                ["198.18.0.3", {"goto": {"target": "c1"}}],
                [{"elem": {"val": "198.18.0.4", "timeout": 10, "expires": 9}}, {"accept": None}],
            ],
            map="verdict",
            flags=["timeout"],
        ),
        _set(
            "user6",
            "ipv6_addr",
            [[{"elem": {"val": "2001:db8::7", "timeout": 100, "expires": 99}}, {"goto": {"target": "c1"}}]],
            map="verdict",
            flags=["timeout"],
        ),
        _set("odd", "ether_addr"),
        _set("sized", "ipv4_addr", ["198.18.0.1"], size=10),
        {"chain": {**T, "name": "c1", "handle": 1}},
        {
            "chain": {
                **T,
                "name": "forward",
                "handle": 2,
                "type": "filter",
                "hook": "forward",
                "prio": 0,
                "policy": "accept",
            }
        },
        {
            "chain": {
                **T,
                "name": "inp",
                "handle": 3,
                "type": "filter",
                "hook": "input",
                "prio": -10,
                "policy": "drop",
            }
        },
        {"rule": {**T, "chain": "c1", "handle": 7, "comment": "us:x", "expr": [{"accept": None}]}},
        {"rule": {**T, "chain": "forward", "handle": 8, "comment": "us:a", "expr": [{"accept": None}]}},
        {"rule": {**T, "chain": "forward", "handle": 9, "expr": [{"drop": None}]}},
        {"rule": {**T, "chain": "forward", "handle": 10, "comment": "us:b", "expr": [{"accept": None}]}},
        {"table": {"family": "inet", "name": "other", "handle": 4}},
        {"chain": {"family": "inet", "table": "other", "name": "c1", "handle": 1}},
        {"chain": {"family": "ip", "table": "userseg", "name": "zz", "handle": 1}},
    ]
}


@pytest.fixture(scope="module")
def state() -> ActualState:
    return parse_table(LISTING, READ)


def test_sets_are_classified(state: ActualState) -> None:
    kinds = {name: spec.kind for name, spec in state.sets.items() if type(spec) is SetSpec}
    assert kinds == {
        "d4": SetKind.DEST4,
        "d6": SetKind.DEST6,
        "n4": SetKind.NET4,
        "n6": SetKind.NET6,
        "ifs": SetKind.IFNAME,
        "empty": SetKind.IFNAME,
        "user4": SetKind.VMAP4,
        "user6": SetKind.VMAP6,
    }


def test_foreign_sets_never_equal_a_set_we_want(state: ActualState) -> None:
    odd, sized = state.sets["odd"], state.sets["sized"]
    assert isinstance(odd, ForeignSetSpec) and isinstance(sized, ForeignSetSpec)
    assert odd != SetSpec("odd", odd.kind)
    assert sized != SetSpec("sized", SetKind.NET4)
    assert "odd" not in state.elements  # unknown type: no elements
    assert state.elements["sized"] == frozenset({net("198.18.0.1")})  # same key type: still decoded


def test_dest_elements_normalise_prefixes_ranges_and_protocol_names(state: ActualState) -> None:
    assert state.elements["d4"] == frozenset(
        {box("198.18.1.0/24", 6, (80, 90)), box("198.18.5.5", 17, (53, 53)), box("198.18.6.1-198.18.6.3", 1)}
    )
    assert state.elements["d6"] == frozenset({box("2001:db8::1-2001:db8::5", 58)})


def test_net_and_ifname_elements(state: ActualState) -> None:
    assert state.elements["n4"] == frozenset(
        {net("198.18.0.0/25"), net("198.18.2.1"), net("198.18.3.1-198.18.3.5")}
    )
    assert state.elements["n6"] == frozenset({net("2001:db8:1::/112")})
    assert state.elements["ifs"] == frozenset({"eth1", "veth0"})
    assert state.elements["empty"] == frozenset()


def test_map_elements_carry_target_and_expiry(state: ActualState) -> None:
    got = {e.addr: e for e in state.elements["user4"] if isinstance(e, MapElement)}
    assert got[a4("198.18.0.1")] == MapElement(
        a4("198.18.0.1"), "c1", READ + timedelta(seconds=3599), "alice"
    )
    assert got[a4("198.18.0.2")].target == FOREIGN_TARGET_PREFIX + "jump c1"
    assert got[a4("198.18.0.3")].expires_at == NO_EXPIRY
    assert got[a4("198.18.0.4")].target == FOREIGN_TARGET_PREFIX + "accept"
    assert state.elements["user6"] == frozenset(
        {MapElement(a6("2001:db8::7"), "c1", READ + timedelta(seconds=99), "")}  # no comment, no user
    )


def test_chains_list_comments_in_order_with_blanks_for_foreign_rules(state: ActualState) -> None:
    assert set(state.chains) == {"c1", "forward", "inp"}  # other tables and families ignored
    assert state.chains["c1"].signatures == ("us:x",)
    assert state.chains["c1"].base is None
    assert state.chains["forward"].signatures == ("us:a", "", "us:b")
    assert state.chains["forward"].base == BaseHook("forward", 0, "accept")
    assert state.chains["inp"].base == BaseHook("input", -10, "drop")
    assert state.chains["inp"].signatures == ()


def test_absent_table_is_empty() -> None:
    assert parse_table({"nftables": [META]}, READ) == ActualState.empty()
    assert parse_table([META], READ) == ActualState.empty()


def test_an_unparseable_element_makes_the_set_foreign() -> None:
    doc = {
        "nftables": [
            {"table": {"family": "inet", "name": "userseg"}},
            _set("n", "ipv4_addr", ["*"], flags=["interval"]),
        ]
    }
    spec = parse_table(doc, READ).sets["n"]
    assert isinstance(spec, ForeignSetSpec) and "unrecognised element" in spec.declaration


def test_garbage_is_refused_with_a_message() -> None:
    with pytest.raises(NftParseError, match="no 'nftables' array"):
        parse_table({"foo": []}, READ)
    with pytest.raises(NftParseError, match="unexpected listing item"):
        parse_table({"nftables": [{"a": 1, "b": 2}]}, READ)


@pytest.mark.parametrize(
    ("value", "number"), [("tcp", 6), ("udp", 17), ("icmp", 1), ("ipv6-icmp", 58), (47, 47), ("132", 132)]
)
def test_protocol_names(value: object, number: int) -> None:
    assert proto_number(value) == number


def test_classify_requires_exact_flags() -> None:
    spec, kind = classify_set(
        {**T, "name": "m", "type": "ipv4_addr", "map": "verdict", "flags": ["timeout", "interval"]}
    )
    assert isinstance(spec, ForeignSetSpec) and kind is SetKind.VMAP4
    spec, kind = classify_set({**T, "name": "m", "type": "ipv4_addr", "map": "verdict", "flags": ["timeout"]})
    assert spec == SetSpec("m", SetKind.VMAP4) and kind is SetKind.VMAP4


def test_a_key_listed_twice_means_a_rehash_raced_the_dump() -> None:
    twice = [[{"elem": {"val": "198.18.0.1", "timeout": 9, "expires": 8}}, {"goto": {"target": "c"}}]] * 2
    doc = {
        "nftables": [
            {"table": {"family": "inet", "name": "userseg"}},
            _set("u", "ipv4_addr", twice, map="verdict", flags=["timeout"]),
        ]
    }
    with pytest.raises(InconsistentListing, match="2 elements but 1 distinct"):
        parse_table(doc, READ)


# ---------------------------------------------------------------- the netlink reader's decoders


def _elem(key: bytes, end: bool = False) -> bytes:
    from userseg.adapters.firewall.nfnetlink import nla as _nla

    return _nla(1, _nla(1, key)) + (_nla(3, (1).to_bytes(4, "big")) if end else b"")


def test_netlink_intervals_pair_starts_with_exclusive_ends() -> None:
    from userseg.adapters.firewall.nft_decode import _decode_intervals

    def k(text: str) -> bytes:
        return a4(text).to_bytes(4, "big")

    raw = [  # rbtree order (descending), nft's 0.0.0.0 end placeholder, an interval open to the top
        _elem(k("255.255.255.0")),
        _elem(k("198.18.3.6"), end=True),
        _elem(k("198.18.3.1")),
        _elem(k("198.18.0.128"), end=True),
        _elem(k("198.18.0.128")),
        _elem(k("198.18.1.0"), end=True),
        _elem(k("198.18.0.0")),
        _elem(k("0.0.0.0"), end=True),
    ]
    got = _decode_intervals(SetKind.NET4, raw)
    assert got == frozenset(
        {
            net("198.18.0.0/25"),
            net("198.18.0.128/25"),
            net("198.18.3.1-198.18.3.5"),
            net("255.255.255.0/24"),
        }
    )


def test_netlink_rule_comment_is_read_from_userdata() -> None:
    from userseg.adapters.firewall.nft_decode import _comment

    assert _comment(b"\x00\x05us:x\x00") == "us:x"
    assert _comment(b"\x07\x02ab\x00\x03xy\x00") == "xy"
    assert _comment(b"") == ""
