"""Statements on the mappings table, each run inside a transaction the Store owns.

Mappings are the hot table (one row per logged-on client, refreshed on every
logon event, 250k rows in large sites), so reads build model objects straight
from tuples and bulk writes use executemany rather than ORM objects.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Connection, delete, insert, select, update

from userseg.model import Mapping
from userseg.store import codec
from userseg.store.schema import MappingRow

COLUMNS = (
    MappingRow.ip,
    MappingRow.user_name,
    MappingRow.source,
    MappingRow.first_seen,
    MappingRow.last_seen,
    MappingRow.expires_at,
    MappingRow.provenance,
)
_CHUNK = 500  # keys per IN (...) list; well under every backend's bind-parameter limit
_FETCH = 10_000  # rows decoded per fetch by the bulk readers


def load(conn: Connection, *conditions: ColumnElement[bool]) -> list[Mapping]:
    """Mappings matching all conditions, sorted by address for stable output."""
    found = [codec.mapping_from_row(*row) for row in conn.execute(select(*COLUMNS).where(*conditions))]
    found.sort(key=order)
    return found


def load_unsorted(conn: Connection, *conditions: ColumnElement[bool]) -> tuple[Mapping, ...]:
    """As load() without the sort: the snapshot path, where order does not matter and time does.

    Rows are decoded _FETCH at a time rather than fetched all at once: the raw
    rows (their text timestamps and addresses) would otherwise all be alive
    beside the decoded mappings, ~100 MB more peak memory at 250k for nothing.
    """
    decode = codec.mapping_from_row
    out: list[Mapping] = []
    for rows in conn.execute(select(*COLUMNS).where(*conditions)).partitions(_FETCH):
        out += [decode(*row) for row in rows]
    return tuple(out)


def upsert(conn: Connection, row: dict[str, Any]) -> Mapping | None:
    """Insert or overwrite the row for row['ip']; returns the previous mapping."""
    old = load(conn, MappingRow.ip == row["ip"])
    if old:
        conn.execute(update(MappingRow).where(MappingRow.ip == row["ip"]).values(row))
        return old[0]
    conn.execute(insert(MappingRow).values(row))
    return None


def upsert_many(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Replace-by-IP for many rows: delete the old ones in chunks, then one executemany insert.

    Portable (no dialect-specific ON CONFLICT) and, on SQLite, as fast as the
    upsert forms because the deletes walk the primary-key index.
    """
    ips = [r["ip"] for r in rows]
    for i in range(0, len(ips), _CHUNK):
        conn.execute(delete(MappingRow).where(MappingRow.ip.in_(ips[i : i + _CHUNK])))
    conn.execute(insert(MappingRow), rows)


def remove(conn: Connection, condition: ColumnElement[bool]) -> list[Mapping]:
    """Delete the matching mappings and return them."""
    gone = load(conn, condition)
    if gone:
        conn.execute(delete(MappingRow).where(condition))
    return gone


def remove_of_users(conn: Connection, users: list[str]) -> list[Mapping]:
    """Delete every mapping of these users (IN lists of _CHUNK names) and return them."""
    gone: list[Mapping] = []
    for i in range(0, len(users), _CHUNK):
        gone += remove(conn, MappingRow.user_name.in_(users[i : i + _CHUNK]))
    return gone


def stored(row: dict[str, Any]) -> Mapping:
    """The mapping exactly as a read would return it after writing `row`."""
    return codec.mapping_from_row(*(row[c.key] for c in COLUMNS))


def order(m: Mapping) -> tuple[int, int]:
    return (m.ip.version, int(m.ip))
