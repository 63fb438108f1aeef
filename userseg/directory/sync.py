"""One directory sync: read (full or incremental), resolve nesting, guard, commit atomically.

Snapshot semantics: nothing is written unless the read completed.  A failed
read, a lost connection half-way, a cursor from another DC that then cannot
be re-read in full - all leave the store exactly as it was and only record
the failed attempt, so a flaky DC never revokes anybody.  A read that
completes but would delete more than `max_delete_fraction` of the users (a
wrong base DN, a permissions change hiding the accounts) is refused the same
way unless the operator explicitly allows it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from userseg.core.membership import apply_changes, expiry_time, resolve
from userseg.directory.model import (
    CursorInvalid,
    DirectoryError,
    DirectoryImage,
    DirectorySettings,
    DirectorySource,
    Progress,
    StalePolicy,
    SyncCursor,
)
from userseg.model import canonical
from userseg.ports import Clock
from userseg.store import Store, StoreError
from userseg.store.directory_image import DirectoryBase, DirectorySyncStatus

log = logging.getLogger("userseg.directory")

MASS_DELETE_MINIMUM = 10  # below this many deletions the guard never fires (small labs, cleanups)


@dataclass(frozen=True)
class SyncOutcome:
    """What a sync did, for the CLI, the log and the daemon's wake-up."""

    kind: str  # "full" or "incremental"
    ok: bool
    server: str = ""
    error: str = ""
    users: int = 0
    groups: int = 0
    changed: bool = False  # effective users/groups/memberships changed: recompile
    entries: int = 0  # directory entries read (full) or changed (incremental)
    lost: tuple[str, ...] = ()  # accounts deleted or disabled by this sync
    removed_mappings: int = 0
    seconds: float = 0.0
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Staleness:
    last_success: datetime | None
    age: timedelta | None  # None: never synced
    stale: bool
    fail_closed: bool  # stale and the policy says treat every client as unknown


def staleness(
    settings: DirectorySettings, statuses: Sequence[DirectorySyncStatus], now: datetime
) -> Staleness:
    """Whether the directory state is older than max_staleness (any DC's success counts)."""
    successes = [s.last_success_at for s in statuses if s.last_success_at is not None]
    last = max(successes) if successes else None
    age = now - last if last is not None else None
    stale = age is None or age.total_seconds() > settings.max_staleness
    return Staleness(last, age, stale, stale and settings.on_stale is StalePolicy.FAIL_CLOSED)


@dataclass
class DirectorySync:
    """Holds the image in memory between syncs; one sync runs at a time (a lock guards it)."""

    source: DirectorySource
    store: Store
    settings: DirectorySettings
    clock: Clock
    on_commit: Callable[[SyncOutcome], None] | None = None
    _image: DirectoryImage | None = None
    _cursor: SyncCursor | None = None
    _loaded: bool = False
    # Set by each commit: the resolved counts, and the next accountExpires instant after that
    # commit's `now`.  An expiry changes no USN, so an incremental read that finds nothing must
    # still re-resolve once that instant has passed; None in _counts means "not resolved by this
    # process yet" (the stored view may predate an expiry that passed while we were down).
    _counts: tuple[int, int] | None = None
    _next_expiry: datetime | None = None
    _base: DirectoryBase | None = None  # what the last commit left in the store (delta commits)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(
        self, *, full: bool = False, progress: Progress | None = None, allow_mass_delete: bool = False
    ) -> SyncOutcome:
        """Sync now; never raises for directory or store trouble (the outcome says what failed)."""
        with self._lock:
            started = time.monotonic()
            kind = "full" if full else "incremental"
            try:
                if not self._loaded:
                    self._image, self._cursor = self.store.directory_image()
                    self._loaded = True
                if self._cursor is None or self._image is None:
                    full, kind = True, "full"
                outcome = self._run(full, progress, allow_mass_delete, started)
            except CursorInvalid as exc:
                log.info("incremental sync impossible (%s); reading everything", exc)
                try:
                    outcome = self._run(True, progress, allow_mass_delete, started)
                except (DirectoryError, StoreError, _Refused) as exc2:
                    outcome = self._failed("full", exc2, started)
            except (DirectoryError, StoreError, _Refused) as exc:
                outcome = self._failed(kind, exc, started)
        if outcome.ok and self.on_commit is not None:
            self.on_commit(outcome)
        return outcome

    def run_notified(self, dns: Collection[str]) -> SyncOutcome:
        """Apply just the entries AD notified (base reads), falling back to run() when they
        cannot settle it; never raises, like run().

        This is the fast path from a change notification to the store: no USN
        scan of the DC's database.  The cursor stays where it was, so the next
        USN-based incremental sync reads these entries again (idempotent).
        """
        outcome: SyncOutcome | None = None
        with self._lock:
            started = time.monotonic()
            image, cursor = self._image, self._cursor
            if image is not None and cursor is not None and self._base is not None and dns:
                try:
                    changes = self.source.read_notified(dns)
                    if changes is not None:
                        entries = len(changes.users) + len(changes.groups)
                        merged = apply_changes(image, changes)
                        outcome = self._commit(False, merged, cursor, entries, False, started)
                except (DirectoryError, StoreError, _Refused) as exc:
                    log.info("reading the notified entries failed (%s); running an incremental sync", exc)
        if outcome is None:
            return self.run()
        if self.on_commit is not None:
            self.on_commit(outcome)
        return outcome

    def _run(
        self, full: bool, progress: Progress | None, allow_mass_delete: bool, started: float
    ) -> SyncOutcome:
        if full:
            image, cursor = self.source.read_all(progress)
            entries = len(image.users) + len(image.groups)
            now = self.clock.now()
        else:
            assert self._image is not None and self._cursor is not None
            changes, cursor = self.source.read_changes(self._cursor)
            entries = len(changes.users) + len(changes.groups) + len(changes.deleted)
            now = self.clock.now()
            if not changes and cursor.server == self._cursor.server and not self._expiry_due(now):
                return self._unchanged(cursor, now, started)
            image = apply_changes(self._image, changes)
        return self._commit(full, image, cursor, entries, allow_mass_delete, started, now)

    def _commit(
        self,
        full: bool,
        image: DirectoryImage,
        cursor: SyncCursor,
        entries: int,
        allow_mass_delete: bool,
        started: float,
        now: datetime | None = None,
    ) -> SyncOutcome:
        now = now or self.clock.now()
        resolved = resolve(image, now, self.settings.group_include)
        for problem in resolved.problems:
            log.warning("directory data: %s", problem)
        before = len(self._image.users) if self._image is not None else 0
        self._guard(before, set(resolved.users), allow_mass_delete)
        kind = "full" if full else "incremental"
        ms = int((time.monotonic() - started) * 1000)
        result = self.store.commit_directory(
            image,
            cursor,
            resolved.users.values(),
            resolved.groups.values(),
            server=cursor.server,
            kind=kind,
            now=now,
            milliseconds=ms,
            base=None if full else self._base,
        )
        self._base = result.base
        self._image, self._cursor = image, cursor
        self._counts = (len(resolved.users), len(resolved.groups))
        self._next_expiry = _next_expiry(image, now)
        if result.lost:
            log.info("accounts deleted or disabled: %s", ", ".join(result.lost[:20]))
        return SyncOutcome(
            kind,
            True,
            server=cursor.server,
            users=len(resolved.users),
            groups=len(resolved.groups),
            changed=result.changed,
            entries=entries,
            lost=result.lost,
            removed_mappings=len(result.removed),
            seconds=time.monotonic() - started,
            problems=resolved.problems,
        )

    def _guard(self, before: int, kept: set[str], allow: bool) -> None:
        if allow or before == 0 or self._image is None:
            return
        gone = sum(1 for u in self._image.users.values() if canonical(u.sam) not in kept)
        if gone >= MASS_DELETE_MINIMUM and gone > before * self.settings.max_delete_fraction:
            raise _Refused(
                f"refusing a sync that would delete {gone} of {before} users (more than "
                f"{self.settings.max_delete_fraction:.0%}; directory.max_delete_fraction); check the "
                "base DNs, filters and the bind account's rights, or run `userseg sync --full "
                "--allow-mass-delete` if this is intended"
            )

    def _expiry_due(self, now: datetime) -> bool:
        """Whether the stored view may be out of date although AD reported no change."""
        if self._counts is None:
            return True
        return self._next_expiry is not None and now >= self._next_expiry

    def _unchanged(self, cursor: SyncCursor, now: datetime, started: float) -> SyncOutcome:
        ms = int((time.monotonic() - started) * 1000)
        assert self._counts is not None
        self.store.advance_directory_cursor(cursor, now=now, milliseconds=ms)
        self._cursor = cursor
        return SyncOutcome(
            "incremental",
            True,
            server=cursor.server,
            users=self._counts[0],
            groups=self._counts[1],
            seconds=time.monotonic() - started,
        )

    def _failed(self, kind: str, exc: Exception, started: float) -> SyncOutcome:
        server = getattr(self.source, "last_server", "") or (
            self.settings.servers[0].url if self.settings.servers else "directory"
        )
        message = str(exc)
        log.warning("directory %s sync failed; keeping the last good state: %s", kind, message)
        try:
            self.store.record_directory_failure(server, kind=kind, error=message, now=self.clock.now())
        except StoreError as store_exc:
            log.error("could not record the failed sync: %s", store_exc)
        return SyncOutcome(kind, False, server=server, error=message, seconds=time.monotonic() - started)


def _next_expiry(image: DirectoryImage, now: datetime) -> datetime | None:
    """The earliest accountExpires instant after `now` among the image's users."""
    future = [t for t in (expiry_time(u.expires) for u in image.users.values()) if t is not None and t > now]
    return min(future, default=None)


class _Refused(Exception):
    """The read completed but committing it would look like a disaster; nothing is written."""
