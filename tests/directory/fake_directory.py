"""An in-memory domain controller implementing DirectorySource, for unit tests of the sync.

It keeps a USN counter like a DC: every mutation stamps the entry with the
next USN, and read_changes returns the entries (and tombstones) above the
cursor's USN.  Tests can make the next reads fail, fail over to another "DC"
(whose cursor the old one's is not valid for), hold a read half-way to
observe concurrency, and mutate it while a watch is running (each mutation
calls on_change, as an AD change notification would).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from dataclasses import replace
from datetime import datetime, timedelta

from userseg.directory.model import (
    CursorInvalid,
    DirectoryChanges,
    DirectoryError,
    DirectoryGroup,
    DirectoryImage,
    DirectoryUser,
    Progress,
    SyncCursor,
)

DOMAIN_SID = "S-1-5-21-1000-2000-3000"
BASE = "DC=example,DC=net"
DC1 = "ldaps://dc1.example.net:636"
DC2 = "ldaps://dc2.example.net:636"


def user_dn(sam: str) -> str:
    return f"CN={sam},OU=Staff,{BASE}"


def group_dn(name: str) -> str:
    return f"CN={name},OU=Groups,{BASE}"


class FakeDirectory:
    """A DirectorySource over dicts; thread-safe, so a service's threads can use it."""

    def __init__(self, *, server: str = DC1, invocation_id: str = "inv-dc1", usn: int = 1000) -> None:
        self._lock = threading.Lock()
        self.server = server
        self.invocation_id = invocation_id
        self.usn = usn
        self.domain_sid = DOMAIN_SID
        self.users: dict[str, DirectoryUser] = {}
        self.groups: dict[str, DirectoryGroup] = {}
        self._tombstones: dict[str, int] = {}  # guid -> USN of the deletion
        self.calls: list[str] = []  # "read_all" / "read_changes", failed ones included
        self.call_times: list[float] = []  # time.monotonic() of each call
        self.last_server = ""  # read by DirectorySync to name the DC in a failure
        self._failures: list[tuple[str | None, Exception]] = []  # (only this call, error)
        self._gates: list[tuple[threading.Event, threading.Event]] = []  # (entered, release)
        self._watchers: list[Callable[[str], None]] = []
        self.watching = threading.Event()  # a watch() is running
        self.watch_ended = threading.Event()
        self.closed = False
        self.notified_reads = 0

    # --- mutations (what an admin does in AD) -------------------------------------------

    def _stamp(self) -> int:
        self.usn += 1
        return self.usn

    def _notify(self, dn: str) -> None:
        for on_change in list(self._watchers):
            on_change(dn)

    def put_user(self, u: DirectoryUser) -> DirectoryUser:
        with self._lock:
            stored = replace(u, usn=self._stamp())
            self.users[u.guid] = stored
            self._tombstones.pop(u.guid, None)
        self._notify(u.dn)
        return stored

    def put_group(self, g: DirectoryGroup) -> DirectoryGroup:
        with self._lock:
            stored = replace(g, usn=self._stamp())
            self.groups[g.guid] = stored
            self._tombstones.pop(g.guid, None)
        self._notify(g.dn)
        return stored

    def add_user(self, guid: str, sam: str, **kw: object) -> DirectoryUser:
        dn = str(kw.pop("dn", user_dn(sam)))
        return self.put_user(DirectoryUser(guid, dn, sam, **kw))  # type: ignore[arg-type]

    def add_group(self, guid: str, name: str, *members: str, **kw: object) -> DirectoryGroup:
        return self.put_group(DirectoryGroup(guid, group_dn(name), name, members=frozenset(members), **kw))  # type: ignore[arg-type]

    def update_user(self, guid: str, **changes: object) -> DirectoryUser:
        return self.put_user(replace(self.users[guid], **changes))  # type: ignore[arg-type]

    def set_members(self, guid: str, *members: str) -> DirectoryGroup:
        return self.put_group(replace(self.groups[guid], members=frozenset(members)))

    def delete(self, guid: str) -> None:
        with self._lock:
            gone = self.users.pop(guid, None) or self.groups.pop(guid, None)
            assert gone is not None, guid
            self._tombstones[guid] = self._stamp()
        self._notify(gone.dn)

    def touch(self) -> None:
        """A change outside the sync's scope: the USN moves, nothing we read changes."""
        with self._lock:
            self._stamp()
        self._notify("CN=printer,OU=Devices," + BASE)

    # --- failure injection ----------------------------------------------------------------

    def fail_next(self, count: int = 1, error: Exception | None = None, *, only: str | None = None) -> None:
        """The next `count` reads (of kind `only`, if given) raise `error` (by default a
        DirectoryError naming the DC)."""
        with self._lock:
            for _ in range(count):
                self._failures.append((only, error or DirectoryError(f"{self.server}: connection refused")))

    def switch_dc(self, server: str = DC2, invocation_id: str = "inv-dc2", usn: int = 50) -> None:
        """Fail over to another DC with the same data: its USNs are its own."""
        with self._lock:
            self.server, self.invocation_id = server, invocation_id
            self.usn = usn
            self.users = {g: replace(u, usn=usn) for g, u in self.users.items()}
            self.groups = {g: replace(x, usn=usn) for g, x in self.groups.items()}
            self._tombstones = {}

    def hold_next_read(self) -> tuple[threading.Event, threading.Event]:
        """The next read blocks after being counted: returns (entered, release)."""
        gate = (threading.Event(), threading.Event())
        with self._lock:
            self._gates.append(gate)
        return gate

    # --- DirectorySource ------------------------------------------------------------------

    def _begin(self, call: str) -> None:
        with self._lock:
            self.calls.append(call)
            self.call_times.append(time.monotonic())
            self.last_server = self.server
            gate = self._gates.pop(0) if self._gates else None
            failure = None
            for i, (only, _) in enumerate(self._failures):
                if only in (None, call):
                    failure = self._failures.pop(i)[1]
                    break
        if gate is not None:
            entered, release = gate
            entered.set()
            if not release.wait(30):
                raise DirectoryError("test gate never released")
        if failure is not None:
            raise failure

    def read_notified(self, dns: Collection[str]) -> DirectoryChanges | None:
        """Like the LDAP adapter: the notified entries as they are now, None if any is gone."""
        self.notified_reads += 1  # not in self.calls: gates and failures target the USN reads
        by_dn = {e.dn.casefold(): e for e in [*self.users.values(), *self.groups.values()]}
        found = [by_dn.get(dn.casefold()) for dn in dns]
        if any(e is None for e in found):
            return None
        return DirectoryChanges(
            users=tuple(e for e in found if isinstance(e, DirectoryUser)),
            groups=tuple(e for e in found if isinstance(e, DirectoryGroup)),
        )

    def read_user(self, name: str) -> DirectoryUser | None:
        wanted = name.casefold()
        return next((u for u in self.users.values() if wanted in (u.sam.casefold(), u.upn.casefold())), None)

    def read_all(self, progress: Progress | None = None) -> tuple[DirectoryImage, SyncCursor]:
        self._begin("read_all")
        with self._lock:
            image = DirectoryImage(self.domain_sid, dict(self.users), dict(self.groups))
            cursor = SyncCursor(self.server, self.invocation_id, self.usn)
        if progress is not None:
            progress("users", len(image.users))
            progress("groups", len(image.groups))
        return image, cursor

    def read_changes(self, cursor: SyncCursor) -> tuple[DirectoryChanges, SyncCursor]:
        self._begin("read_changes")
        with self._lock:
            if cursor.server != self.server or cursor.invocation_id != self.invocation_id:
                raise CursorInvalid(f"cursor is for {cursor.server}, connected to {self.server}")
            if cursor.highest_usn > self.usn:
                raise CursorInvalid(f"{self.server}: USN {self.usn} is below the cursor's")
            since = cursor.highest_usn
            changes = DirectoryChanges(
                users=tuple(u for u in self.users.values() if u.usn > since),
                groups=tuple(g for g in self.groups.values() if g.usn > since),
                deleted=frozenset(guid for guid, usn in self._tombstones.items() if usn > since),
            )
            return changes, SyncCursor(self.server, self.invocation_id, self.usn)

    def watch(self, on_change: Callable[[str], None], stop: threading.Event) -> None:
        with self._lock:
            self._watchers.append(on_change)
        self.watch_ended.clear()
        self.watching.set()
        try:
            on_change("")  # (re)connected: changes made meanwhile were not notified
            stop.wait()
        finally:
            with self._lock:
                self._watchers.remove(on_change)
            self.watching.clear()
            self.watch_ended.set()

    def close(self) -> None:
        self.closed = True


class FixedClock:
    """A Clock that only moves when the test says so."""

    def __init__(self, now: datetime) -> None:
        self._now = now
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, **delta: float) -> datetime:
        with self._lock:
            self._now += timedelta(**delta)
            return self._now


def populate(fake: FakeDirectory) -> None:
    """A small domain: nested groups, primary groups, one user in no group of its own.

    alice: Finance (direct), Staff (Finance is nested in it), Domain Users (primary)
    bob:   Staff (direct), Domain Users (primary)
    carol: Domain Users (primary) only
    """
    for guid, sam in (("u-alice", "alice"), ("u-bob", "bob"), ("u-carol", "carol")):
        fake.add_user(guid, sam, primary_group_id=513, display_name=sam.title())
    fake.add_group("g-du", "Domain Users", sid=f"{DOMAIN_SID}-513")
    fake.add_group("g-fin", "Finance", user_dn("alice"), sid=f"{DOMAIN_SID}-1105")
    fake.add_group("g-staff", "Staff", group_dn("Finance"), user_dn("bob"), sid=f"{DOMAIN_SID}-1106")
