"""The running service's status document, as a file `userseg status` reads.

Why a file and not only /status over HTTP: the CLI then needs no network
access, works when the ops endpoint is disabled, and can tell "not running"
(no file, or its pid is gone) from "running but unhealthy".  Written
atomically (temp file + rename) every status_interval.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def status_path(run_dir: Path, netns: str | None) -> Path:
    return run_dir / f"status-{netns or 'host'}.json"


def write_status(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    tmp.write_text(json.dumps(doc, default=str))
    os.chmod(tmp, 0o640)
    os.replace(tmp, path)


def read_status(path: Path) -> dict[str, Any] | None:
    """The document if the service that wrote it is still alive, else None."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    pid = doc.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        return None
    return dict(doc)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
