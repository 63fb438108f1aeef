"""The full read: users and groups fetched over several connections at once, merged into one image.

Why concurrent: a read alternates between two single-threaded workers, the
DC building a response and Python decoding it; on one connection they take
turns.  Separate connections are served by separate Samba worker processes
(prefork children = 4 by default), so while Python decodes one response the
DC builds the next.  Python stays on one core (GIL): the gain is at most the
overlap of the two halves.

Measured on the development DC (Samba 4.17 on the same 2-core machine,
20,206 users, 2,000 groups, 43k member values; medians under the machine's
usual background load, so read them as ratios):

=====================================================  ======  ==========  =========
read_all                                               wall    Python CPU  Samba CPU
=====================================================  ======  ==========  =========
before: 1 connection, paged, ldap3 decoding            14.0 s  5.4-5.7 s   6.1-7.1 s
lean decoder (decode.py) only                           8-9 s  1.7-1.9 s   6.3-6.9 s
+ 2 connections x 2 partitions, still paged             9.0 s      -           -
plain searches (reader.py), 1 connection                4.6 s  1.8 s       2.6-2.8 s
plain, 2 connections, 2 partitions (the default)        4.0 s  1.8 s       2.0-2.4 s
=====================================================  ======  ==========  =========

(3.0-3.3 s for the default whenever the machine was quiet.)  With the DC on
the same two cores, more connections or partitions did not help: each
uSNCreated range is a scan of every user on Samba (no range index), ~0.3-0.5 s
of DC CPU per partition, and the cores are already busy.  Against a DC on its
own machine the overlap, and more partitions, are worth more.

How:

* the read connection (already bound, reused) reads highestCommittedUSN and
  the domain SID first, so a dead reused socket still fails before anything
  else and the caller's reconnect-and-retry applies unchanged;
* the work is a queue of tasks: the user search split into `partitions`
  disjoint uSNCreated ranges (``usn_partitions``: every user in exactly one,
  checked on the real filters in tests/adapters/directory/test_fullread.py
  and on a DC in test_ldap.py), then the group search;
* ranges are even over [0, highestCommittedUSN] on the first read; each read
  also fetches the users' uSNCreated and returns cut points that split them
  evenly (``learned_cuts``), which the next read of the same database uses:
  users are rarely spread evenly over USNs (bulk imports, migrations), and
  a lopsided split is no split at all when the DC has cores to spare;
* `connections` workers take tasks until the queue is empty: the read
  connection, plus fresh connections to *the same DC* (same URL, and the
  same invocationId, checked: a load-balanced name could land elsewhere,
  whose USNs and image would not match).  An extra connection that cannot
  be opened is not a failure: the others take its share;
* workers only fetch; the calling thread parses entries and calls
  `progress`, so parsing state and the caller's callback stay single-threaded.
  With one connection there is no thread at all: each page is handled before
  the next is asked for, exactly as the sequential read did;
* all as one: the first failure of any worker cancels the rest (they stop
  between requests; one inside a request finishes it or times out), every
  thread is joined, extra connections are closed, and the failure is raised.
  No image, nothing partial.

Progress keeps the sequential read's shape: users first, then groups, one
call per `page_size` entries seen (cumulative) and a last call with the
total; group counts that arrive while users are still being read are
reported after them.  With plain searches a "page" is that many entries of
a larger answer, reported as they are parsed.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from userseg.adapters.directory.entries import USER_ATTRIBUTES, lower_keys
from userseg.adapters.directory.reader import (
    Entry,
    Reader,
    group_filter,
    group_parser,
    parse_entry,
    user_filter,
    user_parser,
)
from userseg.directory.model import (
    DirectoryError,
    DirectoryGroup,
    DirectoryImage,
    DirectoryUser,
    Progress,
    SyncCursor,
)

log = logging.getLogger("userseg.directory")

CREATED = "uSNCreated"
Opener = Callable[[], Reader]  # binds a fresh connection to the read connection's DC


def even_cuts(highest_usn: int, parts: int) -> list[int]:
    """Cut points that split [0, highest_usn] into `parts` ranges of equal width (fewer if tiny)."""
    parts = max(1, min(parts, highest_usn))
    return [highest_usn * k // parts for k in range(1, parts)]


def quantile_cuts(values: Sequence[int], parts: int) -> list[int]:
    """Cut points that split `values` (the users' uSNCreated) into `parts` equal shares."""
    ordered = sorted(values)
    if parts <= 1 or len(ordered) < parts:
        return []
    cuts = {ordered[len(ordered) * k // parts - 1] for k in range(1, parts)}
    return sorted(cuts)


def usn_partitions(cuts: Sequence[int]) -> list[str]:
    """Filter clauses that put every object in exactly one uSNCreated range, split at `cuts`.

    For strictly increasing cut points c1 < c2 < ... the clauses are
    ``v <= c1``, ``c1 < v <= c2``, ..., ``v > c_last``: for any integer v
    exactly one holds (checked against the real filters, with an RFC 4515
    evaluator, in tests/adapters/directory/test_fullread.py, and on a real DC
    in test_ldap.py).  The last range is open-ended, so an object created
    during the read is not lost; the first also takes objects *without* a
    readable uSNCreated (``(!(uSNCreated=*))``: a comparison with a missing
    attribute is never true, so they would otherwise be in none).  uSNCreated
    is single-valued and system-owned; users are keyed by GUID anyway, so even
    a duplicate could never be counted twice in the image.
    """
    cuts = sorted(set(cuts))
    if not cuts:
        return [""]
    clauses = [f"(|(!(uSNCreated=*))(uSNCreated<={cuts[0]:d}))"]
    for low, high in itertools.pairwise(cuts):
        clauses.append(f"(&(uSNCreated>={low + 1:d})(uSNCreated<={high:d}))")
    clauses.append(f"(uSNCreated>={cuts[-1] + 1:d})")
    return clauses


@dataclass(frozen=True)
class Task:
    kind: str  # "users" or "groups"
    base: str
    clause: str = ""  # the partition's extra filter


@dataclass
class _Progress:
    """Cumulative counts reported in steps of `step`, users before groups."""

    report: Progress | None
    step: int
    seen: dict[str, int] = field(default_factory=lambda: {"users": 0, "groups": 0})
    reported: dict[str, int | None] = field(default_factory=lambda: {"users": None, "groups": None})
    users_done: bool = False

    def add(self, kind: str, count: int) -> None:
        self.seen[kind] += count
        if kind == "users" or self.users_done:
            self._steps(kind)

    def _steps(self, kind: str) -> None:
        if self.report is None:
            return
        done = self.reported[kind] or 0
        while self.seen[kind] >= done + self.step:
            done += self.step
            self.reported[kind] = done
            self.report(kind, done)

    def finish(self, kind: str) -> None:
        """All of `kind` seen: report the total (once), and after the users what groups had."""
        self._steps(kind)
        if self.report is not None and self.reported[kind] != self.seen[kind]:
            self.reported[kind] = self.seen[kind]
            self.report(kind, self.seen[kind])
        if kind == "users":
            self.users_done = True
            self._steps("groups")


class _Image:
    """What the calling thread builds from the workers' events (parsing, progress)."""

    def __init__(self, tasks: list[Task], progress: _Progress, learn: bool) -> None:
        self.users: dict[str, DirectoryUser] = {}
        self.created: list[int] | None = [] if learn else None  # the users' uSNCreated
        self.open = {kind: sum(1 for t in tasks if t.kind == kind) for kind in ("users", "groups")}
        self.pending_groups: list[tuple[Entry, list[bytes]]] = []
        self.progress = progress

    def _learn(self, entry: Entry) -> None:
        raw = entry["raw_attributes"]
        values = raw.get(CREATED) or lower_keys(raw).get(CREATED.lower())
        if values and self.created is not None and values[0].isdigit():  # else only a worse split next time
            self.created.append(int(values[0]))

    @property
    def complete(self) -> bool:
        return not (self.open["users"] or self.open["groups"])

    def handle(self, event: str, task: Task | None, payload: Any) -> None:
        if event == "users":
            for entry in payload:
                user = parse_entry(entry, "user", user_parser)
                if user is not None:
                    self.users[user.guid] = user
                    if self.created is not None:
                        self._learn(entry)
            self.progress.add("users", len(payload))
        elif event == "groups-seen":
            self.progress.add("groups", payload)
        elif event == "groups":
            self.pending_groups.extend(payload)
        elif event == "done" and task is not None:
            self.open[task.kind] -= 1
            if task.kind == "users" and not self.open["users"]:
                self.progress.finish("users")

    def groups(self) -> dict[str, DirectoryGroup]:
        self.progress.finish("groups")
        groups: dict[str, DirectoryGroup] = {}
        for entry, values in self.pending_groups:
            group = parse_entry(entry, "group", group_parser(values))
            if group is not None:
                groups[group.guid] = group
        return groups


class FullRead:
    """One full read (see the module docstring); `run()` once."""

    def __init__(
        self,
        reader: Reader,
        open_extra: Opener | None,
        *,
        connections: int,
        partitions: int,
        cuts: Sequence[int] | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.reader = reader
        self.open_extra = open_extra
        self.connections = max(1, connections) if open_extra is not None else 1
        self.partitions = max(1, partitions)
        self.cuts = list(cuts or ())
        self.learned_cuts: list[int] = []  # after run(): where to split the next read on this DC
        self.progress = _Progress(progress, max(1, reader.settings.page_size))
        self._tasks: queue.SimpleQueue[Task] = queue.SimpleQueue()
        self._events: queue.SimpleQueue[tuple[str, Task | None, Any]] = queue.SimpleQueue()
        self._cancel = threading.Event()
        self._emit: Callable[[str, Task | None, Any], None] = lambda *event: self._events.put(event)

    # -- the calling thread ------------------------------------------------------------------------

    def run(self) -> tuple[DirectoryImage, SyncCursor]:
        reader = self.reader
        usn = reader.highest_usn()
        domain_sid = reader.domain_sid()
        tasks = self._plan(usn)
        for task in tasks:
            self._tasks.put(task)
        image = _Image(tasks, self.progress, learn=self.partitions > 1)
        extras = min(self.connections, len(tasks)) - 1
        if extras == 0:
            # One connection: no thread, every page is handled before the next is asked for,
            # exactly as the sequential read did (a progress callback sees the read between pages).
            self._emit = image.handle
            self._work(None)
        else:
            self._run_workers(image, extras)
        if not image.complete:
            raise DirectoryError(f"{reader.bound.url}: full read ended with unread partitions")
        users, groups = image.users, image.groups()
        if image.created is not None:
            self.learned_cuts = quantile_cuts(image.created, self.partitions)
        return DirectoryImage(domain_sid=domain_sid, users=users, groups=groups), reader.cursor(usn)

    def _plan(self, usn: int) -> list[Task]:
        """Users first (they are most of the work), split; groups last, as one task per base."""
        scope = self.reader.scope
        cuts = self.cuts if len(self.cuts) == self.partitions - 1 else even_cuts(usn, self.partitions)
        clauses = usn_partitions(cuts)
        tasks = [Task("users", base, clause) for clause in clauses for base in scope.user_bases]
        tasks += [Task("groups", base) for base in scope.group_bases]
        return tasks

    def _run_workers(self, image: _Image, extras: int) -> None:
        """The read connection and `extras` more, each on a thread; events handled here, in order."""
        openers = [None] + [self.open_extra] * extras
        workers = [
            threading.Thread(target=self._guarded, args=(opener,), name=f"ldap-read-{i}", daemon=True)
            for i, opener in enumerate(openers)
        ]
        for worker in workers:
            worker.start()
        alive = len(workers)
        try:
            while alive and not image.complete:
                event, task, payload = self._events.get()
                if event == "exit":
                    alive -= 1
                elif event == "failed":
                    raise payload
                else:
                    image.handle(event, task, payload)
        finally:
            self._cancel.set()  # after success a no-op: the task queue is empty
            for worker in workers:
                worker.join()

    # -- workers -------------------------------------------------------------------------------------

    def _guarded(self, opener: Opener | None) -> None:
        """A worker thread: any failure ends the whole read, raised in the calling thread."""
        try:
            self._work(opener)
        except BaseException as exc:
            self._cancel.set()
            self._events.put(("failed", None, exc))
        finally:
            self._events.put(("exit", None, None))

    def _work(self, opener: Opener | None) -> None:
        """Take tasks until none are left; `opener` None: the caller's connection."""
        if opener is None:
            reader = self.reader
        else:
            opened = self._open(opener)
            if opened is None:
                return
            reader = opened
        try:
            while not self._cancel.is_set():
                try:
                    task = self._tasks.get_nowait()
                except queue.Empty:
                    return
                self._run_task(reader, task)
                if self._cancel.is_set():
                    return  # the task may be incomplete; the read is failing anyway
                self._emit("done", task, None)
        finally:
            if reader is not self.reader:
                reader.bound.close()

    def _open(self, opener: Opener) -> Reader | None:
        """A reader on an extra connection to the read connection's DC, or None (others do its share)."""
        main = self.reader.bound
        try:
            reader = opener()
        except DirectoryError as exc:
            log.info("full read continues on fewer connections: %s", exc)
            return None
        bound = reader.bound
        if bound.url != main.url or bound.root.invocation_id != main.root.invocation_id:
            log.warning(
                "full read: extra connection reached %s (invocationId %s), not %s (%s): not used",
                bound.url,
                bound.root.invocation_id,
                main.url,
                main.root.invocation_id,
            )
            bound.close()
            return None
        return reader

    def _run_task(self, reader: Reader, task: Task) -> None:
        if task.kind == "users":
            flt = user_filter(reader.settings, task.clause)
            attributes = (*USER_ATTRIBUTES, CREATED) if self.partitions > 1 else USER_ATTRIBUTES
            for page in self._pages(reader, task.base, flt, attributes):
                self._emit("users", task, page)
            return
        pending: list[tuple[Entry, list[bytes], int | None]] = []
        flt = group_filter(reader.settings, task.clause)
        for page in self._pages(reader, task.base, flt, reader.group_attributes()):
            pending.extend((entry, *reader.members(entry)) for entry in page)
            self._emit("groups-seen", task, len(page))
        complete: list[tuple[Entry, list[bytes]]] = []
        for entry, values, follow in pending:
            if self._cancel.is_set():
                return
            if follow is not None:  # after the search ended, never interleaved with its pages
                values.extend(reader.rest_of_members(entry["dn"], follow))
            complete.append((entry, values))
        self._emit("groups", task, complete)

    def _pages(self, reader: Reader, base: str, flt: str, attributes: Iterable[str]) -> Iterator[list[Entry]]:
        for page in reader.paged(base, flt, attributes):
            yield page
            if self._cancel.is_set():
                return  # the paged search is abandoned: its connection is dropped after the read
