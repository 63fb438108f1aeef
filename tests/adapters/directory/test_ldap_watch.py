"""AD change notification and outages: watch(), reconnects, a DC dying in the middle of a read.

The outage tests stop and restart the *second* DC (samba_dc2), so the
session's main DC stays up for everyone else.  Nothing sleeps for a fixed
time: events are awaited with deadlines.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.ad_fixtures import unique_name
from userseg.adapters.directory import LdapDirectory
from userseg.adapters.directory.reader import Reader
from userseg.directory.model import DirectoryError

from .helpers import directory_for, poll, server_of

pytestmark = pytest.mark.netns

NOTIFY_TIMEOUT = 20.0  # Samba re-checks notifications every 5 s; room for a loaded CI machine
RESTART_TIMEOUT = 90.0


class Watcher:
    """Runs directory.watch() on a thread and queues what it reports, with arrival times."""

    def __init__(self, directory: LdapDirectory) -> None:
        self.directory = directory
        self.stop = threading.Event()
        self.events: queue.Queue[tuple[float, str]] = queue.Queue()
        self.thread = threading.Thread(target=directory.watch, args=(self._seen, self.stop), daemon=True)
        self.thread.start()

    def _seen(self, dn: str) -> None:
        self.events.put((time.monotonic(), dn))

    def wait_for(self, match: Callable[[str], bool], timeout: float) -> float:
        """Arrival time of the first reported DN that matches; earlier ones are dropped."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching notification within {timeout} s")
            try:
                at, dn = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if match(dn):
                return at

    def close(self) -> float:
        """Set stop; return how long watch() took to return."""
        started = time.monotonic()
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "watch() did not stop"
        return time.monotonic() - started


@pytest.fixture
def dc2_restored(samba_dc2: Any) -> Iterator[Any]:
    """samba_dc2, guaranteed running again (and answering) after the test, whatever happened."""
    yield samba_dc2
    samba_dc2.start()  # returns at once when it is running
    _wait_answering(samba_dc2)


def _wait_answering(dc: Any) -> None:
    def answers() -> bool:
        directory = directory_for(dc, connect_timeout=1.0)
        try:
            directory.read_user("Administrator")
            return True
        except DirectoryError:
            return False
        finally:
            directory.close()

    poll(answers, RESTART_TIMEOUT, interval=0.5, what=f"{dc.url} to answer")


def test_watch_reports_a_group_change_and_stops_promptly(samba_dc: Any) -> None:
    user, group = unique_name("wu"), unique_name("wg")
    samba_dc.samba_tool("user", "create", user, "--random-password")
    samba_dc.samba_tool("group", "add", group)
    directory = directory_for(samba_dc)
    watcher = Watcher(directory)
    try:
        watcher.wait_for(lambda dn: dn == "", 10)  # connected: "anything may have changed"
        samba_dc.samba_tool("group", "addmembers", group, user)
        done = time.monotonic()
        seen = watcher.wait_for(lambda dn: dn.startswith(f"CN={group},"), NOTIFY_TIMEOUT)
        print(f"notification latency {seen - done:.3f} s")
    finally:
        took = watcher.close()
        directory.close()
    assert took < 1.5, f"watch() took {took:.2f} s to stop"


def test_close_ends_a_running_watch(samba_dc: Any) -> None:
    directory = directory_for(samba_dc)
    watcher = Watcher(directory)
    watcher.wait_for(lambda dn: dn == "", 10)
    started = time.monotonic()
    directory.close()
    watcher.thread.join(timeout=5)
    assert not watcher.thread.is_alive() and time.monotonic() - started < 1.5


def test_watch_reconnects_after_the_dc_restarts(dc2_restored: Any) -> None:
    dc = dc2_restored
    directory = directory_for(dc, connect_timeout=1.0)
    watcher = Watcher(directory)
    try:
        watcher.wait_for(lambda dn: dn == "", 10)
        dc.stop()
        dc.start()
        watcher.wait_for(lambda dn: dn == "", RESTART_TIMEOUT)  # reconnected: told to resync
    finally:
        took = watcher.close()
        directory.close()
    assert took < 1.5


def test_read_all_fails_whole_when_the_dc_dies_mid_read(dc2_restored: Any) -> None:
    """One connection, paged (the read before fullread.py): the DC dies between two pages."""
    dc = dc2_restored
    directory = directory_for(dc, page_size=5, operation_timeout=10.0)
    directory.read_connections, directory.user_partitions = 1, 1
    directory.searches.plain = False
    calls: list[tuple[str, int]] = []

    def progress(what: str, count: int) -> None:
        calls.append((what, count))
        if len(calls) == 1:
            dc.stop()

    try:
        with pytest.raises(DirectoryError) as info:
            directory.read_all(progress)
        assert dc.address in str(info.value)
        assert calls == [("users", calls[0][1])] and 0 < calls[0][1] <= 5  # died after the first page
        dc.start()
        _wait_answering(dc)
        image, _ = directory.read_all()  # the same object recovers once the DC is back
        assert image.users
    finally:
        directory.close()


def test_concurrent_read_fails_whole_when_the_dc_dies_mid_read(
    dc2_restored: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Default full read (several connections): the DC dies while the group search is due.

    With plain searches a small directory arrives in one response per
    partition, so "after the first progress call" may already be the end of
    the read; the DC is stopped instead right before the group search, which
    is then certainly still to come.
    """
    dc = dc2_restored
    directory = directory_for(dc, operation_timeout=10.0)
    assert directory.read_connections > 1
    stopped: list[str] = []
    group_attributes = Reader.group_attributes

    def stop_first(reader: Reader) -> list[str]:
        if not stopped:
            stopped.append(threading.current_thread().name)
            dc.stop()
        return group_attributes(reader)

    monkeypatch.setattr(Reader, "group_attributes", stop_first)
    try:
        with pytest.raises(DirectoryError) as info:
            directory.read_all()
        assert dc.address in str(info.value) and stopped
        assert not [t for t in threading.enumerate() if t.name.startswith("ldap-read-")]
        monkeypatch.setattr(Reader, "group_attributes", group_attributes)
        dc.start()
        _wait_answering(dc)
        image, _ = directory.read_all()
        assert image.users and image.groups
    finally:
        directory.close()


def test_failover_past_a_stopped_dc(samba_dc: Any, dc2_restored: Any) -> None:
    dc2 = dc2_restored
    dc2.stop()
    directory = directory_for(samba_dc, server_of(dc2), server_of(samba_dc), connect_timeout=2.0)
    try:
        assert directory.read_user("Administrator") is not None
        assert directory.server_url == server_of(samba_dc).url
    finally:
        directory.close()
