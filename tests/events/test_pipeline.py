"""The ingest pipeline with a real store (SQLite) and the reconciler over the fake firewall."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.core.strategies import NOW
from tests.test_reconciler import WEB, Clock, company
from userseg.adapters.firewall.fake import FakeFirewall
from userseg.core.ingest import MappingBook
from userseg.core.ingest_rules import IngestRules, SourceRules
from userseg.events.model import EventKind, LoginEvent, Rejected, Skipped
from userseg.events.pipeline import IngestPipeline
from userseg.model import Mapping, User, ip
from userseg.reconciler import Reconciler
from userseg.store import Store

RULES = IngestRules(sources={"dc": SourceRules("dc"), "vpn": SourceRules("vpn")})


def logon(user: str, addr: str, at: float = 0, source: str = "dc", **kw: object) -> LoginEvent:
    kind = EventKind(str(kw.pop("kind", "logon")))
    return LoginEvent(
        user=user,
        domain="LAB",
        ip=ip(addr),
        time=NOW + timedelta(seconds=at),
        kind=kind,
        source=source,
        event_id=4624 if kind is EventKind.LOGON else None,  # a logoff as the HTTP API sends it
        logon_type=3,
        host="dc1",
    )


class World:
    def __init__(self, tmp: Path) -> None:
        self.store = Store(f"sqlite:///{tmp / 'u.db'}")
        self.store.upgrade()
        self.fw = FakeFirewall()
        self.rec = Reconciler(self.fw, Clock())
        snap = company()
        self.rec.full_sync(
            replace(snap, users={**snap.users, "dave": User("dave", groups=frozenset({"it"}))})
        )
        self.full_syncs = threading.Event()
        self.pipeline = self.new_pipeline()

    def new_pipeline(self, **kw: object) -> IngestPipeline:
        book = MappingBook(RULES, self.store.mappings(active_at=NOW), self.store.shared_marks())
        p = IngestPipeline(
            self.store,
            book,
            self.rec,
            Clock(),
            on_full_sync_needed=self.full_syncs.set,
            **kw,  # type: ignore[arg-type]
        )
        p.start()
        return p

    def verdict(self, addr: str) -> str:
        return self.fw.evaluate("x", addr, WEB, 6, 80)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.pipeline.stop()
    w.store.close()


def test_a_logon_reaches_store_and_kernel_with_position_and_counters(world: World) -> None:
    assert world.verdict("198.18.10.50") != "accept"
    world.pipeline.emit("dc", logon("BOB", "198.18.10.50"), position='{"offset": 120}')
    world.pipeline.emit("dc", Skipped("event 4672 is not a logon event"), position='{"offset": 240}')
    world.pipeline.emit("dc", Rejected("not JSON"), position='{"offset": 300}')
    assert world.pipeline.flush()
    assert world.verdict("198.18.10.50") == "accept"  # bob is in finance: one element, no full sync
    assert not world.full_syncs.is_set()
    [m] = world.store.mappings()
    assert (str(m.ip), m.user, m.source, m.provenance["event_id"]) == ("198.18.10.50", "bob", "dc", "4624")
    state = world.store.source_states()["dc"]
    assert state.position == '{"offset": 300}'
    assert state.counters["received"] == 3 and state.counters["mapped"] == 1
    assert state.counters["skipped"] == 1 and state.counters["rejected"] == 1
    assert state.last_event_at == NOW


def test_replacement_logoff_and_shared_reach_the_kernel(world: World) -> None:
    p = world.pipeline
    p.emit("dc", logon("bob", "198.18.10.50", 0))
    p.emit("dc", logon("dave", "198.18.10.50", 1))  # not in finance: replaces bob
    assert p.flush()
    assert world.verdict("198.18.10.50") != "accept"
    p.emit("dc", logon("bob", "198.18.10.51", 2))
    p.emit("dc", logon("bob", "198.18.10.51", 3, kind="logoff"))
    p.emit("dc", logon("alice", "198.18.10.52", 4))
    p.emit("dc", logon("bob", "198.18.10.52", 5))
    p.emit("dc", logon("carol", "198.18.10.52", 6))  # third user in 10 min: shared
    assert p.flush()
    assert world.verdict("198.18.10.51") != "accept"
    assert world.verdict("198.18.10.52") != "accept"
    assert {str(m.ip): m.user for m in world.store.mappings()} == {"198.18.10.50": "dave"}
    assert [str(s.ip) for s in world.store.shared_marks()] == ["198.18.10.52"]
    c = p.counters()["dc"]
    assert c["removed_logoff"] == 1 and c["removed_shared"] == 1 and c["shared"] == 1 and c["replaced"] == 2


def test_a_user_without_a_class_asks_for_a_full_sync(world: World) -> None:
    world.pipeline.emit("dc", logon("stranger", "198.18.10.60"))
    assert world.pipeline.flush()
    assert world.full_syncs.is_set()
    assert [m.user for m in world.store.mappings()] == ["stranger"]  # stored before the sync reads it


def test_sightings_and_ignored_accounts(world: World) -> None:
    for i in range(6):
        world.pipeline.emit("dc", logon("svc-backup", f"198.18.10.{70 + i}", i))
    world.pipeline.emit("dc", logon("WS1$", "198.18.10.80"))
    assert world.pipeline.flush()
    seen = world.store.sightings_since(NOW - timedelta(hours=1))
    assert {s.ip for s in seen if s.user == "svc-backup"} == {f"198.18.10.{70 + i}" for i in range(6)}
    assert not [s for s in seen if s.user == "ws1$"]  # ignored accounts are not sightings
    assert world.pipeline.counters()["dc"]["ignored_ignored_user"] == 1


def test_a_full_queue_drops_non_blocking_emits_and_counts_them(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.pipeline.stop()
    blocked = IngestPipeline(w.store, MappingBook(RULES), w.rec, Clock(), queue_size=2)  # not started
    assert blocked.emit("udp", logon("bob", "198.18.10.1"), block=False)
    assert blocked.emit("udp", logon("bob", "198.18.10.2"), block=False)
    assert not blocked.emit("udp", logon("bob", "198.18.10.3"), block=False)
    assert blocked.counters()["udp"]["dropped"] == 1
    blocked.start()
    blocked.stop()  # drains what was queued
    assert {str(m.ip) for m in w.store.mappings()} == {"198.18.10.1", "198.18.10.2"}
    w.store.close()


def test_stop_commits_everything_queued(world: World) -> None:
    for i in range(500):
        world.pipeline.emit("dc", logon("bob", f"198.18.11.{i % 250}", i / 10), position=str(i))
    world.pipeline.stop()
    assert world.store.source_states()["dc"].position == "499"
    assert len(world.store.mappings()) == 250


def test_a_restarted_pipeline_continues_from_the_store(world: World) -> None:
    world.pipeline.emit("dc", logon("bob", "198.18.10.50", 100))
    world.pipeline.stop()
    world.pipeline = world.new_pipeline()
    world.pipeline.emit("dc", logon("carol", "198.18.10.50", 50))  # older than bob's: ignored
    assert world.pipeline.flush()
    assert [m.user for m in world.store.mappings()] == ["bob"]


def test_reload_adopts_changes_made_by_others(world: World) -> None:
    world.pipeline.emit("dc", logon("bob", "198.18.10.50", 0))
    assert world.pipeline.flush()
    world.store.remove_mapping(ip("198.18.10.50"))  # e.g. `userseg map del`
    world.store.put_mapping(
        Mapping(ip("198.18.10.51"), "alice", "manual", NOW, NOW, NOW + timedelta(hours=1))
    )
    assert world.pipeline.reload(timeout=5)
    assert set(map(str, world.pipeline.book.mappings)) == {"198.18.10.51"}
    world.pipeline.emit("dc", logon("bob", "198.18.10.50", 1))
    assert world.pipeline.flush()
    assert {str(m.ip) for m in world.store.mappings()} == {"198.18.10.50", "198.18.10.51"}


def test_expired_mappings_leave_store_and_book(tmp_path: Path) -> None:
    class Later:
        now_value: datetime = NOW

        def now(self) -> datetime:
            return self.now_value

    w = World(tmp_path)
    w.pipeline.stop()
    clock = Later()
    p = IngestPipeline(w.store, MappingBook(RULES), w.rec, clock, housekeeping_interval=0.01)
    p.start()
    try:
        p.emit("dc", logon("bob", "198.18.10.50"))
        assert p.flush()
        clock.now_value = NOW + timedelta(minutes=46)
        assert p.flush() and p.flush()
        assert w.store.mappings() == [] and p.book.mappings == {}
    finally:
        p.stop()
        w.store.close()
