"""The directory service: one worker, notification and timer triggers, coalescing, retry, stop."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from tests.directory.fake_directory import FakeDirectory, FixedClock, user_dn
from userseg.directory import service as service_module
from userseg.directory.model import DirectorySettings
from userseg.directory.service import DirectoryService
from userseg.directory.sync import DirectorySync, SyncOutcome
from userseg.store import Store

DEADLINE = 10.0  # seconds; generous, since every wait below ends as soon as its condition holds


def eventually(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll until `condition` holds, failing with `what` after `timeout` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


class Harness:
    def __init__(
        self, fake: FakeDirectory, store: Store, settings: DirectorySettings, clock: FixedClock
    ) -> None:
        self.fake = fake
        self.store = store
        self.outcomes: list[SyncOutcome] = []
        self.sync = DirectorySync(fake, store, settings, clock)
        self.service = DirectoryService(self.sync, fake, settings, on_outcome=self.outcomes.append)

    def wait_for(self, n: int) -> None:
        """Until at least n syncs have completed."""
        assert self.service.wait_for_sync(n - 1, DEADLINE), f"sync #{n} did not complete"


@pytest.fixture
def make(
    fake: FakeDirectory, store: Store, settings: DirectorySettings, clock: FixedClock
) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def build(**changes: object) -> Harness:
        h = Harness(fake, store, replace(settings, **changes), clock)  # type: ignore[arg-type]
        made.append(h)
        return h

    yield build
    for h in made:
        h.service.stop(timeout=5)


def our_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in ("directory-sync", "directory-watch")]


# --- triggers --------------------------------------------------------------------------------


def test_notification_leads_to_a_sync_without_the_timers(make: Callable[..., Harness]) -> None:
    h = make(notifications=True)  # timers at a day and a week: they cannot fire during this test
    h.service.start(initial=False)
    assert h.fake.watching.wait(DEADLINE)
    # the watch's connect notification ("changes may have been missed") asks for the first sync
    h.wait_for(1)
    assert h.outcomes[0].ok and h.outcomes[0].kind == "full"
    assert "dave" not in h.store.users()

    done = h.service.completed
    h.fake.add_user("u-dave", "dave")  # AD notifies the change
    h.wait_for(done + 1)
    eventually(lambda: "dave" in h.store.users(), "dave to be synced")
    assert h.outcomes[-1].kind == "incremental"
    assert h.service.notifications >= 2  # the connect notification and dave's
    # the notified entry was read by itself: no USN scan of the DC (read_changes)
    assert h.fake.calls == ["read_all"] and h.fake.notified_reads >= 1


def test_a_notified_entry_that_cannot_be_read_falls_back_to_the_usn_read(
    make: Callable[..., Harness],
) -> None:
    h = make(notifications=True)
    h.fake.add_user("u-erin", "erin")
    h.service.start(initial=False)
    h.wait_for(1)
    assert "erin" in h.store.users()
    done = h.service.completed
    h.fake.delete("u-erin")  # a deletion is notified under a DN that no longer reads back
    h.wait_for(done + 1)
    eventually(lambda: "erin" not in h.store.users(), "erin to be removed")
    assert "read_changes" in h.fake.calls


def test_initial_request_syncs_without_notifications(make: Callable[..., Harness]) -> None:
    h = make(notifications=False)
    h.service.start()
    h.wait_for(1)
    assert h.service.last_outcome is not None and h.service.last_outcome.ok
    assert set(h.store.users()) == {"alice", "bob", "carol"}
    assert not h.fake.watching.is_set() and h.service.notifications == 0
    assert [t.name for t in our_threads()] == ["directory-sync"]


def test_incremental_timer_fires_on_its_own(make: Callable[..., Harness]) -> None:
    h = make(notifications=False, incremental_interval=0.2)
    h.service.start(initial=False)
    h.wait_for(2)  # two timer ticks, no request from anybody else
    assert h.fake.calls[:2] == ["read_all", "read_changes"]


def test_full_timer_requests_a_full_read(make: Callable[..., Harness]) -> None:
    h = make(notifications=False, full_interval=0.3)
    h.service.start()
    h.wait_for(2)
    assert h.fake.calls[:2] == ["read_all", "read_all"]  # initial (no cursor yet), then the full timer
    assert h.outcomes[1].kind == "full"


def test_requests_during_a_sync_coalesce_into_one_follow_up(make: Callable[..., Harness]) -> None:
    h = make(notifications=False)
    h.service.start()
    h.wait_for(1)

    entered, release = h.fake.hold_next_read()
    h.service.request()
    assert entered.wait(DEADLINE)  # sync #2 is inside its read
    assert not h.service.pending
    for _ in range(5):
        h.service.request()
    h.fake.add_user("u-dave", "dave")
    h.service.request(full=True)
    assert h.service.pending

    follow_entered, follow_release = h.fake.hold_next_read()
    release.set()
    assert follow_entered.wait(DEADLINE)  # sync #3 started: it took every request made meanwhile
    assert not h.service.pending  # nothing left queued behind it
    assert h.service.completed == 2
    follow_release.set()
    h.wait_for(3)
    assert h.fake.calls == ["read_all", "read_changes", "read_all"]  # the full request won
    assert not h.service.pending
    assert "dave" in h.store.users()


# --- failures and retry -----------------------------------------------------------------------


def test_failed_sync_is_retried_with_backoff_until_the_dc_recovers(
    make: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "RETRY_FIRST", 0.05)
    h = make(notifications=False)  # timers far away: only the retry timer can run syncs
    h.fake.fail_next(3)
    h.service.start()
    h.wait_for(4)
    assert [o.ok for o in h.outcomes[:4]] == [False, False, False, True]
    assert set(h.store.users()) == {"alice", "bob", "carol"}
    # the first sync was full (no cursor), so the retries are full as well
    assert h.fake.calls[:4] == ["read_all"] * 4
    gaps = [b - a for a, b in itertools.pairwise(h.fake.call_times[:4])]
    assert gaps[0] >= 0.045 and gaps[1] >= 0.095 and gaps[2] >= 0.195, gaps  # doubling
    [status] = h.store.directory_status()
    assert status.last_error == "" and status.last_success_at is not None


def test_backoff_is_capped_at_the_incremental_interval(
    make: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "RETRY_FIRST", 0.05)
    h = make(notifications=False)  # the timers were scheduled with a day and a week
    h.service.start()
    h.wait_for(1)
    # the cap is read when a sync fails: 0.05 s here, so 6 retries take ~0.3 s;
    # uncapped doubling from 0.05 s would take 0.05 + 0.1 + ... + 1.6 = 3.15 s
    h.service.settings = replace(h.service.settings, incremental_interval=0.05)
    h.fake.fail_next(6)
    h.service.request()
    h.wait_for(8)
    times = h.fake.call_times[1:8]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= 0.045 for g in gaps), gaps
    assert times[-1] - times[0] < 2.5, gaps
    assert [o.ok for o in h.outcomes[1:8]] == [False] * 6 + [True]
    assert h.fake.calls[1:8] == ["read_changes"] * 7


def test_unexpected_exception_in_a_sync_does_not_kill_the_worker(
    make: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "RETRY_FIRST", 0.05)
    h = make(notifications=False)
    h.fake.fail_next(error=ValueError("adapter bug"))
    h.service.start()
    h.wait_for(2)
    assert not h.outcomes[0].ok and "adapter bug" in h.outcomes[0].error
    assert h.outcomes[1].ok
    assert [t.name for t in our_threads()] == ["directory-sync"]


def test_failing_outcome_callback_does_not_kill_the_worker(
    fake: FakeDirectory, store: Store, settings: DirectorySettings, clock: FixedClock
) -> None:
    def broken(outcome: SyncOutcome) -> None:
        raise RuntimeError("callback bug")

    quiet = replace(settings, notifications=False)
    service = DirectoryService(DirectorySync(fake, store, quiet, clock), fake, quiet, on_outcome=broken)
    service.start()
    try:
        assert service.wait_for_sync(0, DEADLINE)
        done = service.completed
        fake.add_user("u-dave", "dave")
        service.request()
        assert service.wait_for_sync(done, DEADLINE)
        assert "dave" in store.users()
    finally:
        service.stop()


# --- stop ------------------------------------------------------------------------------------


def test_stop_ends_all_threads_promptly(make: Callable[..., Harness]) -> None:
    h = make(notifications=True)
    h.service.start()
    h.wait_for(1)
    assert h.fake.watching.is_set()
    assert sorted(t.name for t in our_threads()) == ["directory-sync", "directory-watch"]
    started = time.monotonic()
    h.service.stop(timeout=5)
    assert time.monotonic() - started < 2.0
    assert h.fake.watch_ended.is_set()
    assert our_threads() == []


def test_stop_waits_for_a_running_sync_to_finish(make: Callable[..., Harness]) -> None:
    h = make(notifications=False)
    entered, release = h.fake.hold_next_read()
    h.service.start()
    assert entered.wait(DEADLINE)
    stopper = threading.Thread(target=h.service.stop, kwargs={"timeout": 5})
    stopper.start()
    assert stopper.is_alive()  # joining the worker, which is inside its read
    release.set()
    stopper.join(DEADLINE)
    assert not stopper.is_alive()
    assert h.service.completed == 1 and h.outcomes[0].ok
    assert our_threads() == []


def test_repeated_start_and_stop_never_hangs(
    fake: FakeDirectory, store: Store, settings: DirectorySettings, clock: FixedClock
) -> None:
    sync = DirectorySync(fake, store, settings, clock)
    for _ in range(20):
        service = DirectoryService(sync, fake, replace(settings, notifications=True), on_outcome=None)
        service.start(initial=False)
        started = time.monotonic()
        service.stop(timeout=5)
        assert time.monotonic() - started < 2.0
        assert our_threads() == []


def test_user_change_arrives_through_the_watch_after_a_rename(make: Callable[..., Harness]) -> None:
    h = make(notifications=True)
    h.service.start(initial=False)
    h.wait_for(1)
    done = h.service.completed
    h.fake.update_user("u-alice", dn="CN=Alice Renamed,OU=Moved,DC=example,DC=net")
    h.wait_for(done + 1)
    h.fake.set_members("g-staff", user_dn("bob"))  # Finance no longer nested in Staff
    eventually(lambda: h.store.users()["alice"].groups == {"finance", "domain users"}, "alice to lose staff")
