"""Table definitions: the single description of the database the migrations must match.

The repository reads and writes these tables with Core statements (bulk paths
must not load ORM objects), but declaring them as typed ORM classes gives
mypy-checked column names and one metadata object Alembic can compare against
the migrations (tests/store/test_migrations.py does, so a model change without
a migration fails the suite).

List-valued columns (destinations, services, subjects, ...) are JSON held in
TEXT columns, encoded and decoded by userseg.store.codec rather than by the
JSON column type, so that a corrupt value becomes a StoreError naming the
table and row instead of a decoder traceback from deep inside a result fetch.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints so that Alembic batch mode (SQLite table rebuilds) can
# find and alter them in later migrations.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

NAME_LEN = 256  # canonical AD names (sAMAccountName is 20, group CNs up to 64; headroom)
OBJECT_NAME_LEN = 64  # application / policy names (config_schema.NAME_RE)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, on every backend.

    SQLite has no timestamp type: values are stored as offset-less UTC text in
    SQLAlchemy's own format ("YYYY-MM-DD HH:MM:SS.ffffff", always with
    microseconds, so text order is time order and `expires_at > :now` works)
    and read back labelled UTC.  For SQLite the conversion is one C call each
    way instead of SQLAlchemy's generic chain, because snapshot_parts decodes
    750k of these.  Naive input is refused: guessing a timezone for an expiry
    time would silently shift when access ends.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else _to_utc(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if not isinstance(value, datetime):
            return value  # None, or garbage for the row decoder to report with the row's name
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.name == "sqlite":
            return _sqlite_bind
        return super().bind_processor(dialect)

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        if dialect.name == "sqlite":
            return _sqlite_result
        return super().result_processor(dialect, coltype)


def _to_utc(value: datetime) -> datetime:
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()} (the store needs timezone-aware times)")
    return value.astimezone(UTC)


def _sqlite_bind(value: datetime | None) -> str | None:
    if value is None:
        return None
    return _to_utc(value).isoformat(" ", "microseconds")[:26]  # drop the "+00:00"


def _sqlite_result(value: Any) -> Any:
    """Stored text -> aware UTC datetime; anything unparseable is passed through unchanged
    so the row decoder, which knows the table and row, can report it (see codec.timestamp)."""
    try:
        return datetime.fromisoformat(value + "+00:00")
    except (TypeError, ValueError):
        pass
    try:  # written by something else, e.g. with an explicit offset
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return value
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UserRow(Base):
    __tablename__ = "users"

    name: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)  # canonical()
    display_name: Mapped[str] = mapped_column(String(512), default="")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    sid: Mapped[str | None] = mapped_column(String(200), nullable=True)
    guid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dn: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class GroupRow(Base):
    __tablename__ = "groups"

    name: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)  # canonical()
    display_name: Mapped[str] = mapped_column(String(512), default="")
    dn: Mapped[str] = mapped_column(Text, default="")
    sid: Mapped[str | None] = mapped_column(String(200), nullable=True)
    guid: Mapped[str | None] = mapped_column(String(64), nullable=True)


class MembershipRow(Base):
    """Effective (nested-resolved) memberships: what policies match against."""

    __tablename__ = "memberships"

    user_name: Mapped[str] = mapped_column(
        String(NAME_LEN), ForeignKey("users.name", ondelete="CASCADE"), primary_key=True
    )
    group_name: Mapped[str] = mapped_column(
        String(NAME_LEN), ForeignKey("groups.name", ondelete="CASCADE"), primary_key=True, index=True
    )


class MappingRow(Base):
    """One user per source IP; no foreign key to users, since a logon may precede the directory sync."""

    __tablename__ = "mappings"

    ip: Mapped[str] = mapped_column(String(45), primary_key=True)  # compressed text form
    user_name: Mapped[str] = mapped_column(String(NAME_LEN), index=True)
    source: Mapped[str] = mapped_column(String(64))
    first_seen: Mapped[datetime] = mapped_column(UtcDateTime)
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    provenance: Mapped[str] = mapped_column(Text, default="{}")  # JSON object of strings


class ApplicationRow(Base):
    __tablename__ = "applications"

    name: Mapped[str] = mapped_column(String(OBJECT_NAME_LEN), primary_key=True)
    destinations: Mapped[str] = mapped_column(Text)  # JSON list of address/CIDR/range strings
    services: Mapped[str] = mapped_column(Text)  # JSON list of service strings
    labels: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of strings
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class PolicyRow(Base):
    """No foreign key to applications: a policy may name an application declared in the config file."""

    __tablename__ = "policies"
    __table_args__ = (
        CheckConstraint("action IN ('allow', 'deny')", name="action"),
        CheckConstraint("mode IN ('enforce', 'stage')", name="mode"),
    )

    name: Mapped[str] = mapped_column(String(OBJECT_NAME_LEN), primary_key=True)
    priority: Mapped[int] = mapped_column(Integer)
    subjects: Mapped[str] = mapped_column(Text)  # JSON list of subject strings
    application: Mapped[str] = mapped_column(String(OBJECT_NAME_LEN), index=True)
    action: Mapped[str] = mapped_column(String(8))
    mode: Mapped[str] = mapped_column(String(8))
    enabled: Mapped[bool] = mapped_column(Boolean)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class SettingRow(Base):
    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class AuditRow(Base):
    __tablename__ = "audit_log"
    __table_args__ = (
        CheckConstraint("entity IN ('application', 'policy', 'setting', 'mapping')", name="entity"),
        CheckConstraint("action IN ('create', 'update', 'delete')", name="action"),
        Index("ix_audit_log_entity_name", "entity", "name"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(NAME_LEN))
    entity: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    action: Mapped[str] = mapped_column(String(8))
    before: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON object
    after: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON object


class MetaRow(Base):
    """Small integer counters; `generation` goes up on every committed change."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


GENERATION_KEY = "generation"


class DirectoryObjectRow(Base):
    """The raw directory image (entries as read from AD), so an incremental sync can
    continue after a restart, or from the CLI, without a full read first."""

    __tablename__ = "directory_objects"
    __table_args__ = (CheckConstraint("kind IN ('user', 'group')", name="kind"),)

    guid: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    dn: Mapped[str] = mapped_column(Text)
    data: Mapped[str] = mapped_column(Text)  # JSON object of the entry's fields


class DirectoryStateRow(Base):
    """Small named values of the directory image: its cursor and domain SID (JSON)."""

    __tablename__ = "directory_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class DirectorySyncRow(Base):
    """Outcome of the last sync attempt against each DC: what status and staleness show."""

    __tablename__ = "directory_sync"

    server: Mapped[str] = mapped_column(String(512), primary_key=True)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_success_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_kind: Mapped[str] = mapped_column(String(16), default="")
    last_error: Mapped[str] = mapped_column(Text, default="")
    users: Mapped[int] = mapped_column(Integer, default=0)
    groups: Mapped[int] = mapped_column(Integer, default=0)
    milliseconds: Mapped[int] = mapped_column(Integer, default=0)


class SourceStateRow(Base):
    """Per login source: the persisted read position (committed with the mappings it led
    to, so a restart neither replays nor skips) and counters that `status` shows."""

    __tablename__ = "source_state"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[str | None] = mapped_column(Text, nullable=True)  # opaque, source-defined
    last_event_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    counters: Mapped[str] = mapped_column(Text, default="{}")  # JSON object name -> int
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class SharedAddressRow(Base):
    """An IP that saw too many different users recently: it keeps no user-specific access."""

    __tablename__ = "shared_addresses"

    ip: Mapped[str] = mapped_column(String(45), primary_key=True)
    users: Mapped[str] = mapped_column(Text)  # JSON list of canonical user names
    since: Mapped[datetime] = mapped_column(UtcDateTime)
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime)


class SightingRow(Base):
    """Which accounts logged on from which IPs: the data behind `userseg ignore-suggestions`
    (a service account shows up on many machines)."""

    __tablename__ = "account_sightings"

    user_name: Mapped[str] = mapped_column(String(NAME_LEN), primary_key=True)
    ip: Mapped[str] = mapped_column(String(45), primary_key=True)
    first_seen: Mapped[datetime] = mapped_column(UtcDateTime)
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    events: Mapped[int] = mapped_column(BigInteger, default=0)
