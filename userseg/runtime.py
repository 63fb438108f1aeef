"""Composition for the command line: config -> store, firewall, reconciler.

The CLI never calls nft or LDAP itself; it builds these objects and asks the
reconciler.  A lock file serialises reconciles of one gateway between the CLI
and a running enforcer, so two writers never race on the kernel.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from userseg.config import Config
from userseg.model import Snapshot
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

    def snapshot(self) -> Snapshot:
        return load_snapshot(self.store, self.config, self.clock.now())

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
            self._reconciler = Reconciler(fw, self.clock, conns, local)
        return self._reconciler

    def close(self) -> None:
        for c in self._closers:
            c.close()  # type: ignore[attr-defined]
        self._closers.clear()


def open_runtime(config: Config) -> Runtime:
    return Runtime(config=config, store=Store(config.database_url))
