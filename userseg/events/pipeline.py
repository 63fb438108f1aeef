"""The ingest pipeline: sources -> bounded queue -> mapping book -> store + kernel.

One worker thread owns the book (no locks on the hot path) and handles events
in batches: everything queued when it wakes, up to `batch_max`.  For each batch
it (1) lets the book decide, (2) commits mappings, shared marks, sightings and
the sources' read positions in ONE store transaction, then (3) writes the
kernel changes as ONE element transaction through the reconciler's fast path.

Store before kernel: a full sync that starts after the commit sees the
mapping, and the enforcer reads its snapshot under the reconciler's lock, so
a fast-path write can never be undone by a full sync working from an older
snapshot.  A crash between (2) and (3) loses nothing: the restart's full sync
programs what the store holds.  Positions are committed with the mappings
derived from the lines before them, so a restart neither replays nor skips.

Back-pressure: a full queue blocks sources that can wait (a file, TCP) and
drops, counted, for those that cannot (UDP; HTTP answers 503).  A store that
cannot take a commit for a while (another writer holds the SQLite lock past
the busy timeout, PostgreSQL restarting) makes the worker retry that same
batch with backoff: nothing is lost, the queue fills, and back-pressure
reaches the sources.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from userseg.core.ingest import Ignored, MappingBook, MarkShared, Remove, Unshare, Upsert
from userseg.core.ingest_rules import IngestRules
from userseg.events.batchqueue import BatchQueue
from userseg.events.model import EventKind, LoginEvent, ParseResult, Rejected, Skipped
from userseg.model import IPAddress
from userseg.model import Mapping as StoredMapping
from userseg.ports import Clock
from userseg.store import Store, StoreError, is_transient
from userseg.store.ingest import IngestBatch, Sighting

log = logging.getLogger("userseg.ingest")

# Categories decided without state: such an event says nothing about who uses the IP.
STATELESS_IGNORES = frozenset(
    {"failure", "no_user", "ignored_user", "logon_type", "network", "no_address", "stale"}
)
# A refresh that does not move the expiry is persisted at most this often per IP: the
# store's last_seen may lag by this much, and a login storm costs memory, not writes.
STORE_REFRESH = timedelta(seconds=10)
SIGHTINGS_FLUSH = 1.0  # seconds between writes of account sightings (small, even writes)
SIGHTING_REWRITE = 60.0  # a known (account, IP) pair is rewritten at most this often


def load_book(
    store: Store, rules: IngestRules, now: datetime, mappings: Iterable[StoredMapping] | None = None
) -> MappingBook:
    """The mapping book as the store holds it at `now`, for a pipeline about to start.

    `mappings`: the active mappings the daemon has just read for its first reconcile,
    so that at start-up the table is read and decoded once and the book and the
    snapshot share their Mapping objects; None reads them here (unsorted: order is
    irrelevant to the book).  The cyclic collector is paused meanwhile: at 250k
    mappings the book builds ~750k small acyclic objects, and the collections they
    trigger would walk the whole heap again and again (1.4 s instead of 0.4 s).
    One full collection still follows later unless the daemon gc.freeze()s its
    start-up state (bench/README.md, "The running service").
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        active = store.active_mappings(now) if mappings is None else mappings
        return MappingBook(rules, active, store.shared_marks())
    finally:
        if was_enabled:
            gc.enable()


class KernelMappings(Protocol):
    """The reconciler's fast path (Reconciler.set_mappings)."""

    def set_mappings(self, changes: Iterable[tuple[IPAddress, tuple[str, datetime] | None]]) -> bool: ...


@dataclass(frozen=True)
class _Reload:
    done: threading.Event


@dataclass(frozen=True)
class _Flush:
    done: threading.Event


_Item = tuple[str, ParseResult, str | None] | _Reload | _Flush


class IngestPipeline:
    """Implements events.model.Sink; start() it, hand it to the sources, stop() it last."""

    def __init__(
        self,
        store: Store,
        book: MappingBook,
        kernel: KernelMappings | None,
        clock: Clock,
        *,
        queue_size: int = 100_000,
        batch_max: int = 2_000,
        housekeeping_interval: float = 1.0,
        on_full_sync_needed: Callable[[], None] = lambda: None,
        counters: Mapping[str, Mapping[str, int]] | None = None,
    ) -> None:
        """`counters`: the totals persisted by the previous run, so they keep counting."""
        self.store = store
        self.book = book
        self.kernel = kernel
        self.clock = clock
        self.batch_max = batch_max
        self.housekeeping_interval = housekeeping_interval
        self.on_full_sync_needed = on_full_sync_needed
        self._queue: BatchQueue[_Item | None] = BatchQueue(queue_size)
        self._counters: defaultdict[str, defaultdict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._counters_lock = threading.Lock()
        for source, values in (counters or {}).items():
            self._counters[source].update(values)
        self._thread: threading.Thread | None = None
        self._reject_log: dict[str, tuple[float, int]] = {}
        self.processed = 0  # items handled (for tests and metrics)
        self.batches = 0
        self.last_error: str | None = None
        self._last_housekeeping = 0.0
        self._saved_counters: dict[str, dict[str, int]] = {}
        self._providers: list[Callable[[], Mapping[str, Mapping[str, int]]]] = []
        # last_seen as last written to the store, per IP (the book starts from the store)
        self._persisted: dict[IPAddress, datetime] = {a: m.last_seen for a, m in book.mappings.items()}
        # (account, ip) -> [first, last, unwritten events, monotonic time written or None]
        self._sightings: dict[tuple[str, IPAddress], list[Any]] = {}
        self._sightings_flushed = time.monotonic()
        self.last_cycle = time.monotonic()  # the worker's heartbeat (service health)
        self.commit_retries = 0
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ Sink

    def emit(
        self, source: str, result: ParseResult, position: str | None = None, *, block: bool = True
    ) -> bool:
        if self._queue.put((source, result, position), block=block):
            return True
        with self._counters_lock:
            self._counters[source]["dropped"] += 1
        return False

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="userseg-ingest", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Handle everything already queued, commit it, then stop."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(None, force=True)
        thread.join(timeout)
        if thread.is_alive():
            self._stopping.set()  # a commit retry loop gives up now
            thread.join(1.0)
        if thread.is_alive():
            log.error("ingest worker did not stop within %.0f s; %d items left", timeout, self._queue.qsize())

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued before this call is committed and applied."""
        done = threading.Event()
        self._queue.put(_Flush(done), force=True)
        return done.wait(timeout)

    def reload(self, timeout: float | None = None) -> bool:
        """Re-read the mappings from the store (someone else changed them: the CLI, a
        directory commit that removed a disabled account's mappings)."""
        done = threading.Event()
        self._queue.put(_Reload(done), force=True)
        return done.wait(timeout) if timeout is not None else True

    def add_stats(self, provider: Callable[[], Mapping[str, Mapping[str, int]]]) -> None:
        """Counters a source keeps itself (a listener's refused senders, TLS failures...):
        merged into the persisted counters as `<name>`, so `status` shows them too."""
        self._providers.append(provider)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def counters(self) -> dict[str, dict[str, int]]:
        with self._counters_lock:
            return {s: dict(c) for s, c in self._counters.items()}

    # ------------------------------------------------------------------ worker

    def _run(self) -> None:
        stopping = False
        pending: list[_Item | None] = []
        while not stopping:
            self.last_cycle = time.monotonic()
            if not pending:
                pending = self._queue.get_batch(self.batch_max, self.housekeeping_interval)
            items: list[tuple[str, ParseResult, str | None]] = []
            controls: list[_Reload | _Flush] = []
            idle = not pending
            rest = 0
            for rest, item in enumerate(pending, 1):  # noqa: B007 - `rest` is used after the loop
                if item is None:
                    stopping = True
                elif isinstance(item, _Reload | _Flush):
                    controls.append(item)
                    if isinstance(item, _Reload):
                        break  # events after a reload must see the reloaded book
                else:
                    items.append(item)
            pending = pending[rest:]
            try:
                self._handle(items, final=stopping or bool(controls) or idle)
                self._housekeeping(force=bool(controls))
                for c in controls:
                    if isinstance(c, _Reload):
                        self._reload()
            except Exception as exc:  # never let one bad batch kill ingestion
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("ingest batch of %d items failed", len(items))
            for c in controls:
                c.done.set()
        for c in [i for i in pending if isinstance(i, _Reload | _Flush)]:
            c.done.set()

    def _handle(self, items: list[tuple[str, ParseResult, str | None]], *, final: bool = False) -> None:
        """`final`: also write the aggregated sightings (stop, flush) whatever their age."""
        batch = IngestBatch()
        now = self.clock.now()
        kernel: dict[IPAddress, tuple[str, datetime] | None] = {}
        touched: set[str] = set()
        with self._counters_lock:
            for source, result, position in items:
                touched.add(source)
                c = self._counters[source]
                c["received"] += 1
                if position is not None:
                    batch.positions[source] = position
                if isinstance(result, LoginEvent):
                    self._event(result, now, batch, kernel, c)
                elif isinstance(result, Rejected):
                    c["rejected"] += 1
                    self._log_reject(source, result.reason)
                elif isinstance(result, Skipped):
                    c["skipped"] += 1
            # On a flush (or idle tick) every source's counters, so drops of a source whose
            # events never reached a batch are persisted too.
            if final:
                self._merge_provided()
            for source in set(self._counters) if final else touched:
                values = dict(self._counters[source])
                if values != self._saved_counters.get(source):
                    batch.counters[source] = self._saved_counters[source] = values
        mono = time.monotonic()
        if self._sightings and (final or mono - self._sightings_flushed >= SIGHTINGS_FLUSH):
            batch.sightings = self._due_sightings(mono, final)
            self._sightings_flushed = mono
        self._commit(batch, now)
        self.processed += len(items)
        self.batches += 1
        self._apply_kernel(kernel)

    def _event(
        self,
        ev: LoginEvent,
        now: datetime,
        batch: IngestBatch,
        kernel: dict[IPAddress, tuple[str, datetime] | None],
        c: defaultdict[str, int],
    ) -> None:
        c["events"] += 1
        last = batch.last_event_at.get(ev.source)
        if last is None or ev.time > last:
            batch.last_event_at[ev.source] = ev.time
        seen = ev.kind is EventKind.LOGON
        for effect in self.book.apply(ev, now):
            if isinstance(effect, Upsert):
                m = effect.mapping
                persisted = self._persisted.get(m.ip)
                if effect.kernel or not effect.refresh or persisted is None:
                    batch.upsert(m)
                    self._persisted[m.ip] = m.last_seen
                elif m.last_seen - persisted >= STORE_REFRESH:
                    batch.touch(m)
                    self._persisted[m.ip] = m.last_seen
                if effect.kernel:
                    kernel[m.ip] = (m.user, m.expires_at)
                if effect.duplicate:
                    c["duplicate"] += 1
                else:
                    c["refreshed" if effect.refresh else "replaced" if effect.replaced else "mapped"] += 1
            elif isinstance(effect, Remove):
                batch.remove(effect.mapping)
                self._persisted.pop(effect.mapping.ip, None)
                kernel[effect.mapping.ip] = None
                c[f"removed_{effect.reason}"] += 1
            elif isinstance(effect, MarkShared):
                batch.mark_shared(effect.mark)
                c["shared"] += 1
            elif isinstance(effect, Unshare):
                batch.unshare(effect.ip)
            elif isinstance(effect, Ignored):
                c["ignored"] += 1
                c[f"ignored_{effect.category}"] += 1
                if effect.category in STATELESS_IGNORES:
                    seen = False
        if seen and ev.ip is not None:
            key = (ev.user.lower(), ev.ip)
            seen_before = self._sightings.get(key)
            if seen_before is None:
                self._sightings[key] = [ev.time, ev.time, 1, None]
            else:
                seen_before[0] = min(seen_before[0], ev.time)
                seen_before[1] = max(seen_before[1], ev.time)
                seen_before[2] += 1

    def _commit(self, batch: IngestBatch, now: datetime) -> None:
        """Commit, retrying a store that is busy or unreachable: the book already holds this
        batch's decisions, so dropping the batch would lose them for good."""
        delay = 0.05
        while True:
            try:
                self.store.commit_ingest(batch, now)
                return
            except StoreError as exc:
                if not is_transient(exc) or self._stopping.is_set():
                    raise
                self.commit_retries += 1
                self.last_error = f"store busy, retrying: {exc}"
                if self.commit_retries == 1 or delay >= 1.0:
                    log.warning("ingest commit failed, retrying in %.1f s (nothing is lost): %s", delay, exc)
                self._stopping.wait(delay)
                self.last_cycle = time.monotonic()  # retrying is progress, not a hang
                delay = min(delay * 2, 2.0)

    def _due_sightings(self, mono: float, final: bool) -> dict[tuple[str, str], Sighting]:
        """New pairs at once, known ones at most every SIGHTING_REWRITE s: a steady stream of
        refreshes must not turn into a big periodic write that stalls the login path."""
        due: dict[tuple[str, str], Sighting] = {}
        idle: list[tuple[str, IPAddress]] = []
        for key, entry in self._sightings.items():
            first, last, unwritten, written = entry
            if unwritten and (final or written is None or mono - written >= SIGHTING_REWRITE):
                user, addr = key
                due[(user, str(addr))] = Sighting(user, str(addr), first, last, unwritten)
                entry[2], entry[3] = 0, mono
            elif not unwritten and written is not None and mono - written > 3600:
                idle.append(key)
        for key in idle:
            del self._sightings[key]
        return due

    def _merge_provided(self) -> None:
        for provider in self._providers:
            try:
                provided = provider()
            except Exception:  # a stats call must never cost a batch
                log.exception("reading a source's own counters failed")
                continue
            for source, values in provided.items():
                self._counters[source].update(values)

    def _apply_kernel(self, changes: dict[IPAddress, tuple[str, datetime] | None]) -> None:
        if not changes or self.kernel is None:
            return
        try:
            fast = self.kernel.set_mappings(changes.items())
        except Exception as exc:  # FirewallError: the reconciler is dirty now; a full sync repairs
            log.warning("fast-path apply of %d mapping change(s) failed: %s", len(changes), exc)
            fast = False
        if not fast:
            self.on_full_sync_needed()

    def _housekeeping(self, *, force: bool = False) -> None:
        mono = time.monotonic()
        if not force and mono - self._last_housekeeping < self.housekeeping_interval:
            return
        self._last_housekeeping = mono
        now = self.clock.now()
        batch = IngestBatch()
        forget: dict[IPAddress, tuple[str, datetime] | None] = {}
        for effect in self.book.expire(now):
            if isinstance(effect, Remove):
                batch.remove(effect.mapping)
                self._persisted.pop(effect.mapping.ip, None)
                forget[effect.mapping.ip] = None  # the kernel timed it out; the reconciler forgets it
            else:
                batch.unshare(effect.ip)
        self.store.commit_ingest(batch, now)
        self._apply_kernel(forget)

    def _reload(self) -> None:
        now = self.clock.now()
        stored = self.store.active_mappings(now)
        self.book.resync(stored, self.store.shared_marks())
        self._persisted = {m.ip: m.last_seen for m in stored}

    def _log_reject(self, source: str, reason: str) -> None:
        """First rejection of a source at once, then at most one summary per 10 s."""
        mono = time.monotonic()
        last, suppressed = self._reject_log.get(source, (0.0, 0))
        if mono - last >= 10.0:
            extra = f" ({suppressed} more since the last report)" if suppressed else ""
            log.warning("source %s: rejected input: %s%s", source, reason, extra)
            self._reject_log[source] = (mono, 0)
        else:
            self._reject_log[source] = (last, suppressed + 1)
