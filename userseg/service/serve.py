"""`userseg serve`: the composition root of the long-running service.

Start-up order (each step's failure is reported, none is a crash loop):
1. config (a bad one: exit 2, which the unit does not restart);
2. database: migrate; a corrupt SQLite file is moved aside and rebuilt
   (recovery.py) with the kernel's mappings, and the kernel is held as it is
   until AD has been read;
3. directory: start the service (notifications, timers) and wait up to
   `startup_sync_timeout` for the first sync; if every DC is down, continue
   from the persisted directory and report degraded;
4. reconcile: read the kernel back, diff against the store, apply the
   difference (an in-step kernel after a restart gets an empty plan: zero gap);
5. login sources, the ops endpoint; then READY=1.
Then one loop: reconcile when the store moves or the resync timer runs out,
WATCHDOG=1 only while every loop is progressing, the status file, reloads.

SIGTERM/SIGINT: stop sources (their queue is committed), stop, exit 0 - the
table stays, with its element timeouts as the dead-man switch.
SIGHUP: re-read the config; a bad one is rejected with every reason and the
old one keeps running; settings that need a restart (database, netns) too.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from userseg.config import Config, load_config
from userseg.enforcer import Enforcer
from userseg.events.pipeline import KernelMappings
from userseg.model import IPAddress
from userseg.reconciler import SyncReport
from userseg.runtime import RUN_DIR, Runtime, open_runtime
from userseg.service import status as status_mod
from userseg.service.health import Health, HealthFacts, Heartbeats, assess
from userseg.service.logs import setup_logging
from userseg.service.metrics import ServiceMetrics, TimedKernel
from userseg.service.notify import Notifier, watchdog_interval
from userseg.service.recovery import Rebuilt, check_sqlite, rebuild, sqlite_path
from userseg.service.reload import reload_config
from userseg.service.statusfile import status_path, write_status
from userseg.store import Store, StoreError, is_corruption

log = logging.getLogger("userseg.serve")

EXIT_CONFIG = 2
EXIT_RESTART = 75  # EX_TEMPFAIL: something needs a fresh start (e.g. the database broke while running)
EXIT_UNAVAILABLE = 1  # the store could not be opened: systemd retries (Restart=on-failure)
EXIT_PRIVILEGE = 78  # EX_CONFIG: missing CAP_NET_ADMIN; restarting cannot help (RestartPreventExitStatus)
INGEST_RETRY = 30.0  # seconds between attempts to start login sources that failed to start
SIGHTINGS_KEEP = timedelta(days=30)  # account sightings (ignore-suggestions) older than this are pruned
PRUNE_EVERY = 3600.0  # seconds between prunes
RECONCILE_LIMIT = 600.0  # a reconcile running longer than this counts as hung
ENFORCE_DEADLINE = 15.0  # the enforce loop must come round this often (outside reconciles)
INGEST_DEADLINE = 30.0  # the ingest worker wakes at least every second when idle


class RestartNeeded(Exception):
    """The service must exit and be restarted (systemd: Restart=on-failure)."""


class NotPermitted(Exception):
    """The kernel refused us netlink access: a deployment problem, not a transient one."""


class Service:
    def __init__(self, config_path: Path, *, notifier: Notifier | None = None, poll: float = 0.2) -> None:
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self.poll = poll
        self.beats = Heartbeats()
        self.metrics = ServiceMetrics(self.status_doc)
        self.started = False
        self.started_at = time.time()
        self.rebuilt: Rebuilt | None = None
        self.ingest_error: str | None = None
        self.ops_error: str | None = None
        self.last_reload: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wake = threading.Event()
        self._ops: Any = None
        self.rt: Runtime | None = None
        self.enforcer: Enforcer | None = None
        self._ingest_retry_at = 0.0
        self.last_reconcile_mono = 0.0
        self._next_prune = 0.0
        self._frozen = False
        self._drops_seen = (0, 0.0)
        self._source_errors: dict[str, tuple[int, float]] = {}

    # ------------------------------------------------------------------ signals

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self.enforcer is not None:
            self.enforcer.stop()

    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()
        if self.enforcer is not None:
            self.enforcer.wake.set()

    # ------------------------------------------------------------------ main

    def run(self) -> int:
        config = load_config(self.config_path)  # ConfigError: the CLI prints it, exit 2
        setup_logging(config.service.log_format)
        logging.getLogger("alembic").setLevel(logging.WARNING)  # migration chatter on every start
        try:
            self._start(config)
            return self._loop()
        except RestartNeeded as exc:
            log.critical("restarting: %s", exc)
            return EXIT_RESTART
        except NotPermitted as exc:
            log.critical("%s", exc)
            return EXIT_PRIVILEGE
        except StoreError as exc:  # unreachable or unusable database: worth a retry by systemd
            log.critical("cannot use the database: %s", exc)
            return EXIT_UNAVAILABLE
        finally:
            self._shutdown()

    def _start(self, config: Config) -> None:
        self.notifier.notify("STATUS=starting: checking the database")
        self._open_store(config)
        rt = self.rt
        assert rt is not None
        self.enforcer = Enforcer(
            rt,
            poll=self.poll,
            say=lambda line: log.info(line.removeprefix("userseg: ")),
            on_reconciled=self._reconciled,
            on_cycle=lambda: self.beats.beat("enforce", time.monotonic()),
            kernel=self._timed_kernel,
            before_sources=self._freeze,
        )
        if self.rebuilt is not None and config.directory is not None:
            self.enforcer.hold_reason = "database rebuilt: kernel held until the first directory sync"
        self.beats.register("enforce", max(ENFORCE_DEADLINE, 5 * self.poll), time.monotonic())
        if config.directory is not None:
            self.notifier.notify("STATUS=starting: first directory sync")
            log.info("first directory sync (waiting up to %.0f s)", config.service.startup_sync_timeout)
            self.enforcer.start_directory()
            self._wait_first_sync(config)
        self.notifier.notify("STATUS=starting: reconciling the kernel")
        rt.keep_first_mappings = config.ingest is not None
        self._step()
        error = self.enforcer.last_error or ""
        if "Operation not permitted" in error or "[Errno 1]" in error:
            raise NotPermitted(
                "the kernel refused nftables/netlink access (Operation not permitted): the service needs "
                "CAP_NET_ADMIN (systemd: AmbientCapabilities=CAP_NET_ADMIN, as in systemd/userseg.service); "
                f"nothing was changed. Detail: {error}"
            )
        self._start_ingest()
        self._freeze()  # no-op if the ingest start did it (no login sources: here)
        self._start_ops(config)
        self.started = True
        self.notifier.notify("READY=1", f"STATUS={self._status_line()}")
        log.info("ready: %s", self._status_line())

    def _open_store(self, config: Config) -> None:
        path = sqlite_path(config.database_url)
        problem = check_sqlite(path) if path is not None else None
        if problem is None:
            try:
                with Store(config.database_url) as store:
                    store.upgrade()
            except StoreError as exc:
                if not is_corruption(exc):
                    raise
                problem = str(exc.__cause__ or exc)
        self.rt = open_runtime(config)
        if problem is not None:
            rt = self.rt
            self.rebuilt = rebuild(config.database_url, problem, rt.clock.now(), self._kernel_mappings)
            rt.store.close()
            rt.store = Store(config.database_url)

    def _kernel_mappings(self) -> list[tuple[IPAddress, str, datetime]]:
        from userseg.core.recover import kernel_mappings

        assert self.rt is not None
        return list(kernel_mappings(self.rt.firewall.read()))

    def _freeze(self) -> None:
        """The start-up state (hundreds of MB at 250k mappings) lives as long as the process:
        moving it out of the collector's generations spares every later full collection a walk
        over it (1.6 s at that size: a stall of logins, a slow exit).  Called once the ingest
        book is loaded and before any source runs, so that no collection lands in between."""
        if not self._frozen:
            gc.freeze()
            self._frozen = True

    def _wait_first_sync(self, config: Config) -> None:
        enforcer = self.enforcer
        assert enforcer is not None and enforcer.service is not None and config.directory is not None
        timeout = config.service.startup_sync_timeout
        if not enforcer.service.wait_for_sync(0, timeout):
            log.warning("first directory sync not finished after %.0f s; continuing from the store", timeout)
            return
        outcome = enforcer.service.last_outcome
        if outcome is not None and not outcome.ok:
            log.warning(
                "first directory sync failed (%s); serving from the persisted directory", outcome.error
            )
        elif enforcer.hold_reason is not None:
            enforcer.hold_reason = None

    def _loop(self) -> int:
        assert self.rt is not None and self.enforcer is not None
        monitor = threading.Thread(target=self._monitor, name="userseg-monitor", daemon=True)
        monitor.start()
        try:
            while not self._stop.is_set():
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                self._step()
                self._release_hold()
                if (
                    self.enforcer.ingest is None
                    and self.rt.config.ingest is not None
                    and time.monotonic() >= self._ingest_retry_at
                ):
                    self._start_ingest()
                self._housekeeping()
                self.enforcer.wake.wait(self.poll)
        finally:
            self._stop.set()
            monitor.join(5)
        return 0

    def _housekeeping(self) -> None:
        """Hourly: prune account sightings past SIGHTINGS_KEEP (they only feed ignore-suggestions)."""
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY
        assert self.rt is not None
        try:
            pruned = self.rt.store.prune_sightings(self.rt.clock.now() - SIGHTINGS_KEEP)
            if pruned:
                log.info("pruned %d account sighting(s) older than %d days", pruned, SIGHTINGS_KEEP.days)
        except StoreError as exc:
            log.warning("pruning account sightings failed (retried in an hour): %s", exc)

    def _monitor(self) -> None:
        """WATCHDOG=1 and the status file, on their own thread: a long reconcile (seconds at
        250k mappings) is work, not a hang, and must neither delay the pings nor freeze the
        status; a loop that really stops progressing stops the pings (health.live)."""
        assert self.rt is not None
        interval = watchdog_interval()
        next_ping = next_status = 0.0
        tick = min(0.2, self.rt.config.service.status_interval, interval or 0.2)
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if interval is not None and now >= next_ping and not self.stuck_loops():
                    self.notifier.notify("WATCHDOG=1")
                    next_ping = now + interval
                if now >= next_status:
                    self._write_status()
                    next_status = now + self.rt.config.service.status_interval
            except Exception:  # the monitor must outlive a bad status read
                log.exception("status/watchdog monitor: unexpected error")
            self._stop.wait(tick)

    def _step(self) -> None:
        assert self.enforcer is not None
        try:
            self.enforcer.step()
        except StoreError as exc:
            if is_corruption(exc):
                raise RestartNeeded(
                    f"the database broke while running ({exc}); a restart rebuilds it"
                ) from exc
            raise
        if self.enforcer.last_error is not None:
            self.metrics.errors.labels("reconcile").inc()

    def _release_hold(self) -> None:
        e = self.enforcer
        if e is None or e.hold_reason is None or e.service is None:
            return
        if e.service.last_outcome is not None and e.service.last_outcome.ok:
            log.warning("directory read after the database rebuild; enforcing the rebuilt state")
            e.hold_reason = None
            e.wake.set()

    def _start_ingest(self) -> None:
        assert self.enforcer is not None
        from userseg.events.service import IngestError

        try:
            self._start_ingest_strict()
        except (IngestError, OSError) as exc:
            self.ingest_error = str(exc)
            self.metrics.errors.labels("ingest_start").inc()
            self._ingest_retry_at = time.monotonic() + INGEST_RETRY
            log.error("login sources could not start (retrying in %.0f s): %s", INGEST_RETRY, exc)

    def _start_ops(self, config: Config) -> None:
        s = config.service
        if s.ops_host is None:
            return
        from userseg.service.ops import ops_app, start_ops_server

        try:
            self._ops = start_ops_server(
                ops_app(self.health, self.status_doc, self.metrics.exposition), s.ops_host, s.ops_port
            )
            self.ops_error = None
            host, port = self._ops.address
            log.info("metrics and health on http://%s:%d/ (/metrics /healthz /readyz /status)", host, port)
        except Exception as exc:
            self.ops_error = f"ops endpoint {s.ops_host}:{s.ops_port} could not start: {exc}"
            log.error("%s", self.ops_error)

    def _shutdown(self) -> None:
        self.notifier.notify("STOPPING=1", "STATUS=stopping; enforcement stays in the kernel")
        if self.enforcer is not None:
            self.enforcer.stop_services()
        if self._ops is not None:
            self._ops.stop()
            self._ops = None
        if self.rt is not None:
            path = status_path(RUN_DIR, self.rt.config.netns)
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            self.rt.close()
            self.rt.store.close()
        self.notifier.close()
        log.info("stopped; the table and its mappings stay in the kernel")

    # ------------------------------------------------------------------ reload

    def reload(self) -> bool:
        """Re-read the config; keep the old one on any error.  True if the new one runs."""
        return reload_config(self)

    def _start_ingest_strict(self) -> None:
        """Start the login sources (if configured); the ingest heartbeat follows whether they run."""
        assert self.enforcer is not None
        self.beats.unregister("ingest")
        self.enforcer.start_ingest()
        self.ingest_error = None
        if self.enforcer.ingest is not None:
            self.beats.register("ingest", INGEST_DEADLINE, time.monotonic())

    # ------------------------------------------------------------------ health and status

    def _timed_kernel(self, inner: KernelMappings) -> KernelMappings:
        return TimedKernel(inner, self.metrics)

    def _reconciled(self, report: SyncReport) -> None:
        self.last_reconcile_mono = time.monotonic()
        self.metrics.apply_seconds.labels("full").observe(report.seconds)

    def stuck_loops(self) -> tuple[str, ...]:
        """The loops past their deadline (what `live` is decided on): heartbeats only, no I/O,
        so the watchdog can ask every tick."""
        now = time.monotonic()
        e = self.enforcer
        if e is not None and e.busy_since is not None and now - e.busy_since < RECONCILE_LIMIT:
            self.beats.beat("enforce", now)  # inside a reconcile (locks held): working, not hung
        if e is not None and e.ingest is not None:
            self.beats.beat("ingest", e.ingest.pipeline.last_cycle)
        return self.beats.stuck(now)

    def health(self, directory: dict[str, Any] | None = None) -> Health:
        """`directory`: the directory status if the caller has just read it (one store read)."""
        assert self.rt is not None
        return assess(
            HealthFacts(
                started=self.started,
                stuck_loops=self.stuck_loops(),
                reconcile_error=self.enforcer.last_error if self.enforcer else None,
                degraded=tuple(status_mod.degraded_reasons(self, directory)),
            )
        )

    def status_doc(self) -> dict[str, Any]:
        return status_mod.status_doc(self)

    def _status_line(self) -> str:
        return status_mod.status_line(self)

    def _write_status(self) -> None:
        assert self.rt is not None
        try:
            write_status(status_path(RUN_DIR, self.rt.config.netns), self.status_doc())
        except OSError as exc:
            log.warning("cannot write the status file: %s", exc)


def serve(config_path: Path) -> int:
    service = Service(config_path)
    service.install_signal_handlers()
    os.umask(0o027)
    return service.run()
