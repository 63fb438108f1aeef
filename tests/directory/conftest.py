"""Fixtures of the directory sync tests: a fake DC, a fixed clock and a real SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.directory.fake_directory import FakeDirectory, FixedClock, populate
from userseg.directory.model import DirectoryServer, DirectorySettings, TlsMode
from userseg.store import Store

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture
def fake() -> FakeDirectory:
    f = FakeDirectory()
    populate(f)
    return f


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'userseg.db'}")
    s.upgrade()
    yield s
    s.close()


@pytest.fixture
def settings() -> DirectorySettings:
    return DirectorySettings(
        servers=(DirectoryServer("dc1.example.net", 636, TlsMode.LDAPS),),
        bind_user="svc@example.net",
        # the timers are the service tests' business; here they must never fire
        incremental_interval=86400.0,
        full_interval=7 * 86400.0,
    )
