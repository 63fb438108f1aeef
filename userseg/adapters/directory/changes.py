"""Incremental reads: what changed, left scope or was deleted since a SyncCursor.

USNs (uSNChanged, highestCommittedUSN) are numbers local to one DC's database,
identified by its invocationId; a cursor from another DC or database is
refused (CursorInvalid) and the caller does a full read.

Three questions, in this order:
1. Which users and groups anywhere in the domain changed after the cursor?
   One search; Samba has no ordered index on uSNChanged, so every USN search
   is a scan of the database, and this one usually answers everything.
2. Which of those are in scope?  A few are read one by one with a base search
   carrying the scope's filter (~1 ms each); many are read by the same
   scoped subtree searches as a full read.  Changed objects that are not (or
   no longer) in scope are reported in `deleted`: moved out of the bases,
   filtered out, or never ours (computers); the caller ignores unknown GUIDs.
3. Which objects were deleted?  A search with the show-deleted control.
"""

from __future__ import annotations

from collections.abc import Iterable

from ldap3.core import exceptions as lx
from ldap3.utils.dn import safe_dn

from userseg.adapters.directory.entries import USER_ATTRIBUTES
from userseg.adapters.directory.reader import (
    SHOW_DELETED_OID,
    Reader,
    group_filter,
    group_parser,
    guid_dns,
    parse_entry,
    under,
    user_filter,
    user_parser,
    usn_clause,
)
from userseg.directory.model import (
    CursorInvalid,
    DirectoryChanges,
    DirectoryGroup,
    DirectoryUser,
    SyncCursor,
)

DIRECT_READ_LIMIT = 200  # up to this many changed objects are read one by one, more by scoped searches


def check_cursor(reader: Reader, cursor: SyncCursor) -> None:
    """Refuse a cursor of another DC or database: its USNs mean nothing here."""
    root = reader.bound.root
    if cursor.server != reader.bound.url or cursor.invocation_id != root.invocation_id:
        raise CursorInvalid(
            f"cursor is for {cursor.server} (invocationId {cursor.invocation_id}), "
            f"connected to {reader.bound.url} (invocationId {root.invocation_id}): full read needed"
        )


def read_changes(reader: Reader, cursor: SyncCursor) -> tuple[DirectoryChanges, SyncCursor]:
    """DirectorySource.read_changes over one bound connection (see the module docstring)."""
    check_cursor(reader, cursor)
    usn = reader.highest_usn()
    if usn < cursor.highest_usn:
        raise CursorInvalid(
            f"{reader.bound.url}: highestCommittedUSN {usn} is below the cursor's {cursor.highest_usn} "
            "(database restored?): full read needed"
        )
    since = usn_clause(cursor.highest_usn)
    # Which users and groups anywhere in the domain changed: Samba has no ordered index on
    # uSNChanged, so every such search is a scan; this one scan usually decides everything.
    touched: dict[str, str] = {}  # guid -> dn
    changed = f"(&{since}(|(objectClass=user)(objectClass=group)))"
    for page in reader.paged(reader.bound.root.default_nc, changed, ["objectGUID"]):
        touched.update(guid_dns(page))
    if not touched:
        users: dict[str, DirectoryUser] = {}
        groups: dict[str, DirectoryGroup] = {}
    elif len(touched) <= DIRECT_READ_LIMIT and all(_valid_dn(dn) for dn in touched.values()):
        users, groups = read_entries(reader, touched.values())
    else:
        users, groups = reader.search_users(since), reader.search_groups(since)
    # touched but not (or no longer) in scope: moved out, filtered out, or not ours (computers)
    gone = set(touched) - users.keys() - groups.keys()
    deleted = f"(&(isDeleted=TRUE){since})"
    show_deleted = [(SHOW_DELETED_OID, True, None)]
    for page in reader.paged(reader.bound.root.default_nc, deleted, ["objectGUID"], show_deleted):
        gone.update(guid for guid, _ in guid_dns(page))
    changes = DirectoryChanges(
        users=tuple(users.values()), groups=tuple(groups.values()), deleted=frozenset(gone)
    )
    return changes, reader.cursor(usn)


def read_entries(
    reader: Reader, dns: Iterable[str]
) -> tuple[dict[str, DirectoryUser], dict[str, DirectoryGroup]]:
    """Changed objects one by one: a base search with the scope's filter is "in scope?" + read.

    Equivalent to the subtree searches restricted to these DNs, and costs ~1 ms per
    object instead of a scan of every user.  An object gone since (moved, deleted)
    is simply not found; its new uSNChanged brings it back in the next read.
    """
    users: dict[str, DirectoryUser] = {}
    groups: dict[str, DirectoryGroup] = {}
    group_attrs = reader.group_attributes()
    for dn in dns:
        if under(dn, reader.scope.user_bases):
            entry = reader.base_read(dn, list(USER_ATTRIBUTES), user_filter(reader.settings))
            user = parse_entry(entry, "user", user_parser) if entry else None
            if user is not None:
                users[user.guid] = user
                continue
        if under(dn, reader.scope.group_bases):
            entry = reader.base_read(dn, group_attrs, group_filter(reader.settings))
            if entry is None:
                continue
            values, follow = reader.members(entry)
            if follow is not None:
                values.extend(reader.rest_of_members(dn, follow))
            group = parse_entry(entry, "group", group_parser(values))
            if group is not None:
                groups[group.guid] = group
    return users, groups


def _valid_dn(dn: str) -> bool:
    try:
        safe_dn(dn)
    except lx.LDAPException:
        return False
    return True
