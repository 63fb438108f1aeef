"""The raw directory image, its cursor, the derived view and the per-DC outcomes in the store."""

from __future__ import annotations

import ipaddress
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command

from userseg.directory.model import DirectoryGroup, DirectoryImage, DirectoryUser, SyncCursor
from userseg.model import Group, Mapping, User
from userseg.store import Store, StoreError, directory_image
from userseg.store.engine import alembic_config, make_engine

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)
DC1 = "ldaps://dc1.example.net:636"
DC2 = "ldaps://dc2.example.net:636"
DOMAIN = "S-1-5-21-1-2-3"
WEIRD = "*)(|(cn=*"


def raw(db_path: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute(sql, params).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


def rows(db_path: Path) -> dict[object, tuple[object, ...]]:
    return {r[0]: r[1:] for r in raw(db_path, "SELECT guid, kind, dn, data FROM directory_objects")}


def cursor(usn: int, server: str = DC1) -> SyncCursor:
    return SyncCursor(server, "inv-1", usn)


def du(guid: str, sam: str, **kw: object) -> DirectoryUser:
    return DirectoryUser(guid, f"CN={sam},OU=Staff,DC=example,DC=net", sam, **kw)  # type: ignore[arg-type]


def dg(guid: str, name: str, *members: str, **kw: object) -> DirectoryGroup:
    dn = f"CN={name},OU=Groups,DC=example,DC=net"
    return DirectoryGroup(guid, dn, name, members=frozenset(members), **kw)  # type: ignore[arg-type]


def img(*entries: DirectoryUser | DirectoryGroup) -> DirectoryImage:
    return DirectoryImage(
        DOMAIN,
        {e.guid: e for e in entries if isinstance(e, DirectoryUser)},
        {e.guid: e for e in entries if isinstance(e, DirectoryGroup)},
    )


def mapping(addr: str, user: str) -> Mapping:
    return Mapping(ipaddress.ip_address(addr), user, "wec", NOW, NOW, NOW + timedelta(hours=1))


def commit(
    store: Store,
    image: DirectoryImage,
    usn: int,
    users: Sequence[User],
    groups: Sequence[Group] = (),
    *,
    now: datetime = NOW,
    server: str = DC1,
    kind: str = "full",
) -> directory_image.DirectoryCommit:
    return store.commit_directory(
        image, cursor(usn, server), users, groups, server=server, kind=kind, now=now, milliseconds=42
    )


# --- the raw image ---------------------------------------------------------------------


def test_empty_store_has_no_image_and_no_cursor(store: Store) -> None:
    assert store.directory_image() == (DirectoryImage(""), None)
    assert store.directory_status() == []


def test_round_trip_with_unicode_filter_metacharacters_and_long_values(store: Store) -> None:
    long = "x" * 256
    alice = DirectoryUser(
        guid="0f8fad5b-d9cb-469f-a165-70867728950e",
        dn=f"CN=Jürgen {WEIRD}\\, Ünïcødé 日本,OU=Staff,DC=example,DC=net",
        sam="jürgen",
        upn=f"{WEIRD}@example.net",
        sid=f"{DOMAIN}-1104",
        display_name=long,
        mail="j\u00fcrgen@example.net",
        disabled=True,
        primary_group_id=513,
        usn=2**40,
        expires=2**63 - 1,
    )
    bob = DirectoryUser("b0b", "CN=bob,DC=example,DC=net", "bob", primary_group_id=None, expires=0)
    staff = DirectoryGroup(
        guid="7c9e6679-7425-40de-944b-e07fc1f90ae7",
        dn=f"CN={long},OU=Groups,DC=example,DC=net",
        name=WEIRD,
        sid=f"{DOMAIN}-1105",
        members=frozenset({alice.dn, bob.dn, "CN=" + "y" * 256 + ",DC=example,DC=net", "CN=\x01\t,DC=x"}),
        usn=7,
        description="Ελληνικά \"quoted\" 'single' \\backslash\n newline",
    )
    empty = DirectoryGroup("e", "CN=empty,DC=x", "empty")
    image = DirectoryImage(DOMAIN, {alice.guid: alice, bob.guid: bob}, {staff.guid: staff, empty.guid: empty})
    commit(store, image, 99, [User("jürgen", disabled=True), User("bob")])
    assert store.directory_image() == (image, cursor(99))
    # a second store object reads the same from the file
    with Store(store.url) as other:
        assert other.directory_image() == (image, cursor(99))


def test_second_commit_with_one_group_changed_rewrites_one_row(store: Store, db_path: Path) -> None:
    entries = [du(f"u{i}", f"user{i}") for i in range(5)] + [
        dg(f"g{i}", f"group{i}", du(f"u{i}", f"user{i}").dn) for i in range(5)
    ]
    image = img(*entries)
    commit(store, image, 10, [User(f"user{i}", groups=frozenset({f"group{i}"})) for i in range(5)])
    before = rows(db_path)

    # count every write to the table from here on
    raw(db_path, "CREATE TABLE writes (op TEXT, guid TEXT)")
    for op, row in (("insert", "new"), ("update", "new"), ("delete", "old")):
        raw(
            db_path,
            f"CREATE TRIGGER count_{op} AFTER {op.upper()} ON directory_objects "
            f"BEGIN INSERT INTO writes VALUES ('{op}', {row}.guid); END",
        )

    changed = replace(image.groups["g2"], members=frozenset({du("u3", "user3").dn}), usn=11)
    image2 = DirectoryImage(DOMAIN, image.users, {**image.groups, "g2": changed})
    view = [User(f"user{i}", groups=frozenset({f"group{i}"})) for i in range(5)]
    view[2] = User("user2")
    view[3] = User("user3", groups=frozenset({"group3", "group2"}))
    result = commit(store, image2, 11, view, kind="incremental")
    assert result.changed
    assert raw(db_path, "SELECT op, guid FROM writes") == [("update", "g2")]
    after = rows(db_path)
    assert {g for g in before if before[g] != after[g]} == {"g2"}
    assert set(before) == set(after)
    assert store.directory_image() == (image2, cursor(11))

    # a deleted and a new entry are a delete and an insert, nothing else
    raw(db_path, "DELETE FROM writes")
    users3 = {k: v for k, v in image.users.items() if k != "u4"} | {"u9": du("u9", "nine")}
    image3 = DirectoryImage(DOMAIN, users3, image2.groups)
    commit(store, image3, 12, [User("nine")], kind="incremental")
    assert sorted(raw(db_path, "SELECT op, guid FROM writes")) == [("delete", "u4"), ("insert", "u9")]


def test_cursor_and_domain_sid_are_replaced(store: Store) -> None:
    commit(store, img(du("u1", "alice")), 5, [User("alice")])
    other = DirectoryImage("S-1-5-21-7-7-7", {"u1": du("u1", "alice")})
    commit(store, other, 3, [User("alice")], server=DC2)
    assert store.directory_image() == (other, cursor(3, DC2))


# --- derived view, lost accounts, mappings -----------------------------------------------


def test_commit_stores_the_derived_view(store: Store) -> None:
    commit(
        store,
        img(du("u1", "Alice"), dg("g1", "Finance")),
        5,
        [User("Alice", "Alice A", False, frozenset({"Finance", "Domain Users"}))],
        [Group("Finance", "Finance team", "CN=Finance,OU=Groups,DC=example,DC=net")],
    )
    assert store.users() == {"alice": User("alice", "Alice A", False, frozenset({"finance", "domain users"}))}
    assert store.groups()["finance"] == Group(
        "finance", "Finance team", "CN=Finance,OU=Groups,DC=example,DC=net"
    )


def test_commit_removes_mappings_of_deleted_and_disabled_users_and_audits_them(store: Store) -> None:
    users = [User("alice"), User("bob"), User("carol"), User("old", disabled=True)]
    commit(store, img(), 1, users)
    for addr, who in [
        ("10.0.0.1", "alice"),
        ("10.0.0.2", "bob"),
        ("2001:db8::2", "bob"),
        ("10.0.0.3", "carol"),
        ("10.0.0.4", "zed"),  # logged on, never seen in the directory: kept
        ("10.0.0.5", "old"),  # disabled long ago, yet mapped by a stale logon event: removed
    ]:
        store.put_mapping(mapping(addr, who))
    g = store.generation()

    result = commit(
        store, img(), 2, [User("alice", disabled=True), User("carol"), User("old", disabled=True)], now=LATER
    )

    assert result.lost == ("alice", "bob")  # "old" was already disabled: not lost by this sync
    assert sorted(str(m.ip) for m in result.removed) == ["10.0.0.1", "10.0.0.2", "10.0.0.5", "2001:db8::2"]
    assert sorted((str(m.ip), m.user) for m in store.mappings()) == [
        ("10.0.0.3", "carol"),
        ("10.0.0.4", "zed"),
    ]
    assert result.changed
    assert store.generation() == g + 1  # one commit, one bump
    audit = [a for a in store.audit() if a.entity == "mapping"]
    assert sorted(a.name for a in audit) == ["10.0.0.1", "10.0.0.2", "10.0.0.5", "2001:db8::2"]
    assert all(
        a.actor == "directory" and a.action == "delete" and a.after is None and a.at == LATER for a in audit
    )
    bob = next(a for a in audit if a.name == "10.0.0.2")
    assert bob.before is not None and bob.before["user"] == "bob" and bob.before["source"] == "wec"


def test_mappings_removal_alone_bumps_the_generation(store: Store) -> None:
    commit(store, img(), 1, [User("old", disabled=True)])
    store.put_mapping(mapping("10.0.0.5", "old"))
    g = store.generation()
    result = commit(store, img(), 2, [User("old", disabled=True)])
    assert not result.changed and result.lost == () and len(result.removed) == 1
    assert store.generation() == g + 1
    assert store.mappings() == []


def test_generation_unchanged_when_nothing_changed(store: Store, db_path: Path) -> None:
    image = img(du("u1", "alice"), dg("g1", "finance", du("u1", "alice").dn))
    view = ([User("alice", groups=frozenset({"finance"}))], [Group("finance")])
    g0 = store.generation()
    first = commit(store, image, 1, *view)
    assert first.changed and store.generation() == g0 + 1
    again = commit(store, image, 2, *view, now=LATER)
    assert (again.changed, again.lost, again.removed) == (False, (), ())
    assert store.generation() == g0 + 1
    # a raw-only change (a new uSNChanged, a mail address) is stored but changes no access
    touched = DirectoryImage(DOMAIN, {"u1": replace(image.users["u1"], usn=77, mail="a@x")}, image.groups)
    assert not commit(store, touched, 3, *view).changed
    assert store.generation() == g0 + 1
    assert store.directory_image() == (touched, cursor(3))
    assert raw(db_path, "SELECT COUNT(*) FROM audit_log") == [(0,)]


def test_commit_is_atomic(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    commit(store, img(du("u1", "alice")), 1, [User("alice")])
    store.put_mapping(mapping("10.0.0.1", "alice"))
    before = (
        store.directory_image(),
        store.users(),
        store.mappings(),
        store.generation(),
        store.directory_status(),
    )

    def broken(*args: object, **kw: object) -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(directory_image, "record", broken)  # the last statement before the bump
    with pytest.raises(StoreError, match="disk full"):
        commit(store, img(du("u2", "bob")), 2, [User("bob")], now=LATER)
    monkeypatch.undo()
    assert (
        store.directory_image(),
        store.users(),
        store.mappings(),
        store.generation(),
        store.directory_status(),
    ) == before


def test_naive_time_and_bad_view_are_refused_before_writing(store: Store) -> None:
    with pytest.raises(StoreError, match="naive"):
        commit(store, img(), 1, [], now=datetime(2026, 1, 1))
    with pytest.raises(StoreError, match="duplicate user name 'alice'"):
        commit(store, img(), 1, [User("alice"), User("ALICE")])
    assert store.directory_image() == (DirectoryImage(""), None)
    assert store.directory_status() == []


# --- outcomes ------------------------------------------------------------------------------


def test_success_and_failure_outcomes_per_dc(store: Store) -> None:
    commit(store, img(du("u1", "alice"), dg("g1", "finance")), 1, [User("alice")], [Group("finance")])
    [s1] = store.directory_status()
    assert s1 == directory_image.DirectorySyncStatus(DC1, NOW, NOW, "full", "", 1, 1, 42)

    store.record_directory_failure(DC1, kind="incremental", error="dc1 unreachable: timed out", now=LATER)
    [s2] = store.directory_status()
    assert s2 == directory_image.DirectorySyncStatus(
        DC1, LATER, NOW, "incremental", "dc1 unreachable: timed out", 1, 1, 42
    )

    store.record_directory_failure(DC2, kind="full", error="", now=LATER)  # empty message still a failure
    status = {s.server: s for s in store.directory_status()}
    assert status[DC2] == directory_image.DirectorySyncStatus(DC2, LATER, None, "full", "failed", 0, 0, 0)
    assert status[DC1] == s2

    store.record_directory_failure(DC1, kind="full", error="e" * 5000, now=LATER)
    assert len(store.directory_status()[0].last_error) == 4000

    # the next success clears the error and moves last_success_at
    commit(store, img(du("u1", "alice")), 2, [User("alice")], now=LATER + timedelta(1))
    assert store.directory_status()[0] == directory_image.DirectorySyncStatus(
        DC1, LATER + timedelta(1), LATER + timedelta(1), "full", "", 1, 0, 42
    )


def test_failure_recording_changes_nothing_else(store: Store) -> None:
    image = img(du("u1", "alice"))
    commit(store, image, 1, [User("alice")])
    g = store.generation()
    store.record_directory_failure(DC1, kind="incremental", error="boom", now=LATER)
    assert store.generation() == g
    assert store.directory_image() == (image, cursor(1))
    assert store.users() == {"alice": User("alice")}


def test_advance_cursor_moves_only_cursor_and_success_time(store: Store) -> None:
    image = img(du("u1", "alice"))
    commit(store, image, 1, [User("alice")])
    store.record_directory_failure(DC1, kind="incremental", error="boom", now=NOW + timedelta(seconds=1))
    g = store.generation()
    store.advance_directory_cursor(cursor(50), now=LATER, milliseconds=3)
    assert store.directory_image() == (image, cursor(50))
    assert store.generation() == g
    assert store.directory_status() == [
        directory_image.DirectorySyncStatus(DC1, LATER, LATER, "incremental", "", 1, 0, 3)
    ]


# --- corrupt rows --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ("not json", "undecodable entry"),
        ("[1, 2]", "expected a JSON object"),
        ('{"name": "x", "sid": "", "usn": 1, "description": ""}', "members"),
        (
            '{"name": "x", "sid": "", "members": "CN=abc", "usn": 1, "description": ""}',
            "members: expected list",
        ),
        ('{"name": "x", "sid": "", "members": [1], "usn": 1, "description": ""}', "list of strings"),
        ('{"name": "x", "sid": "", "members": [], "usn": "7", "description": ""}', "usn: expected int"),
    ],
)
def test_corrupt_group_row_names_the_guid(store: Store, db_path: Path, data: str, problem: str) -> None:
    commit(store, img(dg("guid-of-finance", "finance"), dg("guid-ok", "ok")), 1, [])
    raw(db_path, "UPDATE directory_objects SET data = ? WHERE guid = 'guid-of-finance'", data)
    with pytest.raises(StoreError) as info:
        store.directory_image()
    assert "table directory_objects, row 'guid-of-finance'" in str(info.value)
    assert problem in str(info.value)


def test_corrupt_user_row_types_are_refused(store: Store, db_path: Path) -> None:
    commit(store, img(du("guid-of-alice", "alice")), 1, [User("alice")])
    raw(db_path, "UPDATE directory_objects SET data = json_set(data, '$.disabled', 'false')")
    with pytest.raises(StoreError, match=r"row 'guid-of-alice': undecodable entry: disabled: expected bool"):
        store.directory_image()
    raw(
        db_path,
        "UPDATE directory_objects SET data = "
        "json_set(data, '$.disabled', json('false'), '$.expires', json('true'))",
    )
    with pytest.raises(StoreError, match="expires: expected int"):
        store.directory_image()
    raw(
        db_path,
        "UPDATE directory_objects SET data = json_set(data, '$.expires', 0, '$.primary_group_id', 'x')",
    )
    with pytest.raises(StoreError, match="primary_group_id: expected int"):
        store.directory_image()
    raw(db_path, "UPDATE directory_objects SET data = json_set(data, '$.primary_group_id', 513)")
    assert store.directory_image()[0].users["guid-of-alice"].primary_group_id == 513


def test_corrupt_cursor_is_reported(store: Store, db_path: Path) -> None:
    commit(store, img(), 1, [])
    raw(db_path, "UPDATE directory_state SET value = '{\"server\": 1}' WHERE key = 'cursor'")
    with pytest.raises(StoreError, match=r"table directory_state, row 'cursor': undecodable cursor"):
        store.directory_image()


# --- migration -----------------------------------------------------------------------------


def test_upgrade_from_0001_with_data_keeps_it(db_path: Path) -> None:
    engine = make_engine(f"sqlite:///{db_path}")
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")
    engine.dispose()
    assert raw(db_path, "SELECT version_num FROM alembic_version") == [("0001",)]
    assert raw(db_path, "SELECT name FROM sqlite_master WHERE name = 'directory_objects'") == []
    stamp = "2026-11-22 12:00:00.000000"
    until = "2026-11-22 13:00:00.000000"
    for sql, params in [
        (
            "INSERT INTO users (name, display_name, disabled, updated_at) VALUES (?, ?, 0, ?)",
            ("alice", "Alice", stamp),
        ),
        ("INSERT INTO groups (name, display_name, dn) VALUES (?, '', '')", ("finance",)),
        ("INSERT INTO memberships (user_name, group_name) VALUES (?, ?)", ("alice", "finance")),
        (
            "INSERT INTO mappings (ip, user_name, source, first_seen, last_seen, expires_at, provenance) "
            "VALUES (?, ?, 'wec', ?, ?, ?, '{}')",
            ("10.0.0.1", "alice", stamp, stamp, until),
        ),
        ("UPDATE meta SET value = 41 WHERE key = 'generation'", ()),
    ]:
        raw(db_path, sql, *params)

    with Store(f"sqlite:///{db_path}") as store:
        with pytest.raises(StoreError, match="schema revision 0001"):
            store.users()
        store.upgrade()
        assert store.current_revision() == "0003"
        assert store.users() == {"alice": User("alice", "Alice", False, frozenset({"finance"}))}
        assert [(str(m.ip), m.user) for m in store.mappings()] == [("10.0.0.1", "alice")]
        assert store.generation() == 41
        assert store.directory_image() == (DirectoryImage(""), None)
        # and the new tables work on the upgraded database
        commit(
            store,
            img(du("u1", "alice")),
            1,
            [User("alice", "Alice", groups=frozenset({"finance"}))],
            [Group("finance")],
        )
        assert store.directory_image()[1] == cursor(1)
        assert store.generation() == 41  # same derived view: no change


# --- delta commits ----------------------------------------------------------------------


def _delta_world() -> tuple[DirectoryImage, DirectoryImage, list[User], list[User]]:
    alice, bob, carol = du("u1", "alice"), du("u2", "bob"), du("u3", "carol")
    fin = dg("g1", "finance", alice.dn)
    hr = dg("g2", "hr", bob.dn)
    before = img(alice, bob, carol, fin, hr)
    # One group changed, one user deleted, one user changed; the rest are the same objects.
    after = DirectoryImage(
        DOMAIN,
        {"u1": alice, "u3": replace(carol, display_name="Carol C")},
        {"g1": replace(fin, members=frozenset({alice.dn, carol.dn})), "g2": hr},
    )
    users_before = [
        User("alice", "", False, frozenset({"finance"})),
        User("bob", "", False, frozenset({"hr"})),
    ]
    users_before.append(User("carol"))
    users_after = [
        User("alice", "", False, frozenset({"finance"})),
        User("carol", "Carol C", False, frozenset({"finance"})),
    ]
    return before, after, users_before, users_after


def test_delta_commit_leaves_the_same_tables_as_a_full_compare(tmp_path: Path) -> None:
    before, after, ub, ua = _delta_world()
    groups = [Group("finance"), Group("hr")]
    results = []
    for name, use_base in (("full.db", False), ("delta.db", True)):
        st = Store(f"sqlite:///{tmp_path / name}")
        st.upgrade()
        st.put_mapping(mapping("198.18.10.12", "bob"))
        first = st.commit_directory(before, cursor(1), ub, groups, server=DC1, kind="full", now=NOW)
        second = st.commit_directory(
            after,
            cursor(2),
            ua,
            groups,
            server=DC1,
            kind="incremental",
            now=NOW,
            base=first.base if use_base else None,
        )
        assert second.changed and second.lost == ("bob",) and [m.user for m in second.removed] == ["bob"]
        results.append((st.directory_image(), st.users(), rows(tmp_path / name)))
        st.close()
    assert results[0][0] == results[1][0] == (after, cursor(2))
    assert results[0][1] == results[1][1]
    assert results[0][2] == results[1][2]


def test_a_base_made_stale_by_another_writer_falls_back_to_comparing(store: Store) -> None:
    before, after, ub, ua = _delta_world()
    groups = [Group("finance"), Group("hr")]
    first = store.commit_directory(before, cursor(1), ub, groups, server=DC1, kind="full", now=NOW)
    # Someone else (the CLI, another gateway) commits `after` in between ...
    store.commit_directory(after, cursor(2), ua, groups, server=DC1, kind="incremental", now=NOW)
    # ... so the daemon's base no longer describes the tables: committing `before` again with the
    # stale base must still produce exactly `before`, not a delta applied to the wrong state.
    store.commit_directory(before, cursor(3), ub, groups, server=DC1, kind="full", now=NOW, base=first.base)
    assert store.directory_image() == (before, cursor(3))
    assert {u.name for u in store.users().values()} == {"alice", "bob", "carol"}
