"""Directory snapshot storage: users, groups and effective memberships.

A directory sync hands over the whole picture every time (snapshot
semantics), but only the difference is written: a sync that finds nothing new
changes no row and does not bump the store generation, so the daemon is not
woken to recompile an identical ruleset every few minutes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from sys import intern
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update

from userseg.model import Group, User, canonical
from userseg.store.codec import StoreError
from userseg.store.schema import GroupRow, MembershipRow, UserRow


@dataclass
class DirectoryInput:
    """Validated, canonicalised input of replace_directory()."""

    users: dict[str, tuple[str, bool]] = field(default_factory=dict)  # name -> (display, disabled)
    groups: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (display, dn)
    members: set[tuple[str, str]] = field(default_factory=set)  # (user, group)


def collect(users: Iterable[User], groups: Iterable[Group]) -> DirectoryInput:
    """Canonicalise and check the input before anything is written.

    A group named only in some user's effective groups (e.g. a builtin group
    outside the sync's search base) gets a bare row rather than failing the
    whole sync: policies match groups by name, so the membership still counts.
    """
    out = DirectoryInput()
    for g in groups:
        name = canonical(g.name)
        if not name:
            raise StoreError("directory input: a group has an empty name")
        if name in out.groups:
            raise StoreError(f"directory input: duplicate group name {name!r}")
        out.groups[name] = (g.display_name, g.dn)
    for u in users:
        name = canonical(u.name)
        if not name:
            raise StoreError("directory input: a user has an empty name")
        if name in out.users:
            raise StoreError(f"directory input: duplicate user name {name!r}")
        out.users[name] = (u.display_name, bool(u.disabled))
        for group in u.groups:
            gname = canonical(group)
            if not gname:
                raise StoreError(f"directory input: user {name!r} has a group with an empty name")
            out.groups.setdefault(gname, ("", ""))
            out.members.add((name, gname))
    return out


def read_input(conn: Connection) -> DirectoryInput:
    """What the tables hold now, in the shape of write_diff's input."""
    have = DirectoryInput()
    have.groups = {
        n: (d, dn) for n, d, dn in conn.execute(select(GroupRow.name, GroupRow.display_name, GroupRow.dn))
    }
    have.users = {
        n: (d, bool(x))
        for n, d, x in conn.execute(select(UserRow.name, UserRow.display_name, UserRow.disabled))
    }
    have.members = {
        (u, g) for u, g in conn.execute(select(MembershipRow.user_name, MembershipRow.group_name))
    }
    return have


def write_diff(
    conn: Connection, want: DirectoryInput, now: datetime, have: DirectoryInput | None = None
) -> bool:
    """Make the tables equal `want`; returns whether any row changed.

    `have` is what the tables are known to hold (the previous commit's input,
    when the caller can vouch for it); None reads it.  Passing it turns an
    incremental sync at 20k users from a 145k-row read into set arithmetic.
    """
    if have is None:
        have = read_input(conn)
    have_groups, have_users, have_members = have.groups, have.users, have.members

    new_groups = [
        {"name": n, "display_name": d, "dn": dn} for n, (d, dn) in want.groups.items() if n not in have_groups
    ]
    changed_groups = [
        {"k": n, "d": d, "dn": dn}
        for n, (d, dn) in want.groups.items()
        if n in have_groups and have_groups[n] != (d, dn)
    ]
    new_users = [
        {"name": n, "display_name": d, "disabled": x, "updated_at": now}
        for n, (d, x) in want.users.items()
        if n not in have_users
    ]
    changed_users = [
        {"k": n, "d": d, "x": x, "t": now}
        for n, (d, x) in want.users.items()
        if n in have_users and have_users[n] != (d, x)
    ]
    gone_members = [{"u": u, "g": g} for u, g in have_members - want.members]
    # Sorted so inserts append to the primary-key B-tree instead of splitting pages at random.
    new_members = [{"user_name": u, "group_name": g} for u, g in sorted(want.members - have_members)]
    gone_users = [{"k": n} for n in have_users.keys() - want.users.keys()]
    gone_groups = [{"k": n} for n in have_groups.keys() - want.groups.keys()]

    # Order matters for the foreign keys: parents before children on the way
    # in, children before parents on the way out.
    _many(conn, insert(GroupRow), new_groups)
    _many(
        conn,
        update(GroupRow)
        .where(GroupRow.name == bindparam("k"))
        .values(display_name=bindparam("d"), dn=bindparam("dn")),
        changed_groups,
    )
    _many(conn, insert(UserRow), new_users)
    _many(
        conn,
        update(UserRow)
        .where(UserRow.name == bindparam("k"))
        .values(display_name=bindparam("d"), disabled=bindparam("x"), updated_at=bindparam("t")),
        changed_users,
    )
    _many(
        conn,
        delete(MembershipRow).where(
            MembershipRow.user_name == bindparam("u"), MembershipRow.group_name == bindparam("g")
        ),
        gone_members,
    )
    _many(conn, insert(MembershipRow), new_members)
    _many(conn, delete(UserRow).where(UserRow.name == bindparam("k")), gone_users)
    _many(conn, delete(GroupRow).where(GroupRow.name == bindparam("k")), gone_groups)
    return any(
        (
            new_groups,
            changed_groups,
            new_users,
            changed_users,
            gone_members,
            new_members,
            gone_users,
            gone_groups,
        )
    )


def _many(conn: Connection, statement: Any, rows: list[dict[str, Any]]) -> None:
    if rows:
        conn.execute(statement, rows)


_SEP = "\x1f"  # ASCII unit separator; cannot be typed into an AD name, and checked anyway


def load_users(conn: Connection) -> dict[str, User]:
    """All users with their effective groups.

    Memberships are aggregated per user in SQL (group_concat / string_agg),
    which returns 100k rows instead of 500k and halves the time of this, the
    biggest part of snapshot_parts.  Each row also carries its count, so a
    group name that somehow contains the separator is detected and that user's
    groups are re-read exactly: a mis-split here would grant the wrong access.
    Group names are interned because 100k users share a few thousand of them
    and the daemon keeps this dict in memory.
    """
    groups_of: dict[str, frozenset[str]] = {}
    recheck: list[str] = []
    aggregated = conn.execute(
        select(
            MembershipRow.user_name, func.count(), func.aggregate_strings(MembershipRow.group_name, _SEP)
        ).group_by(MembershipRow.user_name)
    ).all()
    for user, count, joined in aggregated:
        names = joined.split(_SEP)
        if len(names) == count:
            groups_of[user] = frozenset([intern(g) for g in names])
        else:
            recheck.append(user)
    for i in range(0, len(recheck), 500):
        chunk = recheck[i : i + 500]
        rows = conn.execute(
            select(MembershipRow.user_name, MembershipRow.group_name).where(
                MembershipRow.user_name.in_(chunk)
            )
        ).all()
        exact: dict[str, set[str]] = {}
        for user, group in rows:
            exact.setdefault(user, set()).add(intern(group))
        groups_of.update((user, frozenset(groups)) for user, groups in exact.items())
    empty: frozenset[str] = frozenset()
    users = conn.execute(select(UserRow.name, UserRow.display_name, UserRow.disabled)).all()
    return {
        name: User(name, display or "", bool(disabled), groups_of.get(name, empty))
        for name, display, disabled in users
    }


def load_user(conn: Connection, name: str) -> User | None:
    row = conn.execute(select(UserRow.display_name, UserRow.disabled).where(UserRow.name == name)).first()
    if row is None:
        return None
    groups = conn.execute(select(MembershipRow.group_name).where(MembershipRow.user_name == name)).scalars()
    return User(name, row[0] or "", bool(row[1]), frozenset(groups))


def load_groups(conn: Connection) -> dict[str, Group]:
    return {
        name: Group(name, display or "", dn or "")
        for name, display, dn in conn.execute(select(GroupRow.name, GroupRow.display_name, GroupRow.dn))
    }
