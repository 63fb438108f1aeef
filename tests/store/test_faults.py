"""Database failures classified from real SQLite errors, raised through a real Store."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from userseg.model import Mapping, ip
from userseg.store import Store, StoreError, engine, is_corruption, is_transient

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
ALICE = Mapping(ip("198.18.0.10"), "alice", "test", NOW, NOW, NOW + timedelta(hours=1))


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A migrated store whose connections give up on a lock after 50 ms, not 5 s."""
    original = engine._sqlite_on_connect

    def short_busy_timeout(dbapi_connection: Any, record: Any) -> None:
        original(dbapi_connection, record)
        dbapi_connection.execute("PRAGMA busy_timeout=50")

    monkeypatch.setattr(engine, "_sqlite_on_connect", short_busy_timeout)
    path = tmp_path / "userseg.db"
    with Store(f"sqlite:///{path}") as store:
        store.upgrade()
    yield path


def error_of(db: Path, action: str = "write") -> StoreError:
    with Store(f"sqlite:///{db}") as store, pytest.raises(StoreError) as info:
        if action == "write":
            store.put_mapping(ALICE)
        else:
            store.mappings()
    return info.value


def test_a_database_locked_by_another_writer_is_transient(db: Path) -> None:
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        start = time.monotonic()
        exc = error_of(db)
        assert time.monotonic() - start < 3  # the short busy timeout was in force
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert "locked" in str(exc)
    assert is_transient(exc) and not is_corruption(exc)
    with Store(f"sqlite:///{db}") as store:
        store.put_mapping(ALICE)  # and indeed it succeeds once the lock is gone


@pytest.mark.parametrize("action", ["read", "write"])
def test_a_truncated_file_is_corruption(db: Path, action: str) -> None:
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    exc = error_of(db, action)
    assert is_corruption(exc) and not is_transient(exc)


def test_a_file_overwritten_with_garbage_is_corruption(db: Path) -> None:
    db.write_bytes(b"not a database at all\n" * 200)
    exc = error_of(db, "read")
    assert is_corruption(exc) and not is_transient(exc)


def test_a_refused_change_is_neither(db: Path) -> None:
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON mappings BEGIN SELECT RAISE(ABORT, 'refused by policy'); END"
    )
    con.commit()
    con.close()
    exc = error_of(db)
    assert "refused" in str(exc) and isinstance(exc.__cause__, Exception)
    assert not is_transient(exc) and not is_corruption(exc)


def test_a_missing_table_is_a_mistake_not_a_wait(db: Path) -> None:
    con = sqlite3.connect(db)
    con.execute("DROP TABLE mappings")
    con.commit()
    con.close()
    exc = error_of(db, "read")
    assert "no such table" in str(exc)
    assert not is_transient(exc) and not is_corruption(exc)  # retrying would stall ingestion for good


def test_a_read_only_file_is_transient(db: Path) -> None:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as info:
        con.execute("DELETE FROM mappings")
    con.close()
    assert is_transient(info.value)  # an admin fixes the permissions; nothing needs to be dropped


def test_errors_without_a_result_code_are_judged_by_their_message() -> None:
    # Raised by hand (tests, wrappers): no sqlite_errorcode attribute.
    assert is_transient(StoreError("x")) is False
    try:
        try:
            raise sqlite3.OperationalError("database is locked")
        except sqlite3.OperationalError as inner:
            raise StoreError("commit failed") from inner
    except StoreError as exc:
        assert is_transient(exc) and not is_corruption(exc)
    assert is_corruption(sqlite3.DatabaseError("database disk image is malformed"))


def test_a_lost_server_connection_is_transient() -> None:
    class DriverError(Exception):
        pass

    lost = OperationalError("SELECT 1", {}, DriverError("server closed the connection unexpectedly"))
    try:
        raise StoreError("database error") from lost
    except StoreError as exc:
        assert is_transient(exc) and not is_corruption(exc)
