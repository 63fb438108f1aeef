"""Engine construction and the Alembic plumbing shared by Store and migrations/env.py.

Kept separate from the repository so that `alembic -x url=...` (env.py) builds
exactly the same engine as the daemon does: same SQLite pragmas, same
transaction handling, so a migration behaves identically from either entry
point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from userseg.store.codec import StoreError

PACKAGE_DIR = Path(__file__).resolve().parent
ALEMBIC_INI = PACKAGE_DIR / "alembic.ini"
MIGRATIONS_DIR = PACKAGE_DIR / "migrations"

# Execution option marking a connection whose transaction will write.
WRITE_OPTION = "userseg_write"


def display_url(url: str) -> str:
    """The URL with any password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout, foreign keys and explicit BEGINs.

    Why the SQLite setup:
    - WAL lets the daemon read a snapshot while the CLI writes, without "database is locked".
    - busy_timeout makes a second writer wait (up to 5 s) instead of failing at once.
    - foreign_keys=ON makes memberships follow deletions of users and groups.
    - synchronous=NORMAL is durable across application crashes in WAL mode and far
      cheaper than FULL for the login-event write rate.
    - pysqlite's own transaction handling issues no BEGIN before SELECTs, so a
      multi-statement read (snapshot_parts) would not see one consistent state;
      we emit BEGIN ourselves, and BEGIN IMMEDIATE for writes so a read-then-write
      transaction takes the write lock up front instead of failing with
      SQLITE_BUSY when another writer committed in between.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"bad database URL {url!r}: {exc}") from None
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite:
        _make_sqlite_parent(parsed.database)
    try:
        engine = create_engine(parsed)
    except ImportError as exc:
        raise StoreError(
            f"cannot use database URL {display_url(url)}: {exc} (install the database driver it names)"
        ) from None
    except ArgumentError as exc:
        raise StoreError(f"cannot use database URL {display_url(url)}: {exc}") from None
    if is_sqlite:
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _make_sqlite_parent(database: str | None) -> None:
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    parent = Path(database).expanduser().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create database directory {parent}: {exc.strerror or exc}") from None


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # we issue BEGIN in _sqlite_on_begin
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    write = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


# The newest migration's revision.  Checked on every store open without importing
# Alembic (half a second of start-up for every CLI call); a test keeps it equal to
# the head of the packaged migrations.
SCHEMA_HEAD = "0003"


def alembic_config(connection: Connection | None = None) -> Any:
    """The packaged Alembic configuration, independent of the working directory."""
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig(str(ALEMBIC_INI))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    return SCHEMA_HEAD


def migrations_head() -> str | None:
    """The head according to Alembic itself (tests compare it with SCHEMA_HEAD)."""
    from alembic.script import ScriptDirectory

    head: str | None = ScriptDirectory.from_config(alembic_config()).get_current_head()
    return head


def current_revision(connection: Connection) -> str | None:
    """alembic_version's row, read with plain SQL (None when the table is missing)."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    row = connection.exec_driver_sql("SELECT version_num FROM alembic_version").first()
    return None if row is None else str(row[0])
