"""The Store: every read and write userseg makes to its database.

Each public method is one transaction, reads return model objects, and every
committed change bumps the `generation` counter, so a long-running daemon can
poll one cheap integer to notice what the CLI or web UI changed.  Changes an
operator makes (applications, policies, settings, manual mappings) leave an
audit row with the before and after state; login-derived mappings do not,
since they arrive by the thousand and carry their own provenance.

The statements live in directory.py, mappings.py and catalog.py; this class
owns transactions, the schema-version check, auditing and the generation.
Times are never read from the clock here: callers pass `now`.
"""

from __future__ import annotations

import gc
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from userseg.core.ingest import SharedMark
from userseg.directory.model import DirectoryImage, SyncCursor
from userseg.model import Action, Application, Group, IPAddress, Mapping, Policy, User, canonical
from userseg.store import catalog, codec, directory, directory_image, ingest, mappings
from userseg.store.codec import StoreError, utc
from userseg.store.directory_image import DirectoryBase, DirectoryCommit, DirectorySyncStatus
from userseg.store.engine import (
    WRITE_OPTION,
    alembic_config,
    current_revision,
    display_url,
    head_revision,
    make_engine,
)
from userseg.store.schema import MappingRow

SnapshotParts = tuple[
    dict[str, User], tuple[Mapping, ...], dict[str, Application], tuple[Policy, ...], Action
]


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building hundreds of thousands of objects.

    Every model object built here is acyclic, yet each 700 allocations would
    trigger a collection that walks the ever-growing heap; at 250k mappings
    that was 40% of snapshot_parts.  Reference counting still frees memory.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass(frozen=True)
class AuditEntry:
    """One operator change: who, when, what, and the entity before and after (None = absent)."""

    at: datetime
    actor: str
    entity: str  # 'application' | 'policy' | 'setting' | 'mapping'
    name: str
    action: str  # 'create' | 'update' | 'delete'
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class Store:
    """Repository over one database URL (SQLite file, PostgreSQL, ... any SQLAlchemy URL)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.display_url = display_url(url)
        self._engine: Engine = make_engine(url)
        self._ready = False

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- schema and transactions ---------------------------------------------

    def upgrade(self) -> None:
        """Bring the schema to the newest packaged migration (Alembic `upgrade head`)."""
        try:
            with self._engine.connect() as conn:
                conn.execution_options(**{WRITE_OPTION: True})
                with conn.begin():
                    from alembic import command

                    command.upgrade(alembic_config(conn), "head")
        except SQLAlchemyError as exc:
            raise StoreError(f"upgrading database at {self.display_url} failed: {exc}") from exc
        self._ready = True

    def current_revision(self) -> str | None:
        """The applied migration revision, or None for an empty database."""
        try:
            with self._engine.connect() as conn:
                return current_revision(conn)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open database at {self.display_url}: {exc}") from exc

    def _ensure_ready(self) -> None:
        """Refuse an unmigrated database with instructions, not a 'no such table' error (checked once)."""
        if self._ready:
            return
        revision = self.current_revision()
        if revision is None:
            raise StoreError(f"database at {self.display_url} is not initialised; run `userseg db upgrade`")
        head = head_revision()
        if revision != head:
            raise StoreError(
                f"database at {self.display_url} has schema revision {revision}, this userseg needs "
                f"{head}; run `userseg db upgrade`"
            )
        self._ready = True

    @contextmanager
    def _tx(self, *, write: bool = False) -> Iterator[Connection]:
        self._ensure_ready()
        try:
            with self._engine.connect() as conn:
                if write:
                    conn.execution_options(**{WRITE_OPTION: True})
                with conn.begin():
                    yield conn
        except IntegrityError as exc:
            raise StoreError(f"database at {self.display_url} refused the change: {exc.orig}") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"database error at {self.display_url}: {exc}") from exc

    def generation(self) -> int:
        """Counter bumped by every committed change; compare to notice writes by other processes."""
        with self._tx() as conn:
            return catalog.generation(conn)

    # --- directory ------------------------------------------------------------

    def replace_directory(self, users: Iterable[User], groups: Iterable[Group], now: datetime) -> None:
        """Make users, groups and effective memberships exactly these, atomically.

        Only differences are written; a sync that changes nothing leaves the
        generation alone.
        """
        now = utc(now, "now")
        with _gc_paused():
            want = directory.collect(users, groups)
        with _gc_paused(), self._tx(write=True) as conn:
            if directory.write_diff(conn, want, now):
                catalog.bump(conn)

    def directory_image(self) -> tuple[DirectoryImage, SyncCursor | None]:
        """The raw directory image of the last successful sync and where to continue from."""
        with _gc_paused(), self._tx() as conn:
            return directory_image.load_image(conn)

    def commit_directory(
        self,
        image: DirectoryImage,
        cursor: SyncCursor,
        users: Iterable[User],
        groups: Iterable[Group],
        *,
        server: str,
        kind: str,
        now: datetime,
        milliseconds: int = 0,
        base: DirectoryBase | None = None,
    ) -> DirectoryCommit:
        """Store a successful sync atomically: raw image, cursor, effective view, and the
        removal of mappings of accounts deleted or disabled (audited as actor "directory")."""
        now = utc(now, "now")
        with _gc_paused():
            want = directory.collect(users, groups)
        with _gc_paused(), self._tx(write=True) as conn:
            return directory_image.commit(
                conn,
                image,
                cursor,
                want,
                server=server,
                kind=kind,
                now=now,
                milliseconds=milliseconds,
                base=base,
            )

    def advance_directory_cursor(self, cursor: SyncCursor, *, now: datetime, milliseconds: int = 0) -> None:
        """An incremental sync found no change: move the cursor, note the success."""
        with self._tx(write=True) as conn:
            directory_image.advance(conn, cursor, now=utc(now, "now"), milliseconds=milliseconds)

    def record_directory_failure(self, server: str, *, kind: str, error: str, now: datetime) -> None:
        """Note a failed sync attempt; nothing else changes (the last good state stays)."""
        with self._tx(write=True) as conn:
            directory_image.record(conn, server, now=utc(now, "now"), kind=kind, error=error or "failed")

    def directory_status(self) -> list[DirectorySyncStatus]:
        with self._tx() as conn:
            return directory_image.statuses(conn)

    def users(self) -> dict[str, User]:
        with _gc_paused(), self._tx() as conn:
            return directory.load_users(conn)

    def user(self, name: str) -> User | None:
        with self._tx() as conn:
            return directory.load_user(conn, canonical(name))

    def groups(self) -> dict[str, Group]:
        with self._tx() as conn:
            return directory.load_groups(conn)

    # --- mappings -------------------------------------------------------------

    def put_mapping(
        self, m: Mapping, *, audit_actor: str | None = None, now: datetime | None = None
    ) -> Mapping | None:
        """Bind m.ip to m.user (one user per IP); returns the mapping it replaced, if any.

        Pass audit_actor (and now) for a manual change to leave an audit row.
        """
        row = codec.mapping_row(m)
        at = _audit_time(audit_actor, now)
        with self._tx(write=True) as conn:
            old = mappings.upsert(conn, row)
            if audit_actor is not None and at is not None:
                change = (
                    None if old is None else codec.mapping_doc(old),
                    codec.mapping_doc(mappings.stored(row)),
                )
                catalog.audit(
                    conn, now=at, actor=audit_actor, entity="mapping", name=row["ip"], change=change
                )
            catalog.bump(conn)
        return old

    def put_mappings(self, ms: Sequence[Mapping]) -> None:
        """Upsert many mappings in one transaction (executemany); the last one for an IP wins."""
        with _gc_paused():
            rows = {r["ip"]: r for r in map(codec.mapping_row, ms)}
        if not rows:
            return
        with _gc_paused(), self._tx(write=True) as conn:
            mappings.upsert_many(conn, list(rows.values()))
            catalog.bump(conn)

    def remove_mapping(
        self, ip: IPAddress, *, audit_actor: str | None = None, now: datetime | None = None
    ) -> Mapping | None:
        """Forget the mapping of `ip`; returns it, or None if there was none."""
        gone = self._remove(MappingRow.ip == str(ip), audit_actor, now)
        return gone[0] if gone else None

    def remove_mappings_of_user(
        self, user: str, *, audit_actor: str | None = None, now: datetime | None = None
    ) -> list[Mapping]:
        """Forget every IP of `user` (e.g. the account was disabled); returns what was removed."""
        return self._remove(MappingRow.user_name == canonical(user), audit_actor, now)

    def _remove(self, condition: Any, audit_actor: str | None, now: datetime | None) -> list[Mapping]:
        at = _audit_time(audit_actor, now)
        with self._tx(write=True) as conn:
            gone = mappings.remove(conn, condition)
            if audit_actor is not None and at is not None:
                catalog.audit_removed_mappings(conn, gone, actor=audit_actor, now=at)
            if gone:
                catalog.bump(conn)
        return gone

    def mappings(
        self,
        *,
        user: str | None = None,
        ip: IPAddress | None = None,
        active_at: datetime | None = None,
    ) -> list[Mapping]:
        """Mappings matching every given filter; active_at keeps those with expires_at > active_at."""
        conditions: list[Any] = []
        if user is not None:
            conditions.append(MappingRow.user_name == canonical(user))
        if ip is not None:
            conditions.append(MappingRow.ip == str(ip))
        if active_at is not None:
            conditions.append(MappingRow.expires_at > utc(active_at, "active_at"))
        with _gc_paused(), self._tx() as conn:
            return mappings.load(conn, *conditions)

    def active_mappings(self, now: datetime) -> tuple[Mapping, ...]:
        """Every mapping with expires_at > now, in no particular order: what the daemon loads
        at start-up (250k rows), where sorting for display would only cost time."""
        with _gc_paused(), self._tx() as conn:
            return mappings.load_unsorted(conn, MappingRow.expires_at > utc(now, "now"))

    def purge_expired(self, now: datetime) -> list[Mapping]:
        """Delete mappings with expires_at <= now; returns them so the caller can log and revoke."""
        return self._remove(MappingRow.expires_at <= utc(now, "now"), None, None)

    # --- login ingestion ------------------------------------------------------------

    def commit_ingest(self, batch: ingest.IngestBatch, now: datetime, *, bump: bool = False) -> None:
        """One pipeline batch in one transaction.  No generation bump by default: the
        pipeline has applied its changes to the kernel itself, and a bump would make
        the enforcer recompile everything for every login."""
        if batch.is_empty():
            return
        with _gc_paused(), self._tx(write=True) as conn:
            ingest.commit(conn, batch, utc(now, "now"))
            if bump:
                catalog.bump(conn)

    def source_states(self) -> dict[str, ingest.SourceState]:
        with self._tx() as conn:
            return ingest.source_states(conn)

    def shared_marks(self) -> list[SharedMark]:
        with self._tx() as conn:
            return ingest.shared_marks(conn)

    def sightings_since(self, since: datetime) -> list[ingest.Sighting]:
        with self._tx() as conn:
            return ingest.sightings_since(conn, utc(since, "since"))

    def prune_sightings(self, before: datetime) -> int:
        with self._tx(write=True) as conn:
            return ingest.prune_sightings(conn, utc(before, "before"))

    # --- applications, policies, settings ---------------------------------------

    def applications(self) -> dict[str, Application]:
        with self._tx() as conn:
            return catalog.load_applications(conn)

    def put_application(self, app: Application, *, actor: str, now: datetime) -> None:
        """Create or replace the application named app.name (audited; an identical re-save is a no-op)."""
        now = _change_time(actor, now)
        with self._tx(write=True) as conn:
            change = catalog.write_application(conn, app, now)
            self._record(conn, now, actor, "application", app.name, change)

    def delete_application(self, name: str, *, actor: str, now: datetime) -> None:
        """Delete an application; refused while any stored policy still names it."""
        now = _change_time(actor, now)
        with self._tx(write=True) as conn:
            self._record(conn, now, actor, "application", name, catalog.remove_application(conn, name))

    def policies(self) -> list[Policy]:
        """Stored policies in evaluation order (priority, then name)."""
        with self._tx() as conn:
            return catalog.load_policies(conn)

    def put_policy(
        self, p: Policy, *, actor: str, now: datetime, known_applications: Collection[str] = ()
    ) -> None:
        """Create or replace a policy. Its application must be stored or in known_applications
        (the names declared in the config file), so a typo cannot create a policy that never matches."""
        now = _change_time(actor, now)
        with self._tx(write=True) as conn:
            change = catalog.write_policy(conn, p, now, known_applications)
            self._record(conn, now, actor, "policy", p.name, change)

    def delete_policy(self, name: str, *, actor: str, now: datetime) -> None:
        now = _change_time(actor, now)
        with self._tx(write=True) as conn:
            self._record(conn, now, actor, "policy", name, catalog.remove_policy(conn, name))

    def setting(self, key: str) -> str | None:
        with self._tx() as conn:
            return catalog.setting(conn, key)

    def set_setting(self, key: str, value: str, *, actor: str, now: datetime) -> None:
        """Set a key/value setting (audited; unchanged = no-op). `default_action` must be allow/deny."""
        now = _change_time(actor, now)
        with self._tx(write=True) as conn:
            self._record(conn, now, actor, "setting", key, catalog.write_setting(conn, key, value))

    def default_action(self) -> Action:
        """The stored `default_action` setting; deny when unset."""
        with self._tx() as conn:
            return catalog.default_action(conn)

    @staticmethod
    def _record(
        conn: Connection, now: datetime, actor: str, entity: str, name: str, change: catalog.Change | None
    ) -> None:
        if change is not None:
            catalog.audit(conn, now=now, actor=actor, entity=entity, name=name, change=change)
            catalog.bump(conn)

    # --- audit and snapshot -----------------------------------------------------

    def audit(self, limit: int = 100) -> list[AuditEntry]:
        """The newest `limit` audit entries, newest first."""
        if limit < 0:
            raise StoreError(f"audit limit must not be negative, got {limit}")
        with self._tx() as conn:
            return [AuditEntry(*row) for row in catalog.audit_rows(conn, limit)]

    def snapshot_parts(self, now: datetime) -> SnapshotParts:
        """Everything compile() needs, from one consistent read; only mappings active at `now`."""
        active = MappingRow.expires_at > utc(now, "now")
        with _gc_paused(), self._tx() as conn:
            users = directory.load_users(conn)
            active_mappings = mappings.load_unsorted(conn, active)
            apps = catalog.load_applications(conn)
            policies = tuple(catalog.load_policies(conn))
            action = catalog.default_action(conn)
        return users, active_mappings, apps, policies, action


def _change_time(actor: str, now: datetime) -> datetime:
    if not isinstance(actor, str) or not actor.strip():
        raise StoreError("actor must not be empty (who is making this change?)")
    return utc(now, "now")


def _audit_time(actor: str | None, now: datetime | None) -> datetime | None:
    """Validate the optional audit pair of the mapping methods; None means 'not audited'."""
    if actor is None:
        return None
    if now is None:
        raise StoreError("an audited mapping change needs `now`")
    return _change_time(actor, now)
