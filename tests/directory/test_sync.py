"""One directory sync at a time: full and incremental reads, guards, failures, the store's view."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from tests.directory.conftest import NOW
from tests.directory.fake_directory import DC1, DC2, FakeDirectory, FixedClock, group_dn, user_dn
from userseg.directory.model import (
    DirectoryError,
    DirectorySettings,
    StalePolicy,
)
from userseg.directory.sync import MASS_DELETE_MINIMUM, DirectorySync, SyncOutcome, staleness
from userseg.model import Mapping, User
from userseg.store import Store, StoreError
from userseg.store.directory_image import DirectorySyncStatus

_1601 = datetime(1601, 1, 1, tzinfo=UTC)

ALICE = User("alice", "Alice", False, frozenset({"finance", "staff", "domain users"}))
BOB = User("bob", "Bob", False, frozenset({"staff", "domain users"}))
CAROL = User("carol", "Carol", False, frozenset({"domain users"}))


def ticks(when: datetime) -> int:
    d = when - _1601
    return (d.days * 86400 + d.seconds) * 10_000_000 + d.microseconds * 10


def mapping(addr: str, user: str) -> Mapping:
    return Mapping(ipaddress.ip_address(addr), user, "wec", NOW, NOW, NOW + timedelta(days=30))


def make_sync(
    fake: FakeDirectory,
    store: Store,
    settings: DirectorySettings,
    clock: FixedClock,
    commits: list[SyncOutcome] | None = None,
) -> DirectorySync:
    return DirectorySync(fake, store, settings, clock, None if commits is None else commits.append)


@pytest.fixture
def sync(fake: FakeDirectory, store: Store, settings: DirectorySettings, clock: FixedClock) -> DirectorySync:
    return make_sync(fake, store, settings, clock)


def state(store: Store) -> tuple[object, ...]:
    """Everything a failed sync must leave alone."""
    return (store.directory_image(), store.users(), store.groups(), store.mappings(), store.generation())


# --- full and incremental ------------------------------------------------------------------


def test_first_run_is_full_and_stores_the_resolved_view(
    sync: DirectorySync, fake: FakeDirectory, store: Store
) -> None:
    outcome = sync.run()
    assert outcome.ok and outcome.kind == "full" and outcome.error == ""
    assert (outcome.server, outcome.users, outcome.groups, outcome.entries) == (DC1, 3, 3, 6)
    assert outcome.changed and outcome.lost == () and outcome.problems == ()
    assert fake.calls == ["read_all"]
    assert store.users() == {"alice": ALICE, "bob": BOB, "carol": CAROL}
    assert set(store.groups()) == {"domain users", "finance", "staff"}
    assert store.groups()["staff"].dn == group_dn("Staff")
    image, cursor = store.directory_image()
    assert cursor is not None and (cursor.server, cursor.invocation_id, cursor.highest_usn) == (
        DC1,
        "inv-dc1",
        fake.usn,
    )
    assert set(image.users) == {"u-alice", "u-bob", "u-carol"}
    [status] = store.directory_status()
    assert (status.server, status.last_kind, status.last_success_at, status.users, status.groups) == (
        DC1,
        "full",
        NOW,
        3,
        3,
    )


def test_second_run_is_incremental_and_applies_changes(
    sync: DirectorySync, fake: FakeDirectory, store: Store, clock: FixedClock
) -> None:
    sync.run()
    g = store.generation()
    fake.set_members("g-fin", user_dn("alice"), user_dn("carol"))  # carol joins Finance
    fake.add_user("u-dave", "dave")
    clock.advance(minutes=1)

    outcome = sync.run()
    assert outcome.ok and outcome.kind == "incremental" and outcome.changed
    assert outcome.entries == 2  # the changed group and the new user, nothing else was read
    assert (outcome.users, outcome.groups) == (4, 3)
    assert fake.calls == ["read_all", "read_changes"]
    assert store.users()["carol"].groups == {"finance", "staff", "domain users"}
    assert store.users()["dave"] == User("dave")
    assert store.generation() == g + 1
    _, cursor = store.directory_image()
    assert cursor is not None and cursor.highest_usn == fake.usn
    assert store.directory_status()[0].last_kind == "incremental"
    assert store.directory_status()[0].last_success_at == clock.now()


def test_incremental_without_changes_advances_cursor_without_bumping_generation(
    sync: DirectorySync, fake: FakeDirectory, store: Store, clock: FixedClock
) -> None:
    sync.run()
    before_image, before_cursor = store.directory_image()
    g = store.generation()
    fake.touch()  # something out of scope changed: the USN moved
    later = clock.advance(minutes=1)

    outcome = sync.run()
    assert outcome.ok and outcome.kind == "incremental"
    assert not outcome.changed and outcome.entries == 0
    assert (outcome.users, outcome.groups) == (3, 3)
    image, cursor = store.directory_image()
    assert image == before_image
    assert before_cursor is not None and cursor is not None
    assert cursor.highest_usn == fake.usn == before_cursor.highest_usn + 1
    assert store.generation() == g
    [status] = store.directory_status()
    assert (status.last_success_at, status.last_attempt_at, status.last_kind) == (later, later, "incremental")


def test_explicit_full_run_rereads_everything_and_drops_what_is_gone(
    sync: DirectorySync, fake: FakeDirectory, store: Store
) -> None:
    sync.run()
    fake.delete("u-carol")
    outcome = sync.run(full=True)
    assert outcome.ok and outcome.kind == "full" and outcome.lost == ("carol",)
    assert fake.calls == ["read_all", "read_all"]
    assert set(store.users()) == {"alice", "bob"}


def test_deleted_group_is_removed_from_effective_memberships(
    sync: DirectorySync, fake: FakeDirectory, store: Store
) -> None:
    sync.run()
    fake.delete("g-fin")
    assert sync.run().kind == "incremental"
    assert store.users()["alice"].groups == {"domain users"}  # Staff came only through Finance
    assert "finance" not in store.groups()


def test_renamed_user_keeps_memberships_across_incremental_sync(
    sync: DirectorySync, fake: FakeDirectory, store: Store
) -> None:
    sync.run()
    fake.update_user("u-alice", dn="CN=Alice Smith,OU=Moved,DC=example,DC=net")  # groups keep their USN
    outcome = sync.run()
    assert outcome.ok and outcome.kind == "incremental" and outcome.entries == 1
    assert store.users()["alice"] == ALICE
    assert not outcome.changed
    image, _ = store.directory_image()
    assert image.groups["g-fin"].members == {"CN=Alice Smith,OU=Moved,DC=example,DC=net"}


def test_progress_is_reported_by_full_reads(sync: DirectorySync) -> None:
    seen: list[tuple[str, int]] = []
    sync.run(progress=lambda what, n: seen.append((what, n)))
    assert seen == [("users", 3), ("groups", 3)]


def test_problems_in_the_data_are_reported_and_the_rest_is_synced(
    sync: DirectorySync, fake: FakeDirectory, store: Store
) -> None:
    fake.add_user("u-zz-alice", "ALICE", dn="CN=Alice Two,OU=Staff,DC=example,DC=net")
    outcome = sync.run()
    assert outcome.ok
    assert len(outcome.problems) == 1 and "CN=Alice Two" in outcome.problems[0]
    assert store.users()["alice"] == ALICE


# --- failures --------------------------------------------------------------------------------


def test_failed_read_changes_nothing_and_is_recorded(
    sync: DirectorySync, fake: FakeDirectory, store: Store, clock: FixedClock, settings: DirectorySettings
) -> None:
    sync.run()
    store.put_mapping(mapping("10.0.0.1", "alice"))
    fake.delete("u-alice")
    before = state(store)
    fake.fail_next(error=DirectoryError(f"{DC1}: connection refused"))
    failed_at = clock.advance(minutes=10)

    outcome = sync.run()
    assert not outcome.ok and outcome.kind == "incremental"
    assert outcome.error == f"{DC1}: connection refused"
    assert outcome.server == DC1
    assert state(store) == before  # alice and her mapping are still there
    [status] = store.directory_status()
    assert status == replace(
        status,  # the duration of the last success is kept too, whatever it was
        server=DC1,
        last_attempt_at=failed_at,
        last_success_at=NOW,
        last_kind="incremental",
        last_error=f"{DC1}: connection refused",
        users=3,
        groups=3,
    )

    # staleness counts from the last success, not the last attempt
    st = staleness(settings, store.directory_status(), failed_at)
    assert (st.last_success, st.age, st.stale) == (NOW, timedelta(minutes=10), False)
    much_later = NOW + timedelta(seconds=settings.max_staleness + 1)
    assert staleness(settings, store.directory_status(), much_later).stale

    # the next good read applies what the failed one missed
    again = sync.run()
    assert again.ok and again.lost == ("alice",)
    assert store.mappings() == []


def test_failure_on_the_very_first_run_leaves_an_empty_store(
    sync: DirectorySync, fake: FakeDirectory, store: Store
) -> None:
    fake.fail_next()
    outcome = sync.run()
    assert not outcome.ok and outcome.kind == "full"
    assert store.users() == {} and store.directory_image()[1] is None
    [status] = store.directory_status()
    assert status.last_success_at is None and "connection refused" in status.last_error
    assert sync.run().ok


def test_store_failure_during_commit_is_an_outcome_and_the_change_is_retried(
    sync: DirectorySync, fake: FakeDirectory, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync.run()
    fake.delete("u-bob")
    real = store.commit_directory
    calls: list[int] = []

    def broken(*args: object, **kw: object) -> object:
        calls.append(1)
        raise StoreError("database is locked")

    monkeypatch.setattr(store, "commit_directory", broken)
    outcome = sync.run()
    assert not outcome.ok and outcome.error == "database is locked" and calls == [1]
    assert "bob" in store.users()
    monkeypatch.setattr(store, "commit_directory", real)
    # the in-memory image did not move past the failed commit: bob's deletion is applied now
    retry = sync.run()
    assert retry.ok and retry.lost == ("bob",)
    assert "bob" not in store.users()


def test_cursor_invalid_falls_back_to_a_full_read(
    sync: DirectorySync, fake: FakeDirectory, store: Store, clock: FixedClock
) -> None:
    sync.run()
    fake.switch_dc()  # failover: DC2's USNs mean nothing to DC1's cursor
    fake.delete("u-carol")
    later = clock.advance(minutes=1)
    outcome = sync.run()
    assert outcome.ok and outcome.kind == "full" and outcome.server == DC2
    assert fake.calls == ["read_all", "read_changes", "read_all"]
    assert outcome.lost == ("carol",)
    _, cursor = store.directory_image()
    assert cursor is not None and (cursor.server, cursor.invocation_id, cursor.highest_usn) == (
        DC2,
        "inv-dc2",
        fake.usn,
    )
    status = {s.server: s for s in store.directory_status()}
    assert status[DC1].last_success_at == NOW and status[DC2].last_success_at == later
    # and from there on, incremental against DC2
    assert sync.run().kind == "incremental"


def test_cursor_invalid_then_failed_full_read_keeps_everything(
    sync: DirectorySync, fake: FakeDirectory, store: Store
) -> None:
    sync.run()
    fake.switch_dc()
    before = state(store)
    # the incremental read raises CursorInvalid itself; then the full read fails
    fake.fail_next(error=DirectoryError(f"{DC2}: timed out"), only="read_all")
    outcome = sync.run()
    assert not outcome.ok and outcome.kind == "full" and outcome.error == f"{DC2}: timed out"
    assert fake.calls == ["read_all", "read_changes", "read_all"]
    assert state(store) == before
    again = sync.run()
    assert again.ok and again.kind == "full"


def test_restore_of_the_dc_database_is_a_full_read(sync: DirectorySync, fake: FakeDirectory) -> None:
    sync.run()
    fake.usn -= 100  # restored from backup: the USN went backwards
    assert sync.run().kind == "full"
    assert fake.calls == ["read_all", "read_changes", "read_all"]


# --- the mass-delete guard ----------------------------------------------------------------


def test_mass_delete_guard_refuses_and_allow_commits(
    sync: DirectorySync, fake: FakeDirectory, store: Store
) -> None:
    for i in range(20):
        fake.add_user(f"u-extra{i:02}", f"extra{i:02}")
    sync.run()
    assert len(store.users()) == 23
    for i in range(12):  # 12 of 23 > 50%
        fake.delete(f"u-extra{i:02}")
    before = state(store)

    refused = sync.run()
    assert not refused.ok
    assert "refusing a sync that would delete 12 of 23 users" in refused.error
    assert "--allow-mass-delete" in refused.error
    assert state(store) == before
    assert "refusing" in store.directory_status()[0].last_error

    # the refused read is not half-remembered: the next plain run refuses again
    assert not sync.run().ok
    allowed = sync.run(allow_mass_delete=True)
    assert allowed.ok and len(allowed.lost) == 12
    assert len(store.users()) == 11


def test_deletions_within_the_fraction_or_below_the_minimum_pass(
    fake: FakeDirectory, store: Store, settings: DirectorySettings, clock: FixedClock
) -> None:
    sync = make_sync(fake, store, replace(settings, max_delete_fraction=0.0), clock)
    sync.run()
    for guid in ("u-alice", "u-bob", "u-carol"):  # all of them, but fewer than the minimum
        fake.delete(guid)
    assert MASS_DELETE_MINIMUM > 3
    outcome = sync.run()
    assert outcome.ok and outcome.lost == ("alice", "bob", "carol")


def test_mass_delete_guard_counts_users_hidden_by_a_wrong_filter_on_full_reads(
    sync: DirectorySync, fake: FakeDirectory, store: Store
) -> None:
    for i in range(30):
        fake.add_user(f"u-x{i:02}", f"x{i:02}")
    sync.run()
    fake.users = {g: u for g, u in fake.users.items() if g in ("u-alice", "u-bob")}  # scope shrank
    outcome = sync.run(full=True)
    assert not outcome.ok and "would delete 31 of 33 users" in outcome.error
    assert len(store.users()) == 33


# --- on_commit, lost accounts, mappings -----------------------------------------------------


def test_on_commit_is_called_only_on_success(
    fake: FakeDirectory, store: Store, settings: DirectorySettings, clock: FixedClock
) -> None:
    commits: list[SyncOutcome] = []
    sync = make_sync(fake, store, settings, clock, commits)
    first = sync.run()
    assert commits == [first]
    fake.fail_next()
    assert not sync.run().ok
    assert commits == [first]
    fake.add_user("u-dave", "dave")
    second = sync.run()
    assert commits == [first, second]


def test_deleted_and_disabled_accounts_lose_their_mappings(
    sync: DirectorySync, fake: FakeDirectory, store: Store
) -> None:
    sync.run()
    for addr, who in [("10.0.0.1", "alice"), ("10.0.0.2", "bob"), ("10.0.0.3", "carol"), ("10.0.0.9", "zed")]:
        store.put_mapping(mapping(addr, who))
    fake.update_user("u-alice", disabled=True)
    fake.delete("u-bob")

    outcome = sync.run()
    assert outcome.ok and outcome.lost == ("alice", "bob") and outcome.removed_mappings == 2
    assert sorted(m.user for m in store.mappings()) == ["carol", "zed"]  # zed: never in the directory
    assert store.users()["alice"].disabled
    audit = [(a.actor, a.name, a.action) for a in store.audit() if a.entity == "mapping"]
    assert sorted(audit) == [("directory", "10.0.0.1", "delete"), ("directory", "10.0.0.2", "delete")]

    # an already-disabled account is not reported again, but a new mapping of it is still removed
    store.put_mapping(mapping("10.0.0.1", "alice"))
    fake.touch()
    fake.update_user("u-carol", display_name="Carol C")
    again = sync.run()
    assert again.ok and again.lost == () and again.removed_mappings == 1
    assert sorted(m.user for m in store.mappings()) == ["carol", "zed"]


def test_account_expiry_is_noticed_without_any_directory_change(
    sync: DirectorySync, fake: FakeDirectory, store: Store, clock: FixedClock
) -> None:
    fake.update_user("u-bob", expires=ticks(NOW + timedelta(minutes=30)))
    sync.run()
    store.put_mapping(mapping("10.0.0.2", "bob"))
    assert not store.users()["bob"].disabled

    clock.advance(minutes=10)
    quiet = sync.run()  # nothing changed in AD and nothing expired yet
    assert quiet.ok and not quiet.changed
    assert fake.calls[-1] == "read_changes"

    clock.advance(minutes=25)  # bob's account expired; AD changed no USN for that
    expired = sync.run()
    assert expired.ok and expired.kind == "incremental" and expired.changed
    assert expired.lost == ("bob",)
    assert store.users()["bob"].disabled
    assert store.mappings() == []


def test_restart_continues_incrementally_and_rechecks_expiry_once(
    fake: FakeDirectory, store: Store, settings: DirectorySettings, clock: FixedClock
) -> None:
    fake.update_user("u-carol", expires=ticks(NOW + timedelta(hours=1)))
    make_sync(fake, store, settings, clock).run()
    g = store.generation()

    # a new process, after carol expired while it was down; AD itself did not change
    clock.advance(hours=2)
    restarted = make_sync(fake, store, settings, clock)
    outcome = restarted.run()
    assert outcome.ok and outcome.kind == "incremental"
    assert fake.calls == ["read_all", "read_changes"]
    assert outcome.lost == ("carol",) and store.users()["carol"].disabled
    assert store.generation() == g + 1

    # and nothing more to do after that
    again = restarted.run()
    assert again.ok and not again.changed and store.generation() == g + 1


def test_restart_without_changes_does_not_bump_the_generation(
    fake: FakeDirectory, store: Store, settings: DirectorySettings, clock: FixedClock
) -> None:
    make_sync(fake, store, settings, clock).run()
    g = store.generation()
    outcome = make_sync(fake, store, settings, clock).run()
    assert outcome.ok and outcome.kind == "incremental" and not outcome.changed
    assert (outcome.users, outcome.groups) == (3, 3)
    assert store.generation() == g


# --- staleness -------------------------------------------------------------------------------


def status(server: str, success: datetime | None) -> DirectorySyncStatus:
    return DirectorySyncStatus(server, NOW, success, "full", "", 0, 0, 0)


def test_staleness_from_the_newest_success_of_any_dc(settings: DirectorySettings) -> None:
    never = staleness(settings, [], NOW)
    assert (never.last_success, never.age, never.stale, never.fail_closed) == (None, None, True, False)
    assert staleness(settings, [status(DC1, None)], NOW).stale

    old, recent = NOW - timedelta(days=3), NOW - timedelta(hours=1)
    fresh = staleness(settings, [status(DC1, old), status(DC2, recent)], NOW)
    assert (fresh.last_success, fresh.age, fresh.stale) == (recent, timedelta(hours=1), False)
    assert staleness(settings, [status(DC1, old)], NOW).stale

    limit = NOW - timedelta(seconds=settings.max_staleness)
    assert not staleness(settings, [status(DC1, limit)], NOW).stale  # exactly at the limit: not yet


def test_fail_closed_only_when_stale_and_configured(settings: DirectorySettings) -> None:
    closed = replace(settings, on_stale=StalePolicy.FAIL_CLOSED)
    old = [status(DC1, NOW - timedelta(days=2))]
    assert staleness(closed, old, NOW).fail_closed
    assert not staleness(settings, old, NOW).fail_closed  # KEEP
    assert not staleness(closed, [status(DC1, NOW)], NOW).fail_closed
