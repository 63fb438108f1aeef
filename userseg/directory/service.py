"""Keeps the store in step with AD: change notifications trigger, schedules are the safety net.

Three things can ask for a sync - an AD change notification, the incremental
timer (default 60 s) and the full-sync timer (default 1 h) - and exactly one
thread performs them, so requests that pile up while a sync runs collapse
into one follow-up instead of a queue (a bulk change in AD notifies once per
object).  APScheduler owns the timers (coalesce, one instance) and the
watcher thread owns the persistent search; both only post requests here.

After a failed sync the worker retries with backoff (1 s doubling to the
incremental interval), so a DC that comes back is noticed within seconds
even without notifications; the store keeps the last good state meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from userseg.directory.model import DirectorySettings, DirectorySource
from userseg.directory.sync import DirectorySync, SyncOutcome

log = logging.getLogger("userseg.directory")

RETRY_FIRST = 1.0


@dataclass
class _Requests:
    incremental: bool = False
    full: bool = False
    notified: set[str] = field(default_factory=set)  # DNs AD notified since the last sync
    changed: threading.Condition = field(default_factory=threading.Condition)


class DirectoryService:
    def __init__(
        self,
        sync: DirectorySync,
        source: DirectorySource,
        settings: DirectorySettings,
        *,
        on_outcome: Callable[[SyncOutcome], None] | None = None,
    ) -> None:
        self.sync = sync
        self.source = source
        self.settings = settings
        self.on_outcome = on_outcome
        self.notifications = 0  # change notifications received (status, tests)
        self.last_outcome: SyncOutcome | None = None
        self._req = _Requests()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._scheduler: object | None = None
        self._completed = 0
        self._done = threading.Condition()

    # --- requests -------------------------------------------------------------

    def request(self, *, full: bool = False) -> None:
        """Ask for a sync soon; cheap and safe from any thread."""
        with self._req.changed:
            if full:
                self._req.full = True
            else:
                self._req.incremental = True
            self._req.changed.notify()

    def _notified(self, dn: str) -> None:
        self.notifications += 1
        log.debug("AD change notification%s", f" for {dn}" if dn else " (watch (re)connected)")
        if not dn:
            self.request()  # (re)connected: changes made meanwhile were not notified
            return
        with self._req.changed:
            self._req.notified.add(dn)
            self._req.changed.notify()

    # --- lifecycle ------------------------------------------------------------

    def start(self, *, initial: bool = True) -> None:
        """Start the worker, the timers and (if enabled) the change-notification watch."""
        from apscheduler.schedulers.background import BackgroundScheduler

        worker = threading.Thread(target=self._work, name="directory-sync", daemon=True)
        self._threads.append(worker)
        worker.start()
        scheduler = BackgroundScheduler(
            daemon=True, job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30}
        )
        scheduler.add_job(
            self.request,
            "interval",
            seconds=self.settings.incremental_interval,
            id="directory-incremental",
            name="directory incremental sync (safety net)",
        )
        scheduler.add_job(
            lambda: self.request(full=True),
            "interval",
            seconds=self.settings.full_interval,
            id="directory-full",
            name="directory full sync",
        )
        scheduler.start()
        self._scheduler = scheduler
        if self.settings.notifications:
            watcher = threading.Thread(
                target=self.source.watch,
                args=(self._notified, self._stop),
                name="directory-watch",
                daemon=True,
            )
            self._threads.append(watcher)
            watcher.start()
        if initial:
            self.request()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._req.changed:
            self._req.changed.notify_all()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)  # type: ignore[attr-defined]
            self._scheduler = None
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()

    def wait_for_sync(self, after: int, timeout: float) -> bool:
        """Block until more than `after` syncs have completed (tests, `serve --once`)."""
        with self._done:
            return self._done.wait_for(lambda: self._completed > after, timeout)

    @property
    def completed(self) -> int:
        with self._done:
            return self._completed

    @property
    def pending(self) -> bool:
        """Whether a sync has been requested and not started yet (status, tests)."""
        with self._req.changed:
            return self._req.full or self._req.incremental or bool(self._req.notified)

    # --- the worker -----------------------------------------------------------

    def _work(self) -> None:
        retry_in: float | None = None
        owed_full = False  # a failed full sync is owed until one succeeds
        while not self._stop.is_set():
            with self._req.changed:
                # The stop flag is checked under the lock: stop() sets it before notifying under
                # the lock, so it is either seen here or its notify wakes this wait.
                if not (self._req.full or self._req.incremental or self._req.notified or self._stop.is_set()):
                    self._req.changed.wait(timeout=retry_in)
                if self._stop.is_set():
                    return
                full, incremental, notified = self._req.full, self._req.incremental, self._req.notified
                if not (full or incremental or notified):
                    if retry_in is None:
                        continue
                    incremental = True  # the retry timer fired
                self._req.full = self._req.incremental = False
                self._req.notified = set()
            full = full or owed_full
            try:
                if notified and not (full or incremental or retry_in is not None):
                    # Only notifications: read just those entries (no USN scan of the DC).
                    outcome = self.sync.run_notified(notified)
                else:
                    outcome = self.sync.run(full=full)
            except Exception as exc:  # an adapter or callback bug must not end syncing for good
                log.exception("directory sync raised; will retry")
                kind = "full" if full else "incremental"
                outcome = SyncOutcome(kind, False, error=f"unexpected error: {exc!r}")
            self.last_outcome = outcome
            if outcome.ok:
                retry_in = None
                owed_full = False
            else:
                cap = max(RETRY_FIRST, self.settings.incremental_interval)
                retry_in = RETRY_FIRST if retry_in is None else min(retry_in * 2, cap)
                owed_full = owed_full or full
            if self.on_outcome is not None:
                try:
                    self.on_outcome(outcome)
                except Exception:  # the callback's trouble must not kill the sync thread
                    log.exception("directory sync callback failed")
            with self._done:
                self._completed += 1
                self._done.notify_all()
