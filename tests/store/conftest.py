"""Fixtures shared by the store tests: a migrated SQLite store in a fresh directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from userseg.store import Store


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "userseg.db"  # parent does not exist yet: the Store creates it


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{db_path}")
    s.upgrade()
    yield s
    s.close()
