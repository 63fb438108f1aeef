"""Classify database failures: wait and retry, or rebuild.

Why here: callers see StoreError (the store wraps SQLAlchemy), but the right
reaction differs - a SQLite file locked by another writer past the busy
timeout, or a PostgreSQL server restarting, clears up by itself (retry); a
file that is not a database any more never does (move it aside and rebuild,
userseg/service/recovery.py).  Both are told apart from the original DBAPI
error in the exception chain.

SQLite reports both kinds, and plain mistakes ("no such table"), as one
exception class, OperationalError; its result code tells them apart.  A
mistake is neither: retrying it would stall the caller for good.
"""

from __future__ import annotations

import sqlite3

from sqlalchemy.exc import DBAPIError, OperationalError

_CORRUPT = ("file is not a database", "database disk image is malformed", "malformed database schema")
_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
# Busy or locked by another connection; and what an admin fixes without the caller losing
# its work: a full disk, an I/O error, a file made read-only or unopenable.
_TRANSIENT_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_READONLY,
    }
)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _sqlite_errors(exc: BaseException) -> list[sqlite3.Error]:
    """The SQLite errors in the chain, whether raised bare or wrapped by SQLAlchemy."""
    found: list[sqlite3.Error] = []
    for e in _chain(exc):
        orig = e.orig if isinstance(e, DBAPIError) else e
        if isinstance(orig, sqlite3.Error) and orig not in found:
            found.append(orig)
    return found


def _primary_code(e: sqlite3.Error) -> int | None:
    code = getattr(e, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None  # extended codes keep the primary in the low byte


def is_corruption(exc: BaseException) -> bool:
    """The SQLite file is damaged (truncated, overwritten): retrying will not help."""
    return any(
        _primary_code(e) in _CORRUPT_CODES
        or (isinstance(e, sqlite3.DatabaseError) and any(m in str(e).lower() for m in _CORRUPT))
        for e in _sqlite_errors(exc)
    )


def is_transient(exc: BaseException) -> bool:
    """Busy, locked or disconnected: the same transaction can succeed later."""
    if is_corruption(exc):
        return False
    sqlite_errors = _sqlite_errors(exc)
    if sqlite_errors:
        return any(
            _primary_code(e) in _TRANSIENT_CODES
            or (_primary_code(e) is None and any(m in str(e).lower() for m in ("locked", "busy")))
            for e in sqlite_errors
        )
    # Other databases (PostgreSQL): a lost or refused connection is an OperationalError.
    return any(
        isinstance(e, OperationalError) or (isinstance(e, DBAPIError) and e.connection_invalidated)
        for e in _chain(exc)
    )
