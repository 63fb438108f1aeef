"""Statements for the login pipeline: one batch commit, and the reads `status`, `--why`
and `ignore-suggestions` need.

A batch (mappings, removals, shared marks, sightings, source positions and
counters) is committed in ONE transaction, so the persisted read position of a
source never runs ahead of, or behind, the mappings derived from what it read.
Upserts use the dialect's ON CONFLICT (SQLite and PostgreSQL both have it):
sightings and source rows are hot and read-modify-write would double the cost.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from userseg.core.ingest import SharedMark
from userseg.model import IPAddress, Mapping, ip
from userseg.store import codec, mappings
from userseg.store.schema import MappingRow, SharedAddressRow, SightingRow, SourceStateRow

_CHUNK = 500


@dataclass(frozen=True)
class Sighting:
    user: str
    ip: str
    first_seen: datetime
    last_seen: datetime
    events: int


@dataclass(frozen=True)
class SourceState:
    name: str
    position: str | None
    last_event_at: datetime | None
    counters: dict[str, int]
    updated_at: datetime


@dataclass
class IngestBatch:
    """Everything one pipeline batch changes in the store."""

    upserts: dict[IPAddress, Mapping] = field(default_factory=dict)  # last write per IP wins
    touches: dict[IPAddress, datetime] = field(default_factory=dict)  # refresh: only last_seen moves
    removes: dict[IPAddress, Mapping] = field(default_factory=dict)
    shared: dict[IPAddress, SharedMark] = field(default_factory=dict)
    unshared: set[IPAddress] = field(default_factory=set)
    sightings: dict[tuple[str, str], Sighting] = field(default_factory=dict)
    positions: dict[str, str] = field(default_factory=dict)
    last_event_at: dict[str, datetime] = field(default_factory=dict)
    counters: dict[str, dict[str, int]] = field(default_factory=dict)  # cumulative per source

    def is_empty(self) -> bool:
        return not (
            self.upserts
            or self.removes
            or self.shared
            or self.unshared
            or self.sightings
            or self.positions
            or self.counters
        )

    def upsert(self, m: Mapping) -> None:
        self.removes.pop(m.ip, None)
        self.touches.pop(m.ip, None)
        self.upserts[m.ip] = m

    def touch(self, m: Mapping) -> None:
        """A refresh that changed nothing but last_seen: an UPDATE of one column, no row rebuilt."""
        if m.ip in self.upserts:
            self.upserts[m.ip] = m
        else:
            self.touches[m.ip] = m.last_seen

    def remove(self, m: Mapping) -> None:
        self.upserts.pop(m.ip, None)
        self.touches.pop(m.ip, None)
        self.removes[m.ip] = m

    def mark_shared(self, mark: SharedMark) -> None:
        self.unshared.discard(mark.ip)
        self.shared[mark.ip] = mark

    def unshare(self, addr: IPAddress) -> None:
        self.shared.pop(addr, None)
        self.unshared.add(addr)


def commit(conn: Connection, batch: IngestBatch, now: datetime) -> None:
    if batch.removes:
        ips = [str(a) for a in batch.removes]
        for i in range(0, len(ips), _CHUNK):
            conn.execute(delete(MappingRow).where(MappingRow.ip.in_(ips[i : i + _CHUNK])))
    if batch.upserts:
        mappings.upsert_many(conn, [codec.mapping_row(m) for m in batch.upserts.values()])
    if batch.touches:
        stmt = (
            update(MappingRow)
            .where(MappingRow.ip == bindparam("key"))
            .values(last_seen=bindparam("seen"))
            .execution_options(synchronize_session=False)
        )
        conn.execute(stmt, [{"key": str(a), "seen": t} for a, t in batch.touches.items()])
    if batch.unshared:
        ips = [str(a) for a in batch.unshared]
        for i in range(0, len(ips), _CHUNK):
            conn.execute(delete(SharedAddressRow).where(SharedAddressRow.ip.in_(ips[i : i + _CHUNK])))
    if batch.shared:
        rows = [
            {"ip": str(m.ip), "users": json.dumps(list(m.users)), "since": m.since, "last_seen": m.last_seen}
            for m in batch.shared.values()
        ]
        _upsert(conn, SharedAddressRow, rows, ["ip"], ["users", "since", "last_seen"])
    if batch.sightings:
        _upsert_sightings(conn, list(batch.sightings.values()))
    names = set(batch.positions) | set(batch.counters) | set(batch.last_event_at)
    if names:
        rows = []
        for name in sorted(names):
            rows.append(
                {
                    "name": name,
                    "position": batch.positions.get(name),
                    "last_event_at": batch.last_event_at.get(name),
                    "counters": json.dumps(batch.counters.get(name, {}), sort_keys=True),
                    "updated_at": now,
                }
            )
        _upsert_sources(conn, rows)


def _insert(conn: Connection, table: Any) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"database dialect {conn.dialect.name!r} is not supported")


def _upsert(
    conn: Connection, table: Any, rows: list[dict[str, Any]], keys: list[str], cols: list[str]
) -> None:
    stmt = _insert(conn, table)
    stmt = stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in cols})
    conn.execute(stmt, rows)


def _upsert_sightings(conn: Connection, sightings: Sequence[Sighting]) -> None:
    stmt = _insert(conn, SightingRow)
    t = SightingRow.__table__
    stmt = stmt.on_conflict_do_update(
        index_elements=["user_name", "ip"],
        set_={
            "last_seen": func.max(t.c.last_seen, stmt.excluded.last_seen)
            if conn.dialect.name == "sqlite"
            else func.greatest(t.c.last_seen, stmt.excluded.last_seen),
            "events": t.c.events + stmt.excluded.events,
        },
    )
    conn.execute(
        stmt,
        [
            {
                "user_name": s.user,
                "ip": s.ip,
                "first_seen": s.first_seen,
                "last_seen": s.last_seen,
                "events": s.events,
            }
            for s in sightings
        ],
    )


def _upsert_sources(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Position and last_event_at only move when the batch carries one (NULL keeps the old);
    counters are cumulative, so the pipeline sends them for every source it names."""
    stmt = _insert(conn, SourceStateRow)
    t = SourceStateRow.__table__
    stmt = stmt.on_conflict_do_update(
        index_elements=["name"],
        set_={
            "position": func.coalesce(stmt.excluded.position, t.c.position),
            "last_event_at": func.coalesce(stmt.excluded.last_event_at, t.c.last_event_at),
            "counters": stmt.excluded.counters,
            "updated_at": stmt.excluded.updated_at,
        },
    )
    conn.execute(stmt, rows)


# ------------------------------------------------------------------ reads


def source_states(conn: Connection) -> dict[str, SourceState]:
    out: dict[str, SourceState] = {}
    t = SourceStateRow
    cols = (t.name, t.position, t.last_event_at, t.counters, t.updated_at)
    for name, position, last_event_at, counters_text, updated_at in conn.execute(select(*cols)):
        try:
            counters = {str(k): int(v) for k, v in json.loads(counters_text or "{}").items()}
        except (ValueError, AttributeError):
            counters = {}
        out[name] = SourceState(name, position, last_event_at, counters, updated_at)
    return out


def shared_marks(conn: Connection) -> list[SharedMark]:
    out = []
    t = SharedAddressRow
    for addr, users_text, since, last_seen in conn.execute(select(t.ip, t.users, t.since, t.last_seen)):
        try:
            users = tuple(str(u) for u in json.loads(users_text))
            out.append(SharedMark(ip(addr), users, since, last_seen))
        except ValueError:
            continue  # a damaged row loses one shared mark, not the pipeline's start
    return out


def sightings_since(conn: Connection, since: datetime) -> list[Sighting]:
    rows = conn.execute(
        select(
            SightingRow.user_name,
            SightingRow.ip,
            SightingRow.first_seen,
            SightingRow.last_seen,
            SightingRow.events,
        ).where(SightingRow.last_seen >= since)
    )
    return [Sighting(*r) for r in rows]


def prune_sightings(conn: Connection, before: datetime) -> int:
    return conn.execute(delete(SightingRow).where(SightingRow.last_seen < before)).rowcount or 0
