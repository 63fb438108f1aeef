"""Finding and ending every process of one lab DC, and of DCs left behind by crashed runs.

Why this is not "kill the pid in samba.pid": ``samba -D`` detaches, its ~50
children are prefork masters and workers, and smbd/winbindd run in sessions of
their own, so neither the pid file nor one process group covers them all; a
DC whose master died leaves smbd and winbindd running. Nor can one marker find
them all: samba rewrites its process titles over the environment block, so
``/proc/PID/environ`` of a ``samba: task[...]`` process reads empty (measured),
while smbd, winbindd and the Python helpers samba runs keep theirs.

So a DC's processes are, by pid:

- those carrying ``USERSEG_SAMBA_DC=<marker>`` in their environment (set when
  the DC is started; the marker is unique per DC object);
- samba/smbd/winbindd processes living in the DC's network namespace
  (compared by the namespace's device and inode, what /proc/PID/ns/net stats to);
- descendants of the master we started (pid plus start time, so pid reuse is harmless).

A registry file per DC in /run/userseg-lab names the owning process; `cleanup_stale`
ends DCs whose owner is dead. The namespace test is used there only while the
recorded master is still alive (it holds the namespace, so its inode cannot
have been reused by someone else's namespace).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from userseg.lab.registry import start_time
from userseg.lab.samba_files import remove_netns_etc
from userseg.netns import NETNS_RUN_DIR

MARKER_ENV = "USERSEG_SAMBA_DC"
REGISTRY_DIR = Path("/run/userseg-lab")
_SAMBA_EXES = {"samba", "smbd", "winbindd"}


@dataclass
class DcIdentity:
    """What tells one DC's processes from everyone else's."""

    marker: str
    ns: str = ""  # the namespace's name (its /etc/netns files go with a stale DC)
    netns: tuple[int, int] | None = None  # (st_dev, st_ino) of the DC's network namespace
    master: tuple[int, int | None] | None = None  # (pid, start time) of the samba master

    def master_alive(self) -> bool:
        if self.master is None or self.master[1] is None:
            return False
        pid, started = self.master
        return start_time(pid) == started and _stat(str(pid))[0] not in "ZX"


def ns_id(ns: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a named namespace, or None when it does not exist (any more)."""
    try:
        st = os.stat(os.path.join(NETNS_RUN_DIR, ns))
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _stat(pid: str) -> tuple[str, int]:
    """(state, ppid) of a process; a zombie ("Z") has exited and only waits to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, IndexError, ValueError):
        return "X", 0


def dc_processes(ident: DcIdentity, *, use_netns: bool = True) -> list[int]:
    """Pids of the DC's processes (see the module docstring), never our own."""
    want = f"{MARKER_ENV}={ident.marker}".encode()
    master = ident.master[0] if ident.master and ident.master_alive() else None
    found: set[int] = set()
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        state, parent = _stat(entry.name)
        if state in "ZX":
            continue
        parents[pid] = parent
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if want in fh.read().split(b"\0"):
                    found.add(pid)
                    continue
            if use_netns and ident.netns is not None:
                st = os.stat(f"/proc/{pid}/ns/net")
                exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
                if (st.st_dev, st.st_ino) == ident.netns and exe in _SAMBA_EXES:
                    found.add(pid)
    if master is not None:
        found.add(master)
        children: dict[int, list[int]] = {}
        for pid, parent in parents.items():
            children.setdefault(parent, []).append(pid)
        todo = [master]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return sorted(found)


def wait_exit(pids: Iterable[int], deadline: float) -> list[int]:
    """Wait on pidfds (events, not polling) until the pids exit or the deadline; returns survivors."""
    fds: dict[int, int] = {}
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                fds[os.pidfd_open(pid)] = pid
        while fds and (left := deadline - time.monotonic()) > 0:
            for fd in select.select(list(fds), [], [], left)[0]:
                os.close(fd)
                del fds[fd]
        return sorted(fds.values())
    finally:
        for fd in fds:
            os.close(fd)


def pause(seconds: float, watch: int | None = None) -> None:
    """The bounded pause between two polls of a deadline loop; ends early if `watch` (a pid) exits."""
    fds = []
    with contextlib.suppress(ProcessLookupError):
        if watch is not None:
            fds.append(os.pidfd_open(watch))
    try:
        select.select(fds, [], [], max(0.0, seconds))
    finally:
        for fd in fds:
            os.close(fd)


def _signal(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def end_processes(ident: DcIdentity, timeout: float, *, use_netns: bool = True) -> list[int]:
    """SIGTERM the master (samba then stops its children), then all left; SIGKILL at half-time.

    Returns the pids still alive at the end (empty on success). Rescans between
    steps because samba forks while it shuts down.
    """
    deadline = time.monotonic() + timeout
    pids = dc_processes(ident, use_netns=use_netns)
    if ident.master is not None and ident.master_alive():
        _signal([ident.master[0]], signal.SIGTERM)
        wait_exit([ident.master[0]], time.monotonic() + timeout / 4)
    pids = dc_processes(ident, use_netns=use_netns)
    _signal(pids, signal.SIGTERM)
    wait_exit(pids, time.monotonic() + max(0.0, (deadline - time.monotonic()) / 2))
    pids = dc_processes(ident, use_netns=use_netns)
    _signal(pids, signal.SIGKILL)
    wait_exit(pids, deadline)
    return dc_processes(ident, use_netns=use_netns)


# -- registry of running DCs, for crashed runs ----------------------------------------------------------
def registry_path(marker: str) -> Path:
    return REGISTRY_DIR / f"samba-{hashlib.sha256(marker.encode()).hexdigest()[:16]}.json"


def register(ident: DcIdentity) -> None:
    """Record (or update) that this process owns the DC, so a crashed run's DC can be ended."""
    REGISTRY_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    info = {
        "pid": os.getpid(),
        "start": start_time(os.getpid()),
        "marker": ident.marker,
        "ns": ident.ns,
        "netns": ident.netns,
        "master": ident.master,
    }
    path = registry_path(ident.marker)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(path)


def unregister(ident: DcIdentity) -> None:
    registry_path(ident.marker).unlink(missing_ok=True)


def cleanup_stale(timeout: float = 10.0) -> list[int]:
    """End the processes of lab DCs whose owning process is dead; returns the pids ended.

    A DC whose owner is alive (a parallel run) is left alone, as is any Samba no
    lab started (it carries no marker and is not a descendant of a recorded master).
    """
    ended: list[int] = []
    if not REGISTRY_DIR.is_dir():
        return ended
    for path in sorted(REGISTRY_DIR.glob("samba-*.json")):
        try:
            info = json.loads(path.read_text())
            owner, owner_start = int(info["pid"]), info.get("start")
            netns, master = info.get("netns"), info.get("master")
            ident = DcIdentity(
                str(info["marker"]),
                str(info.get("ns", "")),
                (int(netns[0]), int(netns[1])) if netns else None,
                (int(master[0]), master[1]) if master else None,
            )
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            continue
        if owner_start is not None and start_time(owner) == owner_start:
            continue
        use_netns = ident.master_alive()  # only then is the recorded namespace surely still ours
        pids = dc_processes(ident, use_netns=use_netns)
        if not end_processes(ident, timeout, use_netns=use_netns):
            ended += pids
            if ident.ns:
                remove_netns_etc(ident.ns)
            path.unlink(missing_ok=True)
    return ended
