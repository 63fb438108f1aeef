"""The running service's status document, as a file `userseg status` reads.

Why a file and not only /status over HTTP: the CLI then needs no network
access, works when the ops endpoint is disabled, and can tell "not running"
(no file, or its pid is gone) from "running but unhealthy".  Written
atomically (a private temp file + rename) every status_interval, so a reader
sees the previous document or the next one, never half of one.

A file left behind by a killed service names a pid that the kernel may hand
to another process later; a process that started after the file was last
written cannot be its writer, so that file counts as stale too.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

MODE = 0o640  # the service's group (admins) may read it; it names no secrets but counts users
START_SLACK = 1.0  # seconds: /proc start times are in clock ticks, mtimes finer


def status_path(run_dir: Path, netns: str | None) -> Path:
    return run_dir / f"status-{netns or 'host'}.json"


def write_status(path: Path, doc: dict[str, Any]) -> None:
    text = json.dumps(doc, default=str)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    # mkstemp: a name no other writer uses, created 0600 (never readable by all, whatever the umask).
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_status(path: Path) -> dict[str, Any] | None:
    """The document if the service that wrote it is still alive, else None."""
    try:
        written = path.stat().st_mtime
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    pid = doc.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0 or not _alive(pid):
        return None  # (pid 0 or -1 would make kill() address a group, which "exists")
    started = _started_at(pid)
    if started is not None and started > written + START_SLACK:
        return None  # the pid was reused by a process younger than the file
    return dict(doc)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _started_at(pid: int) -> float | None:
    """The process's start as a wall-clock time, from /proc (None where /proc cannot say)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        ticks = int(stat.rpartition(")")[2].split()[19])  # field 22, counted after "pid (comm)"
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")
