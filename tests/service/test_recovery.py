"""Corrupt SQLite files: detection, moving aside (with side files), rebuild from the kernel."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from userseg.model import IPAddress, ip
from userseg.service.recovery import RECOVERED_SOURCE, check_sqlite, move_aside, rebuild, sqlite_path
from userseg.store import Store, StoreError, is_transient

NOW = datetime(2026, 12, 7, 16, 0, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A real, migrated store, closed again (as the service finds it at start-up)."""
    path = tmp_path / "userseg.db"
    with Store(f"sqlite:///{path}") as store:
        store.upgrade()
    return path


def test_sqlite_path_only_for_sqlite_files(tmp_path: Path) -> None:
    assert sqlite_path(f"sqlite:///{tmp_path}/a.db") == tmp_path / "a.db"
    assert sqlite_path("sqlite://") is None
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("postgresql://u:p@db.example/userseg") is None


def test_a_sound_database_and_a_missing_or_empty_file_have_no_problem(db: Path, tmp_path: Path) -> None:
    assert check_sqlite(db) is None
    assert check_sqlite(tmp_path / "absent.db") is None
    (tmp_path / "empty.db").touch()
    assert check_sqlite(tmp_path / "empty.db") is None  # SQLite's own empty database
    assert not (tmp_path / "absent.db").exists()  # checking created nothing


def test_a_truncated_database_is_reported(db: Path) -> None:
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    problem = check_sqlite(db)
    assert problem is not None and "malformed" in problem


def test_a_file_that_is_no_database_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "userseg.db"
    path.write_bytes(b"this is a text file, not SQLite\n" * 100)
    assert check_sqlite(path) == "file is not a database"


def test_odd_characters_in_the_path_check_that_very_file(tmp_path: Path) -> None:
    folder = tmp_path / "state?v=1#x %41"
    folder.mkdir()
    path = folder / "userseg.db"
    path.write_bytes(b"garbage" * 1000)
    assert check_sqlite(path) == "file is not a database"
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no stray database created


def hold_exclusive(path: Path, journal_mode: str) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute(f"PRAGMA journal_mode={journal_mode}")
    con.execute("CREATE TABLE IF NOT EXISTS t (x)")
    con.execute("BEGIN EXCLUSIVE")
    con.execute("INSERT INTO t VALUES (1)")
    return con


def test_a_database_locked_by_another_writer_is_not_reported_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "userseg.db"
    con = hold_exclusive(path, "delete")  # rollback journal: EXCLUSIVE keeps readers out
    try:
        start = time.monotonic()
        with pytest.raises(StoreError, match="locked") as info:
            check_sqlite(path, timeout=0.05)
        assert time.monotonic() - start < 5
        assert is_transient(info.value)  # the caller waits and tries again
    finally:
        con.execute("ROLLBACK")
        con.close()
    assert check_sqlite(path) is None


def test_a_wal_database_with_a_writer_in_progress_is_sound(db: Path) -> None:
    con = hold_exclusive(db, "wal")  # WAL: readers go on reading the last commit
    try:
        assert check_sqlite(db, timeout=0.05) is None
    finally:
        con.execute("ROLLBACK")
        con.close()


def test_a_file_that_cannot_be_opened_is_not_called_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "userseg.db"
    path.mkdir()  # (root reads any file, so a directory stands in for an unreadable one)
    with pytest.raises(StoreError, match="cannot check the database"):
        check_sqlite(path)
    assert path.is_dir()


def side_files(path: Path, tag: str) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").write_text(f"{tag}{suffix}")


def test_move_aside_takes_the_side_files_and_never_overwrites_earlier_evidence(tmp_path: Path) -> None:
    path = tmp_path / "userseg.db"
    path.write_text("first")
    side_files(path, "first")
    first = move_aside(path, NOW)
    assert first == tmp_path / "userseg.db.corrupt-20261207T160000"
    assert first.read_text() == "first" and Path(f"{first}-wal").read_text() == "first-wal"
    assert Path(f"{first}-shm").read_text() == "first-shm"
    assert not path.exists() and not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()

    path.write_text("second")  # corrupt again within the same second
    second = move_aside(path, NOW)
    assert second == tmp_path / "userseg.db.corrupt-20261207T160000-2"
    assert second.read_text() == "second" and first.read_text() == "first"
    assert Path(f"{first}-wal").read_text() == "first-wal"

    # Only a side file is left of an earlier move: it is evidence too.
    Path(f"{path}.corrupt-20261207T160000-3-wal").write_text("orphan")
    path.write_text("third")
    side_files(path, "third")
    third = move_aside(path, NOW)
    assert third == tmp_path / "userseg.db.corrupt-20261207T160000-4"
    assert Path(f"{path}.corrupt-20261207T160000-3-wal").read_text() == "orphan"
    assert Path(f"{third}-wal").read_text() == "third-wal"


def kernel(*entries: tuple[str, str, timedelta]) -> list[tuple[IPAddress, str, datetime]]:
    return [(ip(addr), user, NOW + left) for addr, user, left in entries]


def test_rebuild_restores_the_unexpired_kernel_mappings(db: Path) -> None:
    db.write_bytes(b"garbage" * 1000)
    url = f"sqlite:///{db}"
    found = kernel(
        ("198.18.0.10", "alice", timedelta(hours=1)),
        ("2001:db8::10", "bob", timedelta(minutes=5)),
        ("198.18.0.11", "carol", timedelta(0)),  # expires now: gone
        ("198.18.0.12", "dave", timedelta(seconds=-30)),
    )
    result = rebuild(url, "file is not a database", NOW, lambda: iter(found))
    assert result.mappings == 2 and result.problem == "file is not a database" and result.at == NOW
    assert result.moved_to.read_bytes().startswith(b"garbage")
    assert "file is not a database" in result.reason() and str(result.moved_to) in result.reason()
    assert check_sqlite(db) is None
    with Store(url) as store:
        restored = {(str(m.ip), m.user, m.expires_at, m.source) for m in store.mappings()}
    assert restored == {
        ("198.18.0.10", "alice", NOW + timedelta(hours=1), RECOVERED_SOURCE),
        ("2001:db8::10", "bob", NOW + timedelta(minutes=5), RECOVERED_SOURCE),
    }


def test_rebuild_survives_a_kernel_that_cannot_be_read(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    db.write_bytes(b"garbage" * 1000)

    def broken() -> Iterator[tuple[IPAddress, str, datetime]]:
        yield from kernel(("198.18.0.10", "alice", timedelta(hours=1)))
        raise OSError("netlink: permission denied")

    with caplog.at_level(logging.ERROR, logger="userseg.recovery"):
        result = rebuild(f"sqlite:///{db}", "file is not a database", NOW, broken)
    assert result.mappings == 0
    assert any("permission denied" in r.getMessage() for r in caplog.records)
    with Store(f"sqlite:///{db}") as store:
        assert store.mappings() == [] and store.current_revision() is not None


def test_rebuild_refuses_what_is_not_a_sqlite_file() -> None:
    with pytest.raises(StoreError, match="only a SQLite file"):
        rebuild("sqlite://", "x", NOW, list)
