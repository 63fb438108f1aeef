"""Packaged Alembic migrations: API and command-line paths, and agreement with the models."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from userseg.store import Store, StoreError
from userseg.store.engine import ALEMBIC_INI, alembic_config, head_revision, make_engine, migrations_head
from userseg.store.schema import Base

EXPECTED_TABLES = {
    "alembic_version",
    "users",
    "groups",
    "memberships",
    "mappings",
    "applications",
    "policies",
    "settings",
    "audit_log",
    "meta",
    "directory_objects",
    "directory_state",
    "source_state",
    "shared_addresses",
    "account_sightings",
    "directory_sync",
}


def tables(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def indexes(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%'"
        )
        return {r[0] for r in rows}
    finally:
        conn.close()


def test_upgrade_on_empty_database_creates_schema_at_head(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    store = Store(f"sqlite:///{db}")
    assert store.current_revision() is None

    store.upgrade()

    assert tables(db) == EXPECTED_TABLES
    assert indexes(db) == {
        "ix_memberships_group_name",
        "ix_mappings_user_name",
        "ix_mappings_expires_at",
        "ix_policies_application",
        "ix_audit_log_at",
        "ix_audit_log_entity_name",
        "ix_account_sightings_last_seen",
    }
    assert store.current_revision() == head_revision() == "0003"
    assert store.generation() == 0
    store.upgrade()  # idempotent
    assert store.current_revision() == "0003"
    store.close()


def test_migrated_schema_matches_the_models(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    Store(f"sqlite:///{db}").upgrade()
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []


def test_unmigrated_database_gives_clear_error_until_upgraded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    store = Store(url)
    for operation in (store.users, store.policies, store.generation):
        with pytest.raises(StoreError) as info:
            operation()
        assert str(info.value) == f"database at {url} is not initialised; run `userseg db upgrade`"

    store.upgrade()
    assert store.users() == {}


def test_outdated_revision_is_reported(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    Store(f"sqlite:///{db}").upgrade()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE alembic_version SET version_num = '0000'")
    conn.commit()
    conn.close()
    with pytest.raises(
        StoreError, match=r"has schema revision 0000, this userseg needs 0003; run `userseg db"
    ):
        Store(f"sqlite:///{db}").policies()


def test_password_is_masked_in_errors() -> None:
    with pytest.raises(StoreError) as info:
        Store("postgresql+nosuchdriver://user:hunter2@db.example/userseg")
    assert "hunter2" not in str(info.value)
    assert "user:***@db.example" in str(info.value)


def test_alembic_command_line_with_x_url_from_any_directory(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()

    def alembic(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "alembic", "-c", str(ALEMBIC_INI), *args],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=60,
        )

    up = alembic("-x", f"url=sqlite:///{db}", "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert tables(db) == EXPECTED_TABLES
    assert Store(f"sqlite:///{db}").current_revision() == "0003"

    missing = alembic("upgrade", "head")
    assert missing.returncode != 0
    assert "no database URL; pass -x url=DATABASE_URL" in missing.stderr


def test_downgrade_to_base_removes_everything(tmp_path: Path) -> None:
    db = tmp_path / "down.db"
    Store(f"sqlite:///{db}").upgrade()
    engine = make_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    engine.dispose()
    assert tables(db) == {"alembic_version"}
    assert indexes(db) == set()
    assert Store(f"sqlite:///{db}").current_revision() is None


def test_schema_head_constant_matches_the_packaged_migrations() -> None:
    """SCHEMA_HEAD spares every CLI call an Alembic import; it must name the real head."""
    assert head_revision() == migrations_head()
