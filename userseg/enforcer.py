"""The long-running loop behind `userseg enforce`: keep the kernel in step with the store.

It reconciles on every store change (the generation counter moves), on a
resync timer that repairs drift made behind our back, and - when AD sync is
configured - runs the directory service, whose commits wake the loop at once
rather than at the next poll.  With [ingest] configured it also runs the login
sources: their mappings reach the kernel through the reconciler's fast path,
and only a login that needs a new class asks this loop for a full sync.
Kept out of the CLI module so the benchmarks and tests can run it in-process
and hook its events.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from userseg.core.compile import CompileError
from userseg.directory.service import DirectoryService
from userseg.directory.sync import SyncOutcome
from userseg.events.service import IngestService
from userseg.ports import FirewallError
from userseg.reconciler import SyncReport
from userseg.runtime import Runtime, reconcile_lock
from userseg.store import StoreError

log = logging.getLogger("userseg.enforce")


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
    ) -> None:
        self.rt = rt
        self.poll = poll
        self.say = say
        self.on_reconciled = on_reconciled
        self.wake = threading.Event()
        self.stop_event = threading.Event()
        self.service: DirectoryService | None = None
        self.ingest: IngestService | None = None
        self._with_directory = directory and rt.config.directory is not None
        self._with_ingest = ingest and rt.config.ingest is not None
        self._full_wanted = threading.Event()

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
            report = self.rt.reconciler.full_sync(self.rt.snapshot())
        if self.on_reconciled is not None:
            self.on_reconciled(report)
        return report

    def run(self, *, once: bool = False) -> None:
        if self._with_directory:
            self.service = self._start_directory()
        interval = self.rt.config.resync_interval
        seen = -1
        next_full = 0.0
        try:
            if self._with_ingest:
                self.ingest = self._start_ingest()
            while not self.stop_event.is_set():
                self.wake.clear()
                gen = self.rt.store.generation()
                now = time.monotonic()
                wanted = self._full_wanted.is_set()
                if gen != seen or now >= next_full or wanted:
                    self._full_wanted.clear()
                    try:
                        self.reconcile()
                        if seen == -1:
                            self.say("userseg: enforcing; kernel in step with the desired state")
                        elif gen != seen and self.ingest is not None:
                            self.ingest.pipeline.reload()  # someone else changed mappings
                        seen, next_full = gen, now + interval
                    except (FirewallError, CompileError, StoreError) as exc:
                        log.warning("reconcile failed, will retry: %s", exc)
                        next_full = now + min(interval, 2.0)
                if once:
                    break
                self.wake.wait(self.poll)
        finally:
            if self.ingest is not None:
                self.ingest.stop()
            if self.service is not None:
                self.service.stop()

    def _start_ingest(self) -> IngestService:
        settings = self.rt.config.ingest
        assert settings is not None
        service = IngestService(
            settings,
            self.rt.store,
            self.rt.reconciler,
            self.rt.clock,
            netns=self.rt.config.netns,
            on_full_sync_needed=self.request_full_sync,
        )
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
