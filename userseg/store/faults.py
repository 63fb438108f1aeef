"""Classify database failures: wait and retry, or rebuild.

Why here: callers see StoreError (the store wraps SQLAlchemy), but the right
reaction differs - a SQLite file locked by another writer past the busy
timeout, or a PostgreSQL server restarting, clears up by itself (retry); a
file that is not a database any more never does (move it aside and rebuild,
userseg/service/recovery.py).  Both are told apart from the original DBAPI
error in the exception chain.
"""

from __future__ import annotations

import sqlite3

from sqlalchemy.exc import DBAPIError, OperationalError

_CORRUPT = ("file is not a database", "database disk image is malformed", "malformed database schema")


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def is_corruption(exc: BaseException) -> bool:
    """The SQLite file is damaged (truncated, overwritten): retrying will not help."""
    for e in _chain(exc):
        orig = e.orig if isinstance(e, DBAPIError) else e
        if isinstance(orig, sqlite3.DatabaseError) and any(m in str(orig).lower() for m in _CORRUPT):
            return True
    return False


def is_transient(exc: BaseException) -> bool:
    """Busy, locked or disconnected: the same transaction can succeed later."""
    if is_corruption(exc):
        return False
    for e in _chain(exc):
        if isinstance(e, OperationalError) or (isinstance(e, DBAPIError) and e.connection_invalidated):
            return True
        if isinstance(e, sqlite3.OperationalError):
            return True
    return False
