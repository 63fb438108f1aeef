"""User-map elements name their users, against real nftables in a namespace.

What is checked is what the kernel holds: the comment each writer (the raw
netlink batches and libnftables JSON) stores, as both readers (netlink dump and
`nft -j list`) and `nft list` show it; that another user on the same IP and class
rewrites the element in ONE commit (the kernel keeps an element's comment on a
plain add, so it must be delete + add, and the ruleset generation moves by one);
that the reconciler's fast path does so; and that the mappings can be recovered
from the kernel alone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest

from tests.core.test_compile import pol, world
from userseg.adapters.firewall.nft import NftFirewall
from userseg.adapters.firewall.nft_netlink import NfTablesReader
from userseg.core.diff import diff
from userseg.core.recover import RecoveredMapping, kernel_mappings
from userseg.core.table import AddElements, DeleteElements, MapElement, Plan, SetKind, TableSpec
from userseg.core.usermap import TRUNCATION_MARK, element_comment
from userseg.model import Snapshot
from userseg.netns import NetnsWorker
from userseg.reconciler import Reconciler

from . import a4, a6, assert_states_match, needs_root, new_netns, realistic_spec, run, with_users

pytestmark = [pytest.mark.netns, needs_root]
Writer = Literal["netlink", "json"]
HOSTILE = [
    "alice",
    'o\'brien "zoë"',  # quotes
    'back\\slash "}; flush ruleset',  # nft syntax as data
    "名前 ünïcödé",
    "é" * 64,  # 128 bytes: the longest comment nft takes
    element_comment("z" * 200),  # cut and marked
    "",  # no comment
]


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@contextmanager
def firewalls(ns: str, writer: Writer) -> Iterator[tuple[NftFirewall, NftFirewall]]:
    """(writer-under-test with the netlink reader, a second handle reading through JSON)."""
    fw, ref = NftFirewall(ns, bulk_writer=writer), NftFirewall(ns, reader="json")
    try:
        yield fw, ref
    finally:
        fw.close()
        ref.close()


def generation(ns: str) -> int:
    """The kernel's ruleset generation: it moves by one per committed transaction."""
    worker = NetnsWorker(ns, thread_name="test-gen")
    try:
        reader = worker.call(NfTablesReader)
        try:
            return worker.call(reader.generation)
        finally:
            worker.call(reader.close)
    finally:
        worker.close()


def users_of(fw: NftFirewall, set_name: str = "user4") -> dict[int, str]:
    return {e.addr: e.user for e in fw.read().elements[set_name] if isinstance(e, MapElement)}


def with_element(spec: TableSpec, old: MapElement, new: MapElement) -> TableSpec:
    return TableSpec(
        spec.sets, {**spec.elements, "user4": spec.elements["user4"] - {old} | {new}}, spec.chains
    )


@pytest.mark.parametrize("writer", ["netlink", "json"])
def test_comments_are_written_and_read_back_by_both_readers(writer: Writer) -> None:
    now = now_utc()
    exp = now + timedelta(minutes=30)
    v4 = tuple(MapElement(a4(f"198.18.5.{i}"), "c_fin", exp, u) for i, u in enumerate(HOSTILE, start=1))
    v6 = (MapElement(a6("2001:db8:1::99"), "c_fin", exp, HOSTILE[1]),)
    with new_netns() as ns, firewalls(ns, writer) as (fw, ref):
        fw.apply(diff(realistic_spec(now), fw.read(), now))
        fw.apply(
            Plan(now, main=(AddElements("user4", SetKind.VMAP4, v4), AddElements("user6", SetKind.VMAP6, v6)))
        )
        fast, slow = fw.read(), ref.read()
        assert_states_match(fast, slow)
        for e in (*v4, *v6):
            name = "user4" if e in v4 else "user6"
            (got,) = [g for g in fast.elements[name] if isinstance(g, MapElement) and g.addr == e.addr]
            assert got.user == e.user
        listing = run("ip", "netns", "exec", ns, "nft", "list", "map", "inet", "userseg", "user4")
        assert 'comment "alice" : goto c_fin' in listing
        assert 'comment "' + "z" * 125 + TRUNCATION_MARK + '"' in listing


@pytest.mark.parametrize("writer", ["netlink", "json"])
def test_another_user_on_the_same_ip_and_class_is_one_commit(writer: Writer) -> None:
    now = now_utc()
    spec = realistic_spec(now)
    with new_netns() as ns, firewalls(ns, writer) as (fw, ref):
        fw.apply(diff(spec, fw.read(), now))
        (old,) = [
            e for e in spec.elements["user4"] if isinstance(e, MapElement) and e.addr == a4("198.18.0.12")
        ]
        assert old.user == "user2" and old.target == "c_fin"
        # Why not in place: an add of the same key with another comment is accepted, and the
        # kernel (6.18) takes its timeout but keeps the old comment.
        run(
            "ip", "netns", "exec", ns, "nft", "add", "element", "inet", "userseg", "user4",
            '{ 198.18.0.12 timeout 30m comment "mallory" : goto c_fin }',
        )  # fmt: skip
        actual = fw.read()
        (kept,) = [e for e in actual.elements["user4"] if isinstance(e, MapElement) and e.addr == old.addr]
        assert kept.user == "user2" and kept.expires_at < old.expires_at - timedelta(minutes=10)

        new = old._replace(user="mallory")
        plan = diff(with_element(spec, old, new), actual, now)
        assert plan.main == (
            DeleteElements("user4", SetKind.VMAP4, (kept,)),
            AddElements("user4", SetKind.VMAP4, (new,)),
        )
        gen, runs = generation(ns), fw.transactions_run
        fw.apply(plan)
        assert generation(ns) == gen + 1  # one commit: no packet saw 198.18.0.12 unmapped
        assert fw.transactions_run == runs + 1
        assert users_of(fw)[old.addr] == users_of(ref)[old.addr] == "mallory"
        assert diff(with_element(spec, old, new), fw.read(), now).is_empty


def _company(now: datetime) -> Snapshot:
    """tests.core.test_compile's world, with mappings of the real time (the kernel counts)."""
    snap = world(
        [pol("fin-web", 10, "group:finance", "web", "allow"), pol("it-ssh", 20, "group:it", "ssh", "allow")]
    )
    hour = now + timedelta(hours=1)
    return replace(
        snap,
        mappings=tuple(replace(m, first_seen=now, last_seen=now, expires_at=hour) for m in snap.mappings),
    )


class WallClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def test_fast_path_rewrites_the_comment_and_the_kernel_alone_recovers_the_mappings() -> None:
    now = now_utc()
    snap = _company(now)
    alice, carol, new_ip = (ipaddress.ip_address(f"198.18.10.{i}") for i in (11, 13, 60))
    with new_netns() as ns, firewalls(ns, "netlink") as (fw, ref):
        rec = Reconciler(fw, WallClock())
        rec.full_sync(snap)
        want = [RecoveredMapping(m.ip, m.user, m.expires_at) for m in snap.mappings if m.user != "eve"]
        got = kernel_mappings(fw.read())
        assert [(m.ip, m.user) for m in got] == [(m.ip, m.user) for m in want]  # eve is disabled
        assert all(
            abs(g.expires_at - w.expires_at) <= timedelta(seconds=2) for g, w in zip(got, want, strict=True)
        )

        # carol's IP goes to alice: same class, so only the comment says anything changed
        assert (
            rec.desired is not None
            and rec.desired.mappings[carol].class_name == rec.desired.user_class["alice"]
        )
        gen, runs = generation(ns), fw.transactions_run
        assert rec.set_mappings(
            [(carol, ("alice", now + timedelta(hours=2))), (new_ip, ("bob", now + timedelta(hours=2)))]
        )
        assert generation(ns) == gen + 1 and fw.transactions_run == runs + 1  # the batch is one commit
        assert {u for ip, u in users_of(ref).items() if ip in (int(carol), int(new_ip))} == {"alice", "bob"}
        by_ip = {m.ip: m.user for m in kernel_mappings(fw.read())}
        assert by_ip == {
            alice: "alice",
            ipaddress.ip_address("198.18.10.12"): "bob",
            carol: "alice",
            new_ip: "bob",
        }


def test_renaming_every_user_of_a_big_table_is_one_netlink_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first sync after an upgrade rewrites every element (none had a comment): `main`, too
    big for the small-plan path, must still be one transaction, and go through netlink (libnftables
    spent ~25 s and 1.2 GB on 250k replacements)."""
    now = now_utc()
    spec = with_users(realistic_spec(now), now, 2_000)
    renamed = frozenset(
        e._replace(user=f"{e.user}.new") for e in spec.elements["user4"] if isinstance(e, MapElement)
    )
    later = TableSpec(spec.sets, {**spec.elements, "user4": renamed}, spec.chains)
    with new_netns() as ns, firewalls(ns, "netlink") as (fw, ref):
        fw.chunk_elements = 500
        fw.apply(diff(spec, fw.read(), now))
        plan = diff(later, fw.read(), now)
        assert not plan.bulk and plan.element_count() == 2 * len(renamed) > fw.chunk_elements

        def no_json(*args: object) -> None:
            raise AssertionError("element-only main went through libnftables")

        monkeypatch.setattr(fw, "_apply_json", no_json)
        gen = generation(ns)
        fw.apply(plan)
        assert generation(ns) == gen + 1
        assert diff(later, ref.read(), now).is_empty
