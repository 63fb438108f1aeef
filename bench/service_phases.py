"""Run the real `userseg` command with start-up phases timed: `python -m bench.service_phases ARGS`.

bench_service starts the service through this module instead of `-m userseg.cli`
so that every restart reports where its time went, measured inside the real
process (same data, same kernel, same GIL contention) rather than re-enacted.
Each wrapped call prints one line to stderr:

    bench-phase <label> <monotonic start> <monotonic end>

CLOCK_MONOTONIC is system-wide, so the parent can place these on its own time
line (it notes the time just before exec).  A target that does not exist (the
code moved) is skipped, never an error: the breakdown then simply lacks it.
The wrappers only time; arguments and results pass through unchanged.
"""

from __future__ import annotations

import functools
import importlib
import sys
import time
from collections.abc import Callable
from typing import Any

STARTED = time.monotonic()

# (module, attribute path, label); what the service does at start-up, in order.
TARGETS = (
    ("userseg.service.serve", "Service._open_store", "store: check + migrate"),
    ("userseg.events.service", "IngestService.__init__", "ingest: load mapping book"),
    ("userseg.events.service", "IngestService.start", "ingest: start sources"),
    ("userseg.runtime", "Runtime.snapshot", "snapshot: read store"),
    ("userseg.reconciler", "compile_state", "reconcile: compile"),
    ("userseg.reconciler", "render", "reconcile: render"),
    ("userseg.adapters.firewall.nft", "NftFirewall.read", "reconcile: read back kernel"),
    ("userseg.reconciler", "diff", "reconcile: diff"),
    ("userseg.adapters.firewall.nft", "NftFirewall.apply", "reconcile: apply"),
    ("userseg.reconciler", "Reconciler._revoke_after_full", "reconcile: revocation"),
    ("userseg.reconciler", "Reconciler.full_sync", "reconcile (total)"),
    ("userseg.service.serve", "Service._start_ops", "ops server start"),
)


def report(label: str, start: float, end: float) -> None:
    sys.stderr.write(f"bench-phase {label} {start:.6f} {end:.6f}\n")
    sys.stderr.flush()


def timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            report(label, start, time.monotonic())

    return wrapper


def install() -> None:
    for module_name, path, label in TARGETS:
        try:
            owner: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        *parents, name = path.split(".")
        for p in parents:
            owner = getattr(owner, p, None)
        fn = getattr(owner, name, None) if owner is not None else None
        if callable(fn):
            setattr(owner, name, timed(label, fn))


def main() -> int:
    report("interpreter start", STARTED, STARTED)
    from userseg.cli import main as cli_main

    install()
    report("imports", STARTED, time.monotonic())
    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
