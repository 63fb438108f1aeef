"""The lab's safety net: nothing a lab creates may outlive the run that made it.

Why a module of its own: a `Lab` deletes its namespaces on ``close()``, but a
test run can also end by a crash, SIGKILL, SIGTERM or a plain interpreter
exit, and then there is no ``close()``. Three mechanisms cover those, and none
of them needs to know how a lab is laid out:

- a registry file per run in /run/userseg-lab names the owner process (pid
  plus start time, which survives pid reuse) and the namespaces, so
  `cleanup_stale` deletes only namespaces of runs whose owner is dead, never
  those of a live parallel run;
- an atexit hook closes every lab still open when the interpreter exits;
- SIGTERM/SIGHUP handlers (installed only where nobody else has one) close
  them too, then let the signal kill the process so the exit status stays
  truthful.

`ip_batch` lives here too because deleting namespaces needs it; the topology
builds with it as well. This module imports nothing from the lab, so the
topology can depend on it without a cycle.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Protocol

from userseg.netns import NETNS_RUN_DIR

REGISTRY_DIR = "/run/userseg-lab"


class Closable(Protocol):
    """What the last-resort teardown needs of a lab (`Lab` satisfies it)."""

    run_id: str

    def close(self) -> None: ...


def ip_batch(ns: str | None, lines: Sequence[str], force: bool = False) -> subprocess.Popen[str]:
    """Start one `ip -batch` for many commands: one process instead of dozens keeps builds fast."""
    argv = ["ip", *(["-n", ns] if ns else []), *(["-force"] if force else []), "-batch", "-"]
    with tempfile.TemporaryFile("w+") as script:  # a file, not a pipe: any size, no deadlock
        script.write("\n".join(lines) + "\n")
        script.seek(0)
        return subprocess.Popen(argv, stdin=script, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def delete_namespaces(names: Sequence[str]) -> list[str]:
    """Delete those of the namespaces that exist; returns the ones still there afterwards."""
    exists = [n for n in names if os.path.exists(os.path.join(NETNS_RUN_DIR, n))]
    if exists:
        ip_batch(None, [f"netns del {n}" for n in exists], force=True).communicate()
    return [n for n in exists if os.path.exists(os.path.join(NETNS_RUN_DIR, n))]


def start_time(pid: int) -> int | None:
    """Process start time in clock ticks; with the pid it identifies a process despite pid reuse."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def registry_path(run_id: str) -> str:
    return os.path.join(REGISTRY_DIR, f"{run_id}.json")


def register(run_id: str, namespaces: Sequence[str]) -> None:
    """Record this process as the owner of the run's namespaces (before any of them exists)."""
    os.makedirs(REGISTRY_DIR, mode=0o755, exist_ok=True)
    with open(registry_path(run_id), "w") as fh:
        json.dump({"pid": os.getpid(), "start": start_time(os.getpid()), "namespaces": list(namespaces)}, fh)


def unregister(run_id: str) -> None:
    """Drop the run's registry file once its namespaces are gone."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(registry_path(run_id))


def cleanup_stale(prefix: str, ours: Callable[[str, str], bool]) -> list[str]:
    """Delete namespaces of dead runs with this prefix; returns those deleted.

    `ours(run_id, namespace)` says whether a recorded name follows the lab's naming
    scheme for that run; only such names are deleted, so a tampered or foreign registry
    file cannot make us delete someone else's namespace.
    """
    run_re = re.compile(rf"{re.escape(prefix)}[0-9a-f]{{6}}\.json")
    deleted: list[str] = []
    entries = sorted(os.listdir(REGISTRY_DIR)) if os.path.isdir(REGISTRY_DIR) else []
    for entry in filter(run_re.fullmatch, entries):
        path, run_id = os.path.join(REGISTRY_DIR, entry), entry.removesuffix(".json")
        try:
            with open(path) as fh:
                info = json.load(fh)
            pid, start, names = int(info["pid"]), info.get("start"), list(info["namespaces"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if start_time(pid) == start and start is not None:
            continue  # the owner is alive: not stale
        mine = [n for n in names if isinstance(n, str) and ours(run_id, n)]
        present = [n for n in mine if os.path.exists(os.path.join(NETNS_RUN_DIR, n))]
        still = delete_namespaces(mine)
        deleted += [n for n in present if n not in still]
        if not still:
            os.unlink(path)
    return deleted


# -- last-resort cleanup: atexit and SIGTERM/SIGHUP -----------------------------------------------------
_LIVE: set[Closable] = set()
_HOOKS = threading.Lock()
_hooks_installed = False


def _close_all() -> None:
    for lab in list(_LIVE):
        try:
            lab.close()
        except BaseException as exc:  # best effort at exit
            print(f"userseg lab {lab.run_id}: teardown failed: {exc!r}", file=sys.stderr)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """Tear labs down, then die of the same signal so the exit status stays truthful."""
    _close_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def track(lab: Closable) -> None:
    """Close `lab` at interpreter exit or on SIGTERM/SIGHUP unless `forget` came first."""
    global _hooks_installed
    _LIVE.add(lab)
    with _HOOKS:
        if _hooks_installed:
            return
        _hooks_installed = True
        atexit.register(_close_all)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(sig) == signal.SIG_DFL:  # never override someone else's handler
                    signal.signal(sig, _on_signal)


def forget(lab: Closable) -> None:
    """`lab` is fully torn down: the last-resort hooks no longer need to close it."""
    _LIVE.discard(lab)
