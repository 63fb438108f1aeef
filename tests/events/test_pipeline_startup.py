"""How the ingest pipeline's mapping book is loaded when the daemon starts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tests.core.strategies import NOW
from tests.events.test_pipeline import RULES
from tests.test_reconciler import Clock
from userseg.core.ingest import SharedMark
from userseg.events.pipeline import load_book
from userseg.events.service import IngestService
from userseg.events.settings import IngestSettings
from userseg.model import Mapping, ip
from userseg.store import Store
from userseg.store.ingest import IngestBatch


def mapping(addr: str, user: str, expires_in: timedelta = timedelta(hours=1)) -> Mapping:
    return Mapping(ip(addr), user, "dc", NOW, NOW, NOW + expires_in, {"event_id": "4624"})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'u.db'}")
    s.upgrade()
    yield s
    s.close()


def test_the_book_starts_from_the_active_mappings_and_shared_marks(store: Store) -> None:
    store.put_mappings(
        [
            mapping("198.18.10.1", "alice"),
            mapping("198.18.10.2", "bob", expires_in=timedelta(seconds=-1)),
            mapping("2001:db8:10::3", "carol"),
        ]
    )
    batch = IngestBatch()
    batch.mark_shared(SharedMark(ip("198.18.10.9"), ("dave", "erin", "fred"), NOW, NOW))
    store.commit_ingest(batch, NOW)

    book = load_book(store, RULES, NOW)
    assert sorted(str(a) for a in book.mappings) == ["198.18.10.1", "2001:db8:10::3"]
    assert book.mappings[ip("198.18.10.1")] == mapping("198.18.10.1", "alice")
    assert list(book.shared) == [ip("198.18.10.9")]


def test_the_book_takes_the_mappings_the_daemon_has_just_read(store: Store) -> None:
    """One read of the table at start-up: the book holds the snapshot's own Mapping objects."""
    store.put_mappings([mapping("198.18.10.1", "alice"), mapping("198.18.10.2", "bob")])
    _, active, *_ = store.snapshot_parts(NOW)

    book = load_book(store, RULES, NOW, active)
    assert all(book.mappings[m.ip] is m for m in active) and len(book.mappings) == 2

    # What it is given is what it holds: the table is not read a second time.
    elsewhere = mapping("198.18.10.7", "zoe")
    assert list(load_book(store, RULES, NOW, [elsewhere]).mappings.values()) == [elsewhere]


def test_the_ingest_service_passes_given_mappings_to_its_book(store: Store) -> None:
    store.put_mappings([mapping("198.18.10.1", "alice")])
    given = store.active_mappings(NOW)
    service = IngestService(IngestSettings(RULES), store, None, Clock(), mappings=given)
    assert service.pipeline.book.mappings[ip("198.18.10.1")] is given[0]
    read_itself = IngestService(IngestSettings(RULES), store, None, Clock())
    assert read_itself.pipeline.book.mappings == service.pipeline.book.mappings
