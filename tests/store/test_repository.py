"""Store behaviour on real SQLite files: CRUD, audit, generation, atomicity, corrupt rows."""

from __future__ import annotations

import ipaddress
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Connection, select

from userseg.model import (
    Action,
    AddressRange,
    Application,
    Group,
    Mapping,
    Mode,
    Policy,
    Service,
    Subject,
    User,
)
from userseg.store import Store, StoreError, catalog
from userseg.store.schema import UserRow

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
ADMIN = "admin@example"


def raw(db_path: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    """Reach past the Store, as a hand edit or a buggy older version would."""
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute(sql, params).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def mapping(addr: str, user: str, *, expires_in: timedelta = timedelta(hours=1), **prov: str) -> Mapping:
    return Mapping(ip(addr), user, "test", NOW, NOW, NOW + expires_in, prov)


def app(name: str = "erp", *dests: str, services: tuple[str, ...] = ("tcp/443",)) -> Application:
    return Application(
        name,
        tuple(AddressRange.parse(d) for d in dests or ("10.1.0.0/24",)),
        tuple(Service.parse(s) for s in services),
    )


def policy(name: str, application: str = "erp", priority: int = 10, **kw: object) -> Policy:
    return Policy(name, priority, (Subject.parse("group:finance"),), application, Action.ALLOW, **kw)  # type: ignore[arg-type]


# --- directory -----------------------------------------------------------------


def test_store_creates_sqlite_parent_directory_and_uses_wal(store: Store, db_path: Path) -> None:
    assert db_path.parent.is_dir()
    assert raw(db_path, "PRAGMA journal_mode") == [("wal",)]


def test_directory_round_trip_with_effective_groups(store: Store) -> None:
    g0 = store.generation()
    store.replace_directory(
        [
            User("Alice", "Alice A", False, frozenset({"Finance", "Staff"})),
            User("bob", "Bob B", True),
        ],
        [Group("finance", "Finance", "CN=Finance,DC=example"), Group("STAFF", "Staff")],
        NOW,
    )
    users = store.users()
    assert users == {
        "alice": User("alice", "Alice A", False, frozenset({"finance", "staff"})),
        "bob": User("bob", "Bob B", True, frozenset()),
    }
    assert store.user("ALICE") == users["alice"]
    assert store.user("nobody") is None
    assert store.groups() == {
        "finance": Group("finance", "Finance", "CN=Finance,DC=example"),
        "staff": Group("staff", "Staff", ""),
    }
    assert store.generation() == g0 + 1


def test_group_only_named_by_a_user_gets_a_bare_row(store: Store) -> None:
    store.replace_directory([User("alice", groups=frozenset({"Domain Users"}))], [], NOW)
    assert store.groups() == {"domain users": Group("domain users")}
    assert store.users()["alice"].groups == {"domain users"}


def test_replace_directory_is_a_snapshot_and_unchanged_input_is_a_no_op(store: Store) -> None:
    store.replace_directory(
        [User("alice", groups=frozenset({"finance", "staff"})), User("bob", groups=frozenset({"staff"}))],
        [Group("finance"), Group("staff"), Group("old")],
        NOW,
    )
    store.replace_directory(
        [User("alice", "Alice", groups=frozenset({"staff", "hr"}))],
        [Group("staff", "Staff!"), Group("hr")],
        NOW,
    )
    assert store.users() == {"alice": User("alice", "Alice", False, frozenset({"staff", "hr"}))}
    assert store.groups() == {"staff": Group("staff", "Staff!"), "hr": Group("hr")}

    g = store.generation()
    store.replace_directory(
        [User("alice", "Alice", groups=frozenset({"staff", "hr"}))],
        [Group("staff", "Staff!"), Group("hr")],
        NOW,
    )
    assert store.generation() == g


def test_duplicate_user_in_input_leaves_old_directory_intact(store: Store) -> None:
    store.replace_directory([User("alice", groups=frozenset({"finance"}))], [Group("finance")], NOW)
    before, g = store.users(), store.generation()

    with pytest.raises(StoreError, match="duplicate user name 'bob'"):
        store.replace_directory([User("carol"), User("bob"), User("Bob")], [Group("other")], NOW)

    assert store.users() == before
    assert store.groups() == {"finance": Group("finance")}
    assert store.generation() == g


def test_failure_after_directory_rows_were_written_rolls_everything_back(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.replace_directory([User("alice", groups=frozenset({"finance"}))], [Group("finance")], NOW)
    before = store.users()
    seen_inside: list[str] = []

    def failing_bump(conn: Connection) -> None:
        # The last statement of the transaction: the new rows are already written here.
        seen_inside.extend(conn.execute(select(UserRow.name).order_by(UserRow.name)).scalars())
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(catalog, "bump", failing_bump)
    with pytest.raises(RuntimeError, match="disk on fire"):
        store.replace_directory([User("bob"), User("carol")], [], NOW)

    assert seen_inside == ["bob", "carol"]
    monkeypatch.undo()
    assert store.users() == before
    assert store.groups() == {"finance": Group("finance")}


# --- mappings ------------------------------------------------------------------


def test_put_mapping_upserts_by_ip_and_returns_what_it_replaced(store: Store) -> None:
    first = mapping("10.0.0.5", "Alice", event="4624")
    assert store.put_mapping(first) is None
    stored_first = Mapping(first.ip, "alice", "test", NOW, NOW, NOW + timedelta(hours=1), {"event": "4624"})
    assert store.mappings() == [stored_first]

    replaced = store.put_mapping(mapping("10.0.0.5", "bob"))
    assert replaced == stored_first
    assert [(m.ip, m.user) for m in store.mappings()] == [(ip("10.0.0.5"), "bob")]


def test_mapping_filters_and_removal(store: Store) -> None:
    store.put_mapping(mapping("10.0.0.2", "alice"))
    store.put_mapping(mapping("10.0.0.1", "alice", expires_in=timedelta(minutes=5)))
    store.put_mapping(mapping("2001:db8::1", "alice"))
    store.put_mapping(mapping("10.0.0.3", "bob"))

    assert [str(m.ip) for m in store.mappings(user="ALICE")] == ["10.0.0.1", "10.0.0.2", "2001:db8::1"]
    assert [m.user for m in store.mappings(ip=ip("10.0.0.3"))] == ["bob"]
    later = NOW + timedelta(minutes=10)
    assert [str(m.ip) for m in store.mappings(active_at=later)] == ["10.0.0.2", "10.0.0.3", "2001:db8::1"]
    assert [str(m.ip) for m in store.mappings(user="alice", active_at=later)] == ["10.0.0.2", "2001:db8::1"]

    g = store.generation()
    assert store.remove_mapping(ip("10.9.9.9")) is None
    assert store.generation() == g  # nothing removed, nothing to notice
    removed = store.remove_mapping(ip("10.0.0.3"))
    assert removed is not None and removed.user == "bob"
    assert store.generation() == g + 1

    gone = store.remove_mappings_of_user("Alice")
    assert [str(m.ip) for m in gone] == ["10.0.0.1", "10.0.0.2", "2001:db8::1"]
    assert store.mappings() == []
    assert store.remove_mappings_of_user("alice") == []


def test_purge_expired_removes_mappings_expiring_at_or_before_now(store: Store) -> None:
    store.put_mapping(mapping("10.0.0.1", "a", expires_in=timedelta(seconds=-1)))
    store.put_mapping(mapping("10.0.0.2", "b", expires_in=timedelta(0)))
    store.put_mapping(mapping("10.0.0.3", "c", expires_in=timedelta(microseconds=1)))

    g = store.generation()
    purged = store.purge_expired(NOW)
    assert [m.user for m in purged] == ["a", "b"]
    assert [m.user for m in store.mappings()] == ["c"]
    assert store.generation() == g + 1
    assert store.purge_expired(NOW) == []
    assert store.generation() == g + 1


def test_datetimes_round_trip_as_aware_utc(store: Store) -> None:
    plus2 = timezone(timedelta(hours=2))
    local = datetime(2024, 5, 1, 14, 30, 15, 123456, tzinfo=plus2)
    store.put_mapping(Mapping(ip("10.0.0.1"), "alice", "wec", local, local, local + timedelta(hours=1)))

    (m,) = store.mappings()
    assert m.first_seen == local
    assert m.first_seen.tzinfo is UTC
    assert m.first_seen == datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    assert m.expires_at.utcoffset() == timedelta(0)
    # the active filter compares instants, not wall-clock digits
    assert store.mappings(active_at=datetime(2024, 5, 1, 15, 30, 15, 123455, tzinfo=plus2)) == [m]
    assert store.mappings(active_at=datetime(2024, 5, 1, 15, 30, 15, 123456, tzinfo=plus2)) == []


def test_naive_datetimes_are_refused(store: Store) -> None:
    naive = datetime(2024, 5, 1, 12, 0)
    with pytest.raises(StoreError, match=r"mapping for 10.0.0.1: first_seen: naive datetime"):
        store.put_mapping(Mapping(ip("10.0.0.1"), "alice", "t", naive, NOW, NOW))
    with pytest.raises(StoreError, match="now: naive datetime"):
        store.purge_expired(naive)
    with pytest.raises(StoreError, match="naive datetime"):
        store.replace_directory([], [], naive)


def test_bulk_put_mappings_50k_rows_with_replacement(store: Store) -> None:
    base = int(ip("10.0.0.0"))
    rows = [
        Mapping(
            ipaddress.IPv4Address(base + i), f"user{i % 1000}", "bulk", NOW, NOW, NOW + timedelta(hours=1)
        )
        for i in range(50_000)
    ]
    g = store.generation()
    store.put_mappings(rows)
    assert store.generation() == g + 1
    assert len(store.mappings()) == 50_000

    # 10k of the existing IPs change user, 10k are new; a duplicate IP in the input: the last wins.
    update = [
        Mapping(ipaddress.IPv4Address(base + i), "new", "bulk", NOW, NOW, NOW + timedelta(hours=2))
        for i in range(40_000, 60_000)
    ]
    update.append(
        Mapping(ipaddress.IPv4Address(base), "last-wins", "bulk", NOW, NOW, NOW + timedelta(hours=2))
    )
    store.put_mappings(update)
    everything = store.mappings()
    assert len(everything) == 60_000
    by_ip = {m.ip: m for m in everything}
    assert by_ip[ipaddress.IPv4Address(base + 39_999)].user == "user999"
    assert by_ip[ipaddress.IPv4Address(base + 45_000)].user == "new"
    assert by_ip[ipaddress.IPv4Address(base + 59_999)].user == "new"
    assert by_ip[ipaddress.IPv4Address(base)].user == "last-wins"

    store.put_mappings([])
    assert store.generation() == g + 2


def test_manual_mapping_changes_are_audited_login_ones_are_not(store: Store) -> None:
    store.put_mapping(mapping("10.0.0.1", "alice"))
    assert store.audit() == []

    store.put_mapping(mapping("10.0.0.2", "bob"), audit_actor=ADMIN, now=NOW)
    store.put_mapping(mapping("10.0.0.2", "carol"), audit_actor=ADMIN, now=NOW + timedelta(seconds=1))
    store.remove_mapping(ip("10.0.0.2"), audit_actor="ops", now=NOW + timedelta(seconds=2))
    entries = store.audit()
    assert [(e.entity, e.name, e.action, e.actor) for e in entries] == [
        ("mapping", "10.0.0.2", "delete", "ops"),
        ("mapping", "10.0.0.2", "update", ADMIN),
        ("mapping", "10.0.0.2", "create", ADMIN),
    ]
    delete, update, create = entries
    assert create.before is None and create.after is not None and create.after["user"] == "bob"
    assert update.before is not None and update.before["user"] == "bob"
    assert update.after is not None and update.after["user"] == "carol"
    assert delete.before == update.after and delete.after is None
    assert create.at == NOW

    with pytest.raises(StoreError, match="needs `now`"):
        store.put_mapping(mapping("10.0.0.3", "x"), audit_actor=ADMIN)


def test_bad_mappings_are_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="empty user name"):
        store.put_mapping(mapping("10.0.0.1", "  "))
    with pytest.raises(StoreError, match="source must be 1-64 characters"):
        store.put_mapping(Mapping(ip("10.0.0.1"), "a", "", NOW, NOW, NOW))
    with pytest.raises(StoreError, match="provenance must map strings to strings"):
        store.put_mapping(Mapping(ip("10.0.0.1"), "a", "s", NOW, NOW, NOW, {"n": 1}))  # type: ignore[dict-item]


# --- applications and policies ---------------------------------------------------


def test_application_crud_with_audit_and_generation(store: Store) -> None:
    g = store.generation()
    erp = Application(
        "erp",
        (AddressRange.parse("10.1.0.0/24"), AddressRange.parse("10.2.0.5-10.2.0.9")),
        (Service.parse("tcp/443"), Service.parse("udp/8000-8100")),
        frozenset({"finance", "core"}),
        "the ERP",
    )
    store.put_application(erp, actor=ADMIN, now=NOW)
    assert store.applications() == {"erp": erp}
    assert store.generation() == g + 1

    store.put_application(erp, actor=ADMIN, now=NOW)  # identical: no audit, no bump
    assert store.generation() == g + 1
    assert len(store.audit()) == 1

    changed = app("erp", "10.9.0.0/16", services=("icmp",))
    store.put_application(changed, actor="ops", now=NOW + timedelta(minutes=1))
    assert store.applications()["erp"] == changed
    assert store.generation() == g + 2

    store.delete_application("erp", actor=ADMIN, now=NOW + timedelta(minutes=2))
    assert store.applications() == {}
    assert store.generation() == g + 3

    delete, update, create = store.audit()
    assert (create.action, create.before) == ("create", None)
    assert create.after == {
        "name": "erp",
        "destinations": ["10.1.0.0/24", "10.2.0.5-10.2.0.9"],
        "services": ["tcp/443", "udp/8000-8100"],
        "labels": ["core", "finance"],
        "description": "the ERP",
    }
    assert (update.action, update.actor) == ("update", "ops")
    assert update.before == create.after
    assert update.after is not None and update.after["destinations"] == ["10.9.0.0/16"]
    assert update.after["services"] == ["icmp"]
    assert (delete.action, delete.before, delete.after) == ("delete", update.after, None)
    assert delete.at == NOW + timedelta(minutes=2)


def test_application_validation_and_unknown_delete(store: Store) -> None:
    with pytest.raises(StoreError, match=r"bad application name 'no spaces'"):
        store.put_application(app("no spaces"), actor=ADMIN, now=NOW)
    with pytest.raises(StoreError, match="needs at least one destination"):
        store.put_application(Application("x", (), (Service.parse("tcp"),)), actor=ADMIN, now=NOW)
    with pytest.raises(StoreError, match="needs at least one service"):
        store.put_application(Application("x", (AddressRange.parse("10.0.0.1"),), ()), actor=ADMIN, now=NOW)
    with pytest.raises(StoreError, match="actor must not be empty"):
        store.put_application(app(), actor=" ", now=NOW)
    with pytest.raises(StoreError, match="no application named 'ghost'"):
        store.delete_application("ghost", actor=ADMIN, now=NOW)
    assert store.audit() == []


def test_policy_crud_ordering_and_audit(store: Store) -> None:
    store.put_application(app("erp"), actor=ADMIN, now=NOW)
    store.put_policy(policy("zeta", priority=20), actor=ADMIN, now=NOW)
    store.put_policy(policy("beta", priority=20, mode=Mode.STAGE, enabled=False), actor=ADMIN, now=NOW)
    store.put_policy(policy("alpha", priority=30, description="d"), actor=ADMIN, now=NOW)
    assert [p.name for p in store.policies()] == ["beta", "zeta", "alpha"]
    beta = store.policies()[0]
    assert beta == policy("beta", priority=20, mode=Mode.STAGE, enabled=False)

    g = store.generation()
    store.put_policy(policy("alpha", priority=5, description="d"), actor="ops", now=NOW)
    assert [p.name for p in store.policies()] == ["alpha", "beta", "zeta"]
    assert store.generation() == g + 1
    store.delete_policy("zeta", actor=ADMIN, now=NOW)
    assert [p.name for p in store.policies()] == ["alpha", "beta"]

    delete, update = store.audit(limit=2)
    assert (update.entity, update.action, update.actor) == ("policy", "update", "ops")
    assert update.before is not None and update.before["priority"] == 30
    assert update.after == {
        "name": "alpha",
        "priority": 5,
        "subjects": ["group:finance"],
        "application": "erp",
        "action": "allow",
        "mode": "enforce",
        "enabled": True,
        "description": "d",
    }
    assert (delete.name, delete.action, delete.after) == ("zeta", "delete", None)
    with pytest.raises(StoreError, match="no policy named 'zeta'"):
        store.delete_policy("zeta", actor=ADMIN, now=NOW)


def test_policy_for_missing_application_is_refused_unless_config_declares_it(store: Store) -> None:
    g = store.generation()
    with pytest.raises(StoreError, match="policy 'p': application 'nope' does not exist"):
        store.put_policy(policy("p", "nope"), actor=ADMIN, now=NOW)
    assert store.policies() == [] and store.generation() == g

    store.put_policy(policy("p", "from-config"), actor=ADMIN, now=NOW, known_applications={"from-config"})
    assert [p.application for p in store.policies()] == ["from-config"]


def test_application_deletion_blocked_while_policies_reference_it(store: Store) -> None:
    store.put_application(app("erp"), actor=ADMIN, now=NOW)
    store.put_policy(policy("p2"), actor=ADMIN, now=NOW)
    store.put_policy(policy("p1"), actor=ADMIN, now=NOW)
    with pytest.raises(StoreError, match="application 'erp' is used by policies 'p1', 'p2'"):
        store.delete_application("erp", actor=ADMIN, now=NOW)
    assert "erp" in store.applications()

    store.delete_policy("p1", actor=ADMIN, now=NOW)
    store.delete_policy("p2", actor=ADMIN, now=NOW)
    store.delete_application("erp", actor=ADMIN, now=NOW)
    assert store.applications() == {}


def test_bad_policies_are_refused(store: Store) -> None:
    store.put_application(app("erp"), actor=ADMIN, now=NOW)
    with pytest.raises(StoreError, match="needs at least one subject"):
        store.put_policy(Policy("p", 1, (), "erp", Action.DENY), actor=ADMIN, now=NOW)
    with pytest.raises(StoreError, match="priority must be a 32-bit integer"):
        store.put_policy(policy("p", priority=2**40), actor=ADMIN, now=NOW)
    with pytest.raises(StoreError, match="bad policy name"):
        store.put_policy(policy("p/1"), actor=ADMIN, now=NOW)


# --- settings, audit, generation, snapshot ----------------------------------------


def test_settings_and_default_action(store: Store) -> None:
    assert store.setting("default_action") is None
    assert store.default_action() is Action.DENY

    store.set_setting("default_action", "allow", actor=ADMIN, now=NOW)
    assert store.default_action() is Action.ALLOW
    g = store.generation()
    store.set_setting("default_action", "allow", actor=ADMIN, now=NOW)  # unchanged
    assert store.generation() == g
    store.set_setting("default_action", "deny", actor="ops", now=NOW)
    assert store.default_action() is Action.DENY

    with pytest.raises(StoreError, match="setting default_action: must be 'allow' or 'deny', got 'maybe'"):
        store.set_setting("default_action", "maybe", actor=ADMIN, now=NOW)
    store.set_setting("ui.banner", "hello", actor=ADMIN, now=NOW)
    assert store.setting("ui.banner") == "hello"

    banner, update, create = store.audit()
    assert (create.entity, create.name, create.before, create.after) == (
        "setting",
        "default_action",
        None,
        {"value": "allow"},
    )
    assert (update.before, update.after, update.actor) == ({"value": "allow"}, {"value": "deny"}, "ops")
    assert banner.name == "ui.banner"


def test_audit_is_newest_first_and_limited(store: Store) -> None:
    for i in range(5):
        store.set_setting("k", str(i), actor=ADMIN, now=NOW + timedelta(seconds=i))
    entries = store.audit(limit=3)
    assert [e.after for e in entries] == [{"value": "4"}, {"value": "3"}, {"value": "2"}]
    assert [e.at for e in entries] == [NOW + timedelta(seconds=s) for s in (4, 3, 2)]
    assert all(e.at.tzinfo is UTC for e in entries)
    assert len(store.audit()) == 5


def test_generation_counts_committed_changes(store: Store, db_path: Path) -> None:
    assert store.generation() == 0
    store.put_mapping(mapping("10.0.0.1", "a"))
    store.put_application(app(), actor=ADMIN, now=NOW)
    store.set_setting("x", "1", actor=ADMIN, now=NOW)
    assert store.generation() == 3
    # another process (the CLI) writing through its own Store is visible to this one
    other = Store(f"sqlite:///{db_path}")
    other.put_policy(policy("p"), actor=ADMIN, now=NOW)
    other.close()
    assert store.generation() == 4


def test_snapshot_parts_returns_active_state(store: Store) -> None:
    store.replace_directory([User("alice", groups=frozenset({"finance"}))], [Group("finance")], NOW)
    store.put_mappings([mapping("10.0.0.1", "alice"), mapping("10.0.0.2", "bob", expires_in=timedelta(0))])
    store.put_application(app("erp"), actor=ADMIN, now=NOW)
    store.put_policy(policy("p"), actor=ADMIN, now=NOW)
    store.set_setting("default_action", "allow", actor=ADMIN, now=NOW)

    users, mappings, apps, policies, default = store.snapshot_parts(NOW)
    assert users == {"alice": User("alice", "", False, frozenset({"finance"}))}
    assert [(str(m.ip), m.user) for m in mappings] == [("10.0.0.1", "alice")]
    assert set(apps) == {"erp"}
    assert [p.name for p in policies] == ["p"]
    assert default is Action.ALLOW


# --- corrupt rows ------------------------------------------------------------------


def test_corrupt_application_row_is_reported_with_table_and_name(store: Store, db_path: Path) -> None:
    store.put_application(app("erp"), actor=ADMIN, now=NOW)
    raw(db_path, "UPDATE applications SET destinations = ? WHERE name = 'erp'", '["10.0.0.1", "10.0.0.300"]')
    with pytest.raises(StoreError) as info:
        store.applications()
    assert "table applications, row 'erp': destinations[1]: bad address, CIDR or range '10.0.0.300'" in str(
        info.value
    )

    raw(db_path, "UPDATE applications SET destinations = 'not json' WHERE name = 'erp'")
    with pytest.raises(StoreError, match=r"table applications, row 'erp': destinations: not valid JSON"):
        store.snapshot_parts(NOW)

    raw(db_path, "UPDATE applications SET destinations = '{\"a\": 1}' WHERE name = 'erp'")
    with pytest.raises(StoreError, match=r"destinations: expected a JSON list of strings"):
        store.applications()

    # an operator can still repair it through the store
    store.put_application(app("erp"), actor=ADMIN, now=NOW)
    assert store.applications() == {"erp": app("erp")}
    repair = store.audit()[0]
    assert repair.action == "update"
    assert repair.before is not None and repair.before["destinations"] == {"a": 1}


def test_corrupt_policy_mapping_and_setting_rows(store: Store, db_path: Path) -> None:
    store.put_application(app("erp"), actor=ADMIN, now=NOW)
    store.put_policy(policy("p"), actor=ADMIN, now=NOW)
    raw(db_path, "UPDATE policies SET subjects = '[\"team:x\"]'")
    with pytest.raises(StoreError, match=r"table policies, row 'p': subjects\[0\]: bad subject 'team:x'"):
        store.policies()

    store.put_mapping(mapping("10.0.0.1", "alice"))
    raw(db_path, "UPDATE mappings SET ip = '10.0.0.999'")
    with pytest.raises(StoreError, match=r"table mappings, row '10.0.0.999': ip: not an IP address"):
        store.mappings()
    raw(db_path, "UPDATE mappings SET ip = '10.0.0.1', last_seen = 'yesterday'")
    with pytest.raises(StoreError, match=r"row '10.0.0.1': not a timestamp: last_seen='yesterday'"):
        store.mappings()

    raw(db_path, "INSERT INTO settings (key, value) VALUES ('default_action', 'perhaps')")
    with pytest.raises(StoreError, match=r"table settings, row 'default_action': value 'perhaps'"):
        store.default_action()
