"""Statements for the raw directory image, its cursor and the per-DC sync outcomes.

The image is stored entry by entry (one JSON row per object GUID) and written
as a diff, so an incremental sync that changed one group rewrites one row.
Decoding is strict: a corrupt row is a StoreError naming the GUID, because a
silently dropped group would silently drop access.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, bindparam, delete, insert, select, update

from userseg.directory.model import DirectoryGroup, DirectoryImage, DirectoryUser, SyncCursor
from userseg.model import Mapping
from userseg.store import catalog, codec, directory, mappings
from userseg.store.schema import (
    DirectoryObjectRow,
    DirectoryStateRow,
    DirectorySyncRow,
)

CURSOR_KEY = "cursor"
_OBJECT_COLUMNS = (
    DirectoryObjectRow.guid,
    DirectoryObjectRow.kind,
    DirectoryObjectRow.dn,
    DirectoryObjectRow.data,
)
DOMAIN_SID_KEY = "domain_sid"


@dataclass(frozen=True)
class DirectorySyncStatus:
    """The last attempt and last success against one DC, as status shows them."""

    server: str
    last_attempt_at: datetime | None
    last_success_at: datetime | None
    last_kind: str
    last_error: str
    users: int
    groups: int
    milliseconds: int


def _user_doc(u: DirectoryUser) -> str:
    return json.dumps(
        {
            "sam": u.sam,
            "upn": u.upn,
            "sid": u.sid,
            "display_name": u.display_name,
            "mail": u.mail,
            "disabled": u.disabled,
            "primary_group_id": u.primary_group_id,
            "usn": u.usn,
            "expires": u.expires,
        },
        ensure_ascii=False,
        sort_keys=True,
    )


def _group_doc(g: DirectoryGroup) -> str:
    return json.dumps(
        {
            "name": g.name,
            "sid": g.sid,
            "members": sorted(g.members),
            "usn": g.usn,
            "description": g.description,
        },
        ensure_ascii=False,
        sort_keys=True,
    )


def _decode(guid: str, kind: str, dn: str, data: str) -> DirectoryUser | DirectoryGroup:
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict):
            raise TypeError(f"expected a JSON object, got {type(doc).__name__}")
        if kind == "user":
            pg = doc["primary_group_id"]
            return DirectoryUser(
                guid=guid,
                dn=dn,
                sam=_typed(doc, "sam", str),
                upn=_typed(doc, "upn", str),
                sid=_typed(doc, "sid", str),
                display_name=_typed(doc, "display_name", str),
                mail=_typed(doc, "mail", str),
                disabled=_typed(doc, "disabled", bool),
                primary_group_id=None if pg is None else _typed(doc, "primary_group_id", int),
                usn=_typed(doc, "usn", int),
                expires=_typed(doc, "expires", int),
            )
        members = _typed(doc, "members", list)
        if not all(isinstance(m, str) for m in members):
            raise TypeError("members: expected a list of strings")
        return DirectoryGroup(
            guid=guid,
            dn=dn,
            name=_typed(doc, "name", str),
            sid=_typed(doc, "sid", str),
            members=frozenset(members),
            usn=_typed(doc, "usn", int),
            description=_typed(doc, "description", str),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise codec.corrupt("directory_objects", guid, f"undecodable entry: {exc}") from exc


T = TypeVar("T")


def _typed(doc: dict[str, Any], key: str, kind: type[T]) -> T:
    """doc[key] if it has exactly the JSON type written (a bool is not an int here, nor "false" a bool)."""
    value = doc[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{key}: expected {kind.__name__}, got {value!r}")
    return value


def load_image(conn: Connection) -> tuple[DirectoryImage, SyncCursor | None]:
    state = {k: v for k, v in conn.execute(select(DirectoryStateRow.key, DirectoryStateRow.value))}
    users: dict[str, DirectoryUser] = {}
    groups: dict[str, DirectoryGroup] = {}
    for guid, kind, dn, data in conn.execute(select(*_OBJECT_COLUMNS)):
        entry = _decode(guid, kind, dn, data)
        if isinstance(entry, DirectoryUser):
            users[guid] = entry
        else:
            groups[guid] = entry
    cursor = None
    if CURSOR_KEY in state:
        cursor = _parse_cursor(state[CURSOR_KEY])
    return DirectoryImage(state.get(DOMAIN_SID_KEY, ""), users, groups), cursor


def write_image(
    conn: Connection, image: DirectoryImage, cursor: SyncCursor, base: DirectoryImage | None = None
) -> bool:
    """Make the stored image equal `image`; returns whether any entry changed.

    With `base` (the image the table is known to hold), only entries that are
    not the very same objects as in `base` are written: apply_changes() keeps
    untouched entries identical, so an incremental sync rewrites only what the
    DC reported, without serialising and comparing 20k rows.
    """
    wrote = _write_image_compare(conn, image) if base is None else _write_image_delta(conn, image, base)
    _put_state(conn, CURSOR_KEY, _cursor_doc(cursor))
    _put_state(conn, DOMAIN_SID_KEY, image.domain_sid)
    return wrote


def _write_image_delta(conn: Connection, image: DirectoryImage, base: DirectoryImage) -> bool:
    changed = [
        e
        for have, want in ((base.users, image.users), (base.groups, image.groups))
        for guid, e in want.items()
        if have.get(guid) is not e
    ]
    gone = (base.users.keys() | base.groups.keys()) - (image.users.keys() | image.groups.keys())
    stale = [{"k": k} for k in gone | {e.guid for e in changed}]
    if stale:
        conn.execute(delete(DirectoryObjectRow).where(DirectoryObjectRow.guid == bindparam("k")), stale)
    if changed:
        conn.execute(
            insert(DirectoryObjectRow),
            [
                {"guid": e.guid, "kind": "user", "dn": e.dn, "data": _user_doc(e)}
                if isinstance(e, DirectoryUser)
                else {"guid": e.guid, "kind": "group", "dn": e.dn, "data": _group_doc(e)}
                for e in changed
            ],
        )
    return bool(changed or gone)


def _write_image_compare(conn: Connection, image: DirectoryImage) -> bool:
    have = {guid: (kind, dn, data) for guid, kind, dn, data in conn.execute(select(*_OBJECT_COLUMNS))}
    want: dict[str, tuple[str, str, str]] = {}
    for u in image.users.values():
        want[u.guid] = ("user", u.dn, _user_doc(u))
    for g in image.groups.values():
        want[g.guid] = ("group", g.dn, _group_doc(g))
    new = [{"guid": k, "kind": v[0], "dn": v[1], "data": v[2]} for k, v in want.items() if k not in have]
    changed = [
        {"k": k, "kind": v[0], "dn": v[1], "data": v[2]}
        for k, v in want.items()
        if k in have and have[k] != v
    ]
    gone = [{"k": k} for k in have.keys() - want.keys()]
    if gone:
        conn.execute(delete(DirectoryObjectRow).where(DirectoryObjectRow.guid == bindparam("k")), gone)
    if changed:
        conn.execute(
            update(DirectoryObjectRow)
            .where(DirectoryObjectRow.guid == bindparam("k"))
            .values(kind=bindparam("kind"), dn=bindparam("dn"), data=bindparam("data")),
            changed,
        )
    if new:
        conn.execute(insert(DirectoryObjectRow), new)
    return bool(new or changed or gone)


def advance(conn: Connection, cursor: SyncCursor, *, now: datetime, milliseconds: int) -> None:
    """An incremental sync that found nothing: only the cursor and the success time move."""
    _put_state(conn, CURSOR_KEY, _cursor_doc(cursor))
    record(conn, cursor.server, now=now, kind="incremental", milliseconds=milliseconds)


def _cursor_doc(cursor: SyncCursor) -> str:
    return json.dumps(
        {"server": cursor.server, "invocation_id": cursor.invocation_id, "highest_usn": cursor.highest_usn}
    )


def _put_state(conn: Connection, key: str, value: str) -> None:
    if conn.execute(select(DirectoryStateRow.key).where(DirectoryStateRow.key == key)).first() is None:
        conn.execute(insert(DirectoryStateRow).values(key=key, value=value))
    else:
        conn.execute(update(DirectoryStateRow).where(DirectoryStateRow.key == key).values(value=value))


def record(
    conn: Connection,
    server: str,
    *,
    now: datetime,
    kind: str,
    error: str = "",
    users: int | None = None,
    groups: int | None = None,
    milliseconds: int = 0,
) -> None:
    """Record an attempt; a success (error == "") also moves last_success_at and the counts."""
    values: dict[str, Any] = {"last_attempt_at": now, "last_kind": kind, "last_error": error[:4000]}
    if not error:
        values.update(last_success_at=now, milliseconds=milliseconds)
        if users is not None:
            values["users"] = users
        if groups is not None:
            values["groups"] = groups
    row = conn.execute(select(DirectorySyncRow.server).where(DirectorySyncRow.server == server)).first()
    if row is None:
        base: dict[str, Any] = {"users": 0, "groups": 0, "milliseconds": 0, "last_success_at": None}
        conn.execute(insert(DirectorySyncRow).values(server=server, **{**base, **values}))
    else:
        conn.execute(update(DirectorySyncRow).where(DirectorySyncRow.server == server).values(values))


def statuses(conn: Connection) -> list[DirectorySyncStatus]:
    rows = conn.execute(
        select(
            DirectorySyncRow.server,
            DirectorySyncRow.last_attempt_at,
            DirectorySyncRow.last_success_at,
            DirectorySyncRow.last_kind,
            DirectorySyncRow.last_error,
            DirectorySyncRow.users,
            DirectorySyncRow.groups,
            DirectorySyncRow.milliseconds,
        ).order_by(DirectorySyncRow.server)
    )
    return [DirectorySyncStatus(*row) for row in rows]


@dataclass(frozen=True)
class DirectoryBase:
    """What a commit left in the tables, kept by the caller to make the next commit a delta."""

    cursor: SyncCursor
    image: DirectoryImage
    want: directory.DirectoryInput


@dataclass(frozen=True)
class DirectoryCommit:
    """What one committed directory sync changed."""

    changed: bool  # users, groups or memberships changed (the ruleset must be recompiled)
    lost: tuple[str, ...]  # accounts deleted or disabled by this sync (already-disabled ones are not listed)
    removed: tuple[Mapping, ...]  # mappings of deleted or disabled accounts, now gone (revoke them)
    base: DirectoryBase | None = None  # pass to the next commit


def commit(
    conn: Connection,
    image: DirectoryImage,
    cursor: SyncCursor,
    want: directory.DirectoryInput,
    *,
    server: str,
    kind: str,
    now: datetime,
    milliseconds: int,
    base: DirectoryBase | None = None,
) -> DirectoryCommit:
    """The whole sync result in one transaction: image, derived view, lost accounts' mappings, outcome.

    Mappings of accounts that disappeared or were disabled are deleted here, in
    the same transaction as the account change, so no reader ever sees a
    deleted account that still has live mappings.
    """
    if base is not None and _stored_cursor(conn) != base.cursor:
        base = None  # someone else (another gateway, the CLI) committed since: compare with the tables
    have = base.want if base is not None else directory.read_input(conn)
    before = {name: disabled for name, (_, disabled) in have.users.items()}
    changed = directory.write_diff(conn, want, now, have)
    write_image(conn, image, cursor, base.image if base is not None else None)
    disabled = {n for n, (_, off) in want.users.items() if off}
    gone = before.keys() - want.users.keys()
    # Reported as lost: accounts this sync deleted or disabled (not every account that was
    # already disabled).  Mappings are removed for all of them plus every disabled account,
    # since a stale logon event may have mapped an account that was disabled long ago.
    lost = sorted(gone | {n for n in disabled if before.get(n) is False})
    revoke = sorted(gone | disabled)
    removed = mappings.remove_of_users(conn, revoke)
    catalog.audit_removed_mappings(conn, removed, actor="directory", now=now)
    record(
        conn,
        server,
        now=now,
        kind=kind,
        users=len(want.users),
        groups=len(want.groups),
        milliseconds=milliseconds,
    )
    if changed or removed:
        catalog.bump(conn)
    return DirectoryCommit(changed, tuple(lost), tuple(removed), DirectoryBase(cursor, image, want))


def _parse_cursor(text: str) -> SyncCursor:
    try:
        doc = json.loads(text)
        return SyncCursor(str(doc["server"]), str(doc["invocation_id"]), int(doc["highest_usn"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise codec.corrupt("directory_state", CURSOR_KEY, f"undecodable cursor: {exc}") from exc


def _stored_cursor(conn: Connection) -> SyncCursor | None:
    row = conn.execute(select(DirectoryStateRow.value).where(DirectoryStateRow.key == CURSOR_KEY)).first()
    return None if row is None else _parse_cursor(row[0])
