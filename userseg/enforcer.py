"""The enforce loop: keep the kernel in step with the store, and run the services feeding it.

It reconciles on every store change (the generation counter moves), on a
resync timer that repairs drift made behind our back (a `nft flush ruleset`
included), and - when AD sync is configured - runs the directory service,
whose commits wake the loop at once rather than at the next poll.  With
[ingest] configured it also runs the login sources: their mappings reach the
kernel through the reconciler's fast path, and only a login that needs a new
class asks this loop for a full sync.

`userseg serve` (userseg/service/serve.py) drives it in steps - start-up,
loop, reload, stop - and watches it; `userseg enforce` and the benchmarks run
it with `run()`.  Kept free of signals, sd_notify and HTTP so tests can run it
in-process and hook its events.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from userseg.core.compile import CompileError
from userseg.directory.service import DirectoryService
from userseg.directory.sync import SyncOutcome
from userseg.events.pipeline import KernelMappings
from userseg.events.service import IngestService
from userseg.ports import FirewallError
from userseg.reconciler import SyncReport
from userseg.runtime import Runtime, reconcile_lock
from userseg.store import StoreError

log = logging.getLogger("userseg.enforce")

# Errors a reconcile may meet and survive (retried every 2 s at most); the store
# wraps every database error, "database is locked" included, in StoreError.
_RETRYABLE = (FirewallError, CompileError, StoreError, OSError)


class Enforcer:
    def __init__(
        self,
        rt: Runtime,
        *,
        poll: float = 0.2,
        directory: bool = True,
        ingest: bool = True,
        say: Callable[[str], None] = print,
        on_reconciled: Callable[[SyncReport], None] | None = None,
        on_cycle: Callable[[], None] | None = None,
        kernel: Callable[[KernelMappings], KernelMappings] | None = None,
        before_sources: Callable[[], None] | None = None,
    ) -> None:
        self.rt = rt
        self.poll = poll
        self.say = say
        self.on_reconciled = on_reconciled
        self.on_cycle = on_cycle
        self._wrap_kernel = kernel
        self._before_sources = before_sources  # once: the ingest book is loaded, no source runs yet
        self.wake = threading.Event()
        self.stop_event = threading.Event()
        self.service: DirectoryService | None = None
        self.ingest: IngestService | None = None
        self.with_directory = directory
        self.with_ingest = ingest
        self._full_wanted = threading.Event()
        self.hold_reason: str | None = None  # set: leave the kernel as it is (see serve's recovery)
        self.last_report: SyncReport | None = None
        self.last_error: str | None = None
        self.reconciled = 0  # successful reconciles (status, tests)
        self.busy_since: float | None = None  # monotonic start of the reconcile in progress
        self._seen = -1
        self._next_full = 0.0

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()

    def request_full_sync(self) -> None:
        """A login needs a class the kernel does not have yet (or a fast-path write failed)."""
        self._full_wanted.set()
        self.wake.set()

    def reconcile(self) -> SyncReport:
        # The snapshot is read under the reconciler's lock: a login applied by the fast
        # path in between would otherwise be undone by a sync from an older snapshot.
        with reconcile_lock(self.rt.config.netns), self.rt.reconciler.lock:
            self.busy_since = time.monotonic()  # locks held: from here on it is work, not waiting
            try:
                report = self.rt.reconciler.full_sync(self.rt.snapshot())
            finally:
                self.busy_since = None
        self.last_report, self.last_error = report, None
        self.reconciled += 1
        if self.on_reconciled is not None:
            self.on_reconciled(report)
        return report

    # ------------------------------------------------------------------ lifecycle

    def start_directory(self) -> None:
        if self.with_directory and self.rt.config.directory is not None and self.service is None:
            self.service = self._start_directory()

    def start_ingest(self) -> None:
        if self.with_ingest and self.rt.config.ingest is not None and self.ingest is None:
            self.ingest = self._start_ingest()

    def stop_services(self) -> None:
        """Stop the login sources (their queue is committed first) and the directory service."""
        ingest, self.ingest = self.ingest, None
        service, self.service = self.service, None
        if ingest is not None:
            ingest.stop()
        if service is not None:
            service.stop()

    def run(self, *, once: bool = False) -> None:
        """Start everything, then loop until stop() (what `userseg enforce` runs)."""
        self.start_directory()
        try:
            self.start_ingest()
            while not self.stop_event.is_set():
                self.step()
                if once:
                    break
                self.wake.wait(self.poll)
        finally:
            self.stop_services()

    def step(self) -> None:
        """One turn of the loop: reconcile if the store moved, the timer ran out or a login asked."""
        self.wake.clear()
        if self.on_cycle is not None:
            self.on_cycle()
        if self.hold_reason is not None:
            return
        gen = self.rt.store.generation()
        now = time.monotonic()
        wanted = self._full_wanted.is_set()
        if gen != self._seen or now >= self._next_full or wanted:
            self._full_wanted.clear()
            try:
                self.reconcile()
                if self._seen == -1:
                    self.say("userseg: enforcing; kernel in step with the desired state")
                elif gen != self._seen and self.ingest is not None:
                    self.ingest.pipeline.reload()  # someone else changed mappings
                self._seen, self._next_full = gen, now + self.rt.config.resync_interval
            except _RETRYABLE as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("reconcile failed, will retry: %s", exc)
                self._next_full = now + min(self.rt.config.resync_interval, 2.0)

    # ------------------------------------------------------------------ building

    def _start_ingest(self) -> IngestService:
        settings = self.rt.config.ingest
        assert settings is not None
        kernel: KernelMappings = self.rt.reconciler
        if self._wrap_kernel is not None:
            kernel = self._wrap_kernel(kernel)
        service = IngestService(
            settings,
            self.rt.store,
            kernel,
            self.rt.clock,
            netns=self.rt.config.netns,
            on_full_sync_needed=self.request_full_sync,
            # Safe to reuse: anything written since that read bumped the generation, and the
            # next step reloads the book (pipeline.reload) when the generation moved.
            mappings=self.rt.take_first_mappings(),
        )
        if self._before_sources is not None:
            hook, self._before_sources = self._before_sources, None
            hook()
        service.start()
        names = ", ".join(f"{s.name} ({s.kind.value})" for s in settings.sources) or "none"
        where = (
            f"; push API on {service.api_address[0]}:{service.api_address[1]}" if service.api_address else ""
        )
        self.say(f"userseg: login sources started: {names}{where}")
        return service

    def _start_directory(self) -> DirectoryService:
        settings = self.rt.config.directory
        assert settings is not None
        sync = self.rt.directory_sync(on_commit=lambda _o: self.wake.set())
        service = DirectoryService(sync, sync.source, settings, on_outcome=self._report)
        service.start()
        return service

    def _report(self, o: SyncOutcome) -> None:
        if not o.ok:
            return  # DirectorySync logged it, with the reason
        if o.kind == "full" or o.changed or o.lost:
            lost = f"; lost accounts: {', '.join(o.lost)}" if o.lost else ""
            self.say(
                f"userseg: directory {o.kind} sync from {o.server}: {o.users} users, {o.groups} groups, "
                f"{'changed' if o.changed else 'no change'} ({o.seconds * 1000:.0f} ms){lost}"
            )
