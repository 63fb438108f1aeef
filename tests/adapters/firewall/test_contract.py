"""The Firewall contract, run against the in-memory fake and real nftables in a namespace.

Every case reads back through the port and plans with core.diff, so what is
tested is the loop the reconciler runs: read -> diff -> apply -> read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from userseg.adapters.firewall.fake import FakeFirewall, ForeignRule
from userseg.adapters.firewall.nft import NftFirewall
from userseg.adapters.firewall.nft_render import ElementEncoder, transaction
from userseg.core.diff import diff
from userseg.core.table import (
    ActualState,
    AddElements,
    DeleteElements,
    MapElement,
    Plan,
    SetKind,
    SetSpec,
    TableSpec,
)
from userseg.ports import FirewallError

from . import a4, assert_states_match, needs_root, new_netns, realistic_spec, run, with_users

OTHER_TABLE = """
table inet other {
    set blocked { type ipv4_addr; elements = { 198.18.250.1, 198.18.250.2 } }
    chain input { type filter hook input priority 10; policy accept;
        ip saddr @blocked counter drop comment "not ours"
    }
}
"""


@dataclass
class World:
    """One backend plus the means to change it behind the adapter's back."""

    kind: str
    firewall: Any
    netns: str | None = None
    extra: list[Any] = field(default_factory=list)
    make: Callable[[int], Any] = field(default=lambda n: None)

    # -------------------------------------------------------- drift
    def nft(self, *args: str, input: str | None = None) -> str:
        assert self.netns is not None
        return run("ip", "netns", "exec", self.netns, "nft", *args, input=input)

    def delete_element(self, set_name: str, kind: SetKind, element: object) -> None:
        if self.kind == "fake":
            self.firewall.tamper_delete_element(set_name, element)
            return
        cmd = {
            "delete": {
                "element": {
                    "family": "inet",
                    "table": "userseg",
                    "name": set_name,
                    "elem": [ElementEncoder(kind).key(element)],
                }
            }
        }
        self.nft("-j", "-f", "-", input=json.dumps(transaction([cmd])))

    def recomment_element(self, set_name: str, kind: SetKind, element: MapElement, user: str) -> None:
        """The same element (key, verdict, timeout) under another user's name."""
        if self.kind == "fake":
            self.firewall.tamper_add_element(set_name, element._replace(user=user))
            return
        self.delete_element(set_name, kind, element)
        add = {"add": {"element": {"family": "inet", "table": "userseg", "name": set_name, "elem": []}}}
        add["add"]["element"]["elem"] = [ElementEncoder(kind, now_utc()).element(element._replace(user=user))]
        self.nft("-j", "-f", "-", input=json.dumps(transaction([add])))

    def flush_chain(self, chain: str) -> None:
        if self.kind == "fake":
            self.firewall.tamper_flush_chain(chain)
        else:
            self.nft("flush", "chain", "inet", "userseg", chain)

    def insert_foreign_rule(self, chain: str) -> None:
        if self.kind == "fake":
            self.firewall.tamper_insert_rule(chain, ForeignRule("accept"))
        else:
            self.nft("insert", "rule", "inet", "userseg", chain, "ip", "saddr", "198.18.99.1", "accept")

    def delete_table(self) -> None:
        if self.kind == "fake":
            self.firewall.tamper_delete_table()
        else:
            self.nft("delete", "table", "inet", "userseg")

    def add_foreign_set(self) -> None:
        if self.kind == "fake":
            self.firewall.tamper_add_set(SetSpec("intruder", SetKind.NET4))
        else:
            self.nft("add", "set", "inet", "userseg", "intruder", "{ type ether_addr; }")

    def retype_set(self) -> None:
        """clients_if (ifname) becomes an ipv4_addr set: only a rebuild can fix that."""
        if self.kind == "fake":
            self.firewall.tamper_flush_chain("forward")
            self.firewall.tamper_add_set(SetSpec("clients_if", SetKind.NET4))
        else:
            self.nft("flush", "chain", "inet", "userseg", "forward")
            self.nft("delete", "set", "inet", "userseg", "clients_if")
            self.nft("add", "set", "inet", "userseg", "clients_if", "{ type ipv4_addr; }")

    # -------------------------------------------------------- observation
    def listing(self) -> Any:
        """nft's own JSON of our table minus handles and times, in a stable order (nft only)."""
        if self.kind == "fake":
            return None
        doc = json.loads(self.nft("-j", "list", "table", "inet", "userseg"))
        items = []
        for item in doc["nftables"][1:]:
            ((what, body),) = item.items()
            body = {k: v for k, v in body.items() if k != "handle"}
            if "elem" in body:
                body["elem"] = sorted((_strip_times(e) for e in body["elem"]), key=json.dumps)
            items.append((what, body))
        # objects sorted by kind and name; rules keep their order within a chain (stable sort)
        return sorted(items, key=lambda i: (i[0], i[1].get("chain", i[1].get("name"))))

    def other_table(self) -> str | None:
        return None if self.kind == "fake" else self.nft("list", "table", "inet", "other")


def _strip_times(elem: Any) -> Any:
    if isinstance(elem, list) and isinstance(elem[0], dict) and "elem" in elem[0]:
        return [elem[0]["elem"]["val"], elem[0]["elem"].get("comment"), elem[1]]
    return elem


@pytest.fixture(params=["fake", pytest.param("nft", marks=[pytest.mark.netns, needs_root])])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    if request.param == "fake":
        fake = FakeFirewall()
        yield World("fake", fake, make=lambda n: FakeFirewall(chunk_elements=n))
        return
    with new_netns() as ns:
        run("ip", "netns", "exec", ns, "nft", "-f", "-", input=OTHER_TABLE)
        other_before = run("ip", "netns", "exec", ns, "nft", "list", "table", "inet", "other")
        fw = NftFirewall(netns=ns)
        w = World("nft", fw, ns)

        def make(n: int) -> NftFirewall:
            extra = NftFirewall(netns=ns, chunk_elements=n)
            w.extra.append(extra)
            return extra

        w.make = make
        try:
            yield w
            assert w.other_table() == other_before, "table inet other was modified"
        finally:
            for f in [fw, *w.extra]:
                f.close()


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def first(elements: frozenset[object]) -> object:
    """A deterministic member (elements of one set share a type but mypy cannot know it)."""
    return min(elements, key=repr)


def converge(fw: Any, spec: TableSpec, now: datetime) -> ActualState:
    fw.apply(diff(spec, fw.read(), now))
    return fw.read()  # type: ignore[no-any-return]


# ---------------------------------------------------------------- (1) apply twice


def test_apply_twice_is_a_noop(world: World) -> None:
    now = now_utc()
    spec = realistic_spec(now)
    state = converge(world.firewall, spec, now)
    assert state.table_present
    assert set(state.sets) == set(spec.sets)
    assert diff(spec, world.firewall.read(), now).is_empty
    world.firewall.apply(diff(spec, world.firewall.read(), now))  # an empty plan is fine too
    assert diff(spec, world.firewall.read(), now).is_empty


def test_read_of_missing_table_is_empty(world: World) -> None:
    assert world.firewall.read() == ActualState.empty()


# ---------------------------------------------------------------- (2) change then revert


def test_change_then_revert_reads_back_identically(world: World) -> None:
    now = now_utc()
    a, b = realistic_spec(now, "a"), realistic_spec(now, "b")
    first = converge(world.firewall, a, now)
    listing = world.listing()
    changed = converge(world.firewall, b, now)
    assert diff(b, changed, now).is_empty
    assert "c_eng" not in changed.chains and "c_eng_4" not in changed.sets
    reverted = converge(world.firewall, a, now)
    assert_states_match(reverted, first)
    assert world.listing() == listing


# ---------------------------------------------------------------- (3) drift is repaired


DRIFTS: dict[str, Callable[[World, TableSpec], None]] = {
    "element deleted": lambda w, s: w.delete_element("user4", SetKind.VMAP4, first(s.elements["user4"])),
    "element names another user": lambda w, s: w.recomment_element(
        "user4",
        SetKind.VMAP4,
        first(s.elements["user4"]),  # type: ignore[arg-type]
        "mallory",
    ),
    "dest box deleted": lambda w, s: w.delete_element("c_fin_4", SetKind.DEST4, first(s.elements["c_fin_4"])),
    "base chain flushed": lambda w, s: w.flush_chain("forward"),
    "foreign rule inserted": lambda w, s: w.insert_foreign_rule("police"),
    "table deleted": lambda w, s: w.delete_table(),
    "foreign set added": lambda w, s: w.add_foreign_set(),
    "set retyped": lambda w, s: w.retype_set(),
}


@pytest.mark.parametrize("drift", list(DRIFTS))
def test_drift_is_repaired_exactly(world: World, drift: str) -> None:
    now = now_utc()
    spec = realistic_spec(now)
    good = converge(world.firewall, spec, now)
    listing = world.listing()
    DRIFTS[drift](world, spec)
    drifted = world.firewall.read()
    assert drifted != good
    assert not diff(spec, drifted, now).is_empty
    repaired = converge(world.firewall, spec, now)
    assert_states_match(repaired, good)
    assert world.listing() == listing
    assert diff(spec, repaired, now).is_empty


# ---------------------------------------------------------------- (4) failure is atomic


def test_failing_last_op_rolls_back_the_whole_transaction(world: World) -> None:
    now = now_utc()
    spec = realistic_spec(now)
    before = converge(world.firewall, spec, now)
    listing = world.listing()
    ghost = MapElement(a4("198.18.0.250"), "c_fin", now + timedelta(minutes=5), "ghost")
    plan = Plan(
        now=now,
        main=(
            AddElements(
                "user4",
                SetKind.VMAP4,
                (MapElement(a4("198.18.0.77"), "c_fin", now + timedelta(hours=1), "alice"),),
            ),
            DeleteElements("clients_if", SetKind.IFNAME, ("veth-c1",)),
            DeleteElements("user4", SetKind.VMAP4, (ghost,)),  # not there: the kernel refuses
        ),
    )
    with pytest.raises(FirewallError, match="No such file or directory"):
        world.firewall.apply(plan)
    assert_states_match(world.firewall.read(), before, timedelta(seconds=1))
    assert world.listing() == listing


def test_adding_an_existing_element_is_refused(world: World) -> None:
    now = now_utc()
    spec = realistic_spec(now)
    before = converge(world.firewall, spec, now)
    again = Plan(now=now, main=(AddElements("user4", SetKind.VMAP4, (first(spec.elements["user4"]),)),))
    with pytest.raises(FirewallError, match="File exists"):
        world.firewall.apply(again)
    assert_states_match(world.firewall.read(), before, timedelta(seconds=1))


def test_a_comment_nft_cannot_hold_is_refused_before_anything_is_written(world: World) -> None:
    now = now_utc()
    spec = realistic_spec(now)
    before = converge(world.firewall, spec, now)
    exp = now + timedelta(hours=1)
    fine, bad = (
        MapElement(a4(f"198.18.0.{i}"), "c_fin", exp, u) for i, u in ((80, "alice"), (81, "x" * 129))
    )
    with pytest.raises(ValueError, match="at most 128 bytes"):
        world.firewall.apply(Plan(now=now, main=(AddElements("user4", SetKind.VMAP4, (fine, bad)),)))
    assert_states_match(world.firewall.read(), before, timedelta(seconds=1))


def test_deleting_a_referenced_chain_is_refused(world: World) -> None:
    from userseg.core.table import DeleteChain

    now = now_utc()
    before = converge(world.firewall, realistic_spec(now), now)
    with pytest.raises(FirewallError, match="Device or resource busy"):
        world.firewall.apply(Plan(now=now, main=(DeleteChain("c_eng"),)))  # map elements goto it
    assert_states_match(world.firewall.read(), before, timedelta(seconds=1))


# ---------------------------------------------------------------- (6) chunked apply


def test_chunked_apply_equals_single_transaction(world: World) -> None:
    now = now_utc()
    spec = with_users(realistic_spec(now), now, 1000)
    chunked = world.make(100)
    chunked.apply(diff(spec, chunked.read(), now))
    assert chunked.transactions_run >= 1000 // 100 + 2  # prelude, >= 10 bulk pieces, main
    got = chunked.read()
    assert len(got.elements["user4"]) == 1006
    if world.kind == "nft":
        world.delete_table()
        single = world.make(20000)
    else:
        single = world.make(20000)
    single.apply(diff(spec, single.read(), now))
    assert single.transactions_run == 1
    assert_states_match(got, single.read())
    assert diff(spec, got, now).is_empty


# ---------------------------------------------------------------- (7) expiry


def test_map_element_expiry_reads_back_within_two_seconds(world: World) -> None:
    now = datetime.now(UTC)
    spec = realistic_spec(now)
    soon = MapElement(a4("198.18.0.99"), "c_fin", now + timedelta(seconds=600), "soon")
    spec = TableSpec(spec.sets, {**spec.elements, "user4": spec.elements["user4"] | {soon}}, spec.chains)
    state = converge(world.firewall, spec, now)
    (got,) = [e for e in state.elements["user4"] if isinstance(e, MapElement) and e.addr == soon.addr]
    assert abs(got.expires_at - soon.expires_at) <= timedelta(seconds=2)
    assert got.target == "c_fin"


# ---------------------------------------------------------------- nft only


@pytest.mark.netns
@needs_root
def test_netlink_and_json_readers_agree() -> None:
    now = now_utc()
    spec = with_users(realistic_spec(now), now, 300)
    with new_netns() as ns:
        fast, ref = NftFirewall(ns), NftFirewall(ns, reader="json")
        try:
            fast.apply(diff(spec, fast.read(), now))
            run("ip", "netns", "exec", ns, "nft", "insert", "rule", "inet", "userseg", "police", "counter")
            run(
                "ip",
                "netns",
                "exec",
                ns,
                "nft",
                "add",
                "element",
                "inet",
                "userseg",
                "user4",
                "{ 198.18.99.1 : jump c_fin, 198.18.99.2 timeout 1h : accept, "
                f'198.18.99.3 timeout 1h comment "{"é" * 64}" : goto c_fin, '
                '198.18.99.4 timeout 1h comment "o\'brien zoë" : goto c_eng }',
            )
            run(
                "ip",
                "netns",
                "exec",
                ns,
                "nft",
                "add",
                "set",
                "inet",
                "userseg",
                "odd",
                "{ type ipv4_addr; size 10; }",
            )
            a, b = fast.read(), ref.read()
            assert_states_match(a, b, timedelta(seconds=2))
            targets = {e.target for e in a.elements["user4"] if isinstance(e, MapElement)}
            assert {"!jump c_fin", "!accept"} <= targets
            users = {e.addr: e.user for e in a.elements["user4"] if isinstance(e, MapElement)}
            assert users[a4("198.18.99.3")] == "é" * 64  # 128 bytes: nft's longest comment
            assert users[a4("198.18.99.4")] == "o'brien zoë"
            assert users[a4("198.18.99.1")] == ""
            assert users[a4("198.18.0.11")] == 'o\'brien "zoë"'  # written by us, quotes and all
            assert a.chains["police"].signatures[0] == ""
            assert a.sets["odd"] != SetSpec("odd", SetKind.NET4)
        finally:
            fast.close()
            ref.close()


@pytest.mark.netns
@needs_root
def test_whole_story_leaves_other_table_byte_identical() -> None:
    """(5): everything above, in one namespace, next to somebody else's table."""
    now = now_utc()
    with new_netns() as ns:
        run("ip", "netns", "exec", ns, "nft", "-f", "-", input=OTHER_TABLE)
        before = run("ip", "netns", "exec", ns, "nft", "list", "table", "inet", "other")
        fw = NftFirewall(ns, chunk_elements=50)
        w = World("nft", fw, ns)
        try:
            a, b = realistic_spec(now), with_users(realistic_spec(now, "b"), now, 200)
            for spec in (a, b, a):
                converge(fw, spec, now)
            for drift in DRIFTS.values():
                drift(w, a)
                converge(fw, a, now)
            with pytest.raises(FirewallError):
                fw.apply(Plan(now=now, main=(DeleteElements("clients_if", SetKind.IFNAME, ("nope",)),)))
            fw.apply(Plan(now=now, main=(DeleteElements("clients_if", SetKind.IFNAME, ("veth-c1",)),)))
            assert diff(a, fw.read(), now).main
        finally:
            fw.close()
        after = run("ip", "netns", "exec", ns, "nft", "list", "table", "inet", "other")
        assert after == before


@pytest.mark.netns
@needs_root
def test_map_without_timeout_flag_is_rebuilt() -> None:
    now = now_utc()
    spec = realistic_spec(now)
    with new_netns() as ns, NftFirewall(ns) as fw:
        good = converge(fw, spec, now)
        nft = ("ip", "netns", "exec", ns, "nft")
        run(*nft, "flush", "chain", "inet", "userseg", "police")
        run(*nft, "delete", "map", "inet", "userseg", "user4")
        run(*nft, "add", "map", "inet", "userseg", "user4", "{ type ipv4_addr : verdict; }")
        assert fw.read().sets["user4"] != SetSpec("user4", SetKind.VMAP4)
        repaired = converge(fw, spec, now)
        assert_states_match(repaired, good)
