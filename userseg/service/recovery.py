"""A corrupt SQLite database is moved aside and rebuilt, never a crash loop.

What is rebuilt from where: the schema from the migrations; the users and
groups from a full directory sync (the service's first sync, since the new
database has no cursor); the live mappings from the kernel, whose user-map
elements carry each mapping's user name and remaining lifetime.  Until the
directory has been read once, the enforcer holds the kernel as it is (users
unknown to the new store would otherwise lose their access).  Applications
and policies kept only in the store (not in the config file) are lost with
the file; the log says so and where the old file went, for forensics.

Only SQLite can be corrupt in this sense; a PostgreSQL store has its own
recovery and is never moved.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.engine import make_url

from userseg.model import IPAddress, Mapping
from userseg.store import Store, StoreError, is_corruption

log = logging.getLogger("userseg.recovery")

RECOVERED_SOURCE = "kernel-recovery"
_SIDE_FILES = ("", "-wal", "-shm", "-journal")  # the database and what SQLite keeps beside it


@dataclass(frozen=True)
class Rebuilt:
    moved_to: Path
    problem: str
    mappings: int
    at: datetime

    def reason(self) -> str:
        return (
            f"database was corrupt ({self.problem}) and was rebuilt at "
            f"{self.at.isoformat(timespec='seconds')}; "
            f"old file kept as {self.moved_to}; {self.mappings} mapping(s) restored from the kernel"
        )


def sqlite_path(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def check_sqlite(path: Path, timeout: float = 30.0) -> str | None:
    """None if the file is absent or sound, else what is wrong with it.

    `PRAGMA quick_check` reads every page (O(size), ~0.1 s per 50 MB) but skips
    the index cross-checks of integrity_check.  Only damage is reported here; a
    database locked past `timeout` seconds, or one that cannot be opened, raises
    StoreError (is_transient), because it is not corrupt.
    """
    if not path.exists() or path.stat().st_size == 0:
        return None
    # A percent-encoded URI: a "?", "#" or "%" in the path would otherwise end the
    # file name early, and SQLite would check (and create) some other file.
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True, timeout=timeout)
        try:
            rows = con.execute("PRAGMA quick_check").fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        if is_corruption(exc):
            return str(exc)
        # Locked, unreadable, not a file: the file may be fine, and moving it aside would
        # throw away a sound database.  The caller retries (systemd restarts the service).
        raise StoreError(f"cannot check the database {path}: {exc}") from exc
    problems = [str(r[0]) for r in rows if r and r[0] != "ok"]
    return "; ".join(problems[:3]) or None


def move_aside(path: Path, now: datetime) -> Path:
    """Rename the database and its WAL/SHM side files; returns the new main file's path."""
    stamp = now.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    # Any earlier file of that name, main or side file, is evidence: never replaced.
    while any(Path(str(target) + suffix).exists() for suffix in _SIDE_FILES):
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in _SIDE_FILES:
        side = Path(str(path) + suffix)
        if side.exists():
            side.rename(Path(str(target) + suffix))
    return target


def rebuild(
    url: str,
    problem: str,
    now: datetime,
    kernel_mappings: Callable[[], Iterable[tuple[IPAddress, str, datetime]]],
) -> Rebuilt:
    """Move the damaged file aside, create a fresh schema, restore the kernel's mappings."""
    path = sqlite_path(url)
    if path is None:
        raise StoreError(f"cannot rebuild {url}: only a SQLite file can be moved aside")
    moved = move_aside(path, now)
    log.critical(
        "DATABASE CORRUPT: %s (%s); moved to %s and rebuilding: users and groups from the next full "
        "directory sync, mappings from the kernel; applications/policies kept only in the old store "
        "are NOT restored (config-file ones are)",
        path,
        problem,
        moved,
    )
    restored: list[Mapping] = []
    try:
        found = list(kernel_mappings())
    except Exception as exc:  # an unreadable kernel must not stop the rebuild
        log.error("could not read mappings back from the kernel: %s", exc)
        found = []
    for ip, user, expires_at in found:
        if expires_at > now:
            restored.append(
                Mapping(ip, user, RECOVERED_SOURCE, now, now, expires_at, {"recovered": "kernel"})
            )
    with Store(url) as store:
        store.upgrade()
        if restored:
            store.put_mappings(restored)
    log.critical("database rebuilt at %s with %d mapping(s) restored from the kernel", path, len(restored))
    return Rebuilt(moved, problem, len(restored), now)
