"""Composition for the command line: config -> store, firewall, reconciler.

The CLI never calls nft or LDAP itself; it builds these objects and asks the
reconciler.  A lock file serialises reconciles of one gateway between the CLI
and a running enforcer, so two writers never race on the kernel.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from userseg.cli_output import UsageError
from userseg.config import Config
from userseg.directory.model import DirectorySource, StalePolicy
from userseg.directory.sync import DirectorySync, SyncOutcome, staleness
from userseg.model import Mapping, Snapshot
from userseg.ports import Firewall
from userseg.reconciler import Reconciler
from userseg.snapshot import load_snapshot
from userseg.store import Store

RUN_DIR = Path(os.environ.get("USERSEG_RUN_DIR", "/run/userseg"))


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


@contextmanager
def reconcile_lock(netns: str | None) -> Iterator[None]:
    RUN_DIR.mkdir(parents=True, exist_ok=True, mode=0o750)
    path = RUN_DIR / f"reconcile-{netns or 'host'}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@dataclass
class Runtime:
    config: Config
    store: Store
    clock: SystemClock = field(default_factory=SystemClock)
    _reconciler: Reconciler | None = None
    _closers: list[object] = field(default_factory=list)

    _directory_sync: DirectorySync | None = None
    _firewall: Firewall | None = None
    # Start-up shares its one read of the mappings (seconds at 250k) with the ingest book.
    keep_first_mappings: bool = False
    _first_mappings: Sequence[Mapping] | None = None

    def take_first_mappings(self) -> Sequence[Mapping] | None:
        """The mappings the first snapshot read, once (then forgotten, to free the memory)."""
        mappings, self._first_mappings = self._first_mappings, None
        self.keep_first_mappings = False
        return mappings

    def snapshot(self) -> Snapshot:
        """The desired-state input; past max_staleness with on_stale = fail-closed, no client has a user."""
        now = self.clock.now()
        snap = load_snapshot(self.store, self.config, now)
        if self.keep_first_mappings and self._first_mappings is None:
            self._first_mappings = snap.mappings  # before the fail-closed substitution below
        settings = self.config.directory
        if (
            settings is not None
            and settings.on_stale is StalePolicy.FAIL_CLOSED
            and staleness(settings, self.store.directory_status(), now).fail_closed
        ):
            snap = replace(snap, users={}, mappings=())
        return snap

    def directory_source(self) -> DirectorySource:
        """The LDAP adapter, opening its sockets in the gateway's namespace (where the DCs are reachable)."""
        if self.config.directory is None:
            raise UsageError(f"no [directory] section in {self.config.source}; AD sync is not configured")
        from userseg.adapters.directory import LdapDirectory

        source = LdapDirectory(self.config.directory, netns=self.config.netns)
        self._closers.append(source)
        return source

    def directory_sync(self, on_commit: Callable[[SyncOutcome], None] | None = None) -> DirectorySync:
        if self._directory_sync is None:
            source = self.directory_source()  # UsageError when AD sync is not configured
            settings = self.config.directory
            assert settings is not None
            self._directory_sync = DirectorySync(source, self.store, settings, self.clock, on_commit)
        return self._directory_sync

    def reset_directory(self) -> None:
        """Forget the LDAP adapter (a reload changed [directory]); the next use builds a new one."""
        if self._directory_sync is not None:
            source = self._directory_sync.source
            if source in self._closers:
                self._closers.remove(source)
            source.close()
            self._directory_sync = None

    @property
    def firewall(self) -> Firewall:
        """The firewall adapter the reconciler writes through (read-back for recovery, status)."""
        _ = self.reconciler
        assert self._firewall is not None
        return self._firewall

    @property
    def reconciler(self) -> Reconciler:
        if self._reconciler is None:
            from userseg.adapters.firewall.addresses import LocalAddresses
            from userseg.adapters.firewall.conntrack import Conntrack
            from userseg.adapters.firewall.nft import NftFirewall

            fw = NftFirewall(netns=self.config.netns)
            conns = Conntrack(netns=self.config.netns)
            local = LocalAddresses(self.config.netns)
            self._closers += [fw, conns, local]
            self._firewall = fw
            self._reconciler = Reconciler(fw, self.clock, conns, local)
        return self._reconciler

    def close(self) -> None:
        for c in self._closers:
            c.close()  # type: ignore[attr-defined]
        self._closers.clear()


def open_runtime(config: Config) -> Runtime:
    return Runtime(config=config, store=Store(config.database_url))
