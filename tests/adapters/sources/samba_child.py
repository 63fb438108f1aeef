"""A SambaLogSource in its own process, for the kill-and-restart tests.

    python -m tests.adapters.sources.samba_child LOG OUT [POSITION]

Every emitted line is appended to OUT as one JSON record [line, position] in a
single write(), the way the pipeline commits a position together with what was
derived from the line: a SIGKILL leaves whole records only.  Prints "ready"
once the start position is chosen; SIGTERM stops it cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from userseg.adapters.sources.samba_log import SambaLogSource
from userseg.events.model import ParseResult, Skipped


class FileSink:
    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def emit(
        self, source: str, result: ParseResult, position: str | None = None, *, block: bool = True
    ) -> bool:
        assert isinstance(result, Skipped)
        os.write(self.fd, json.dumps([result.reason, position]).encode() + b"\n")
        return True


def main() -> None:
    log, out = Path(sys.argv[1]), Path(sys.argv[2])
    position = sys.argv[3] if len(sys.argv) > 3 else None
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # inherited by the follower thread
    source = SambaLogSource(
        "dc1",
        log,
        FileSink(out),
        lambda text, received: Skipped(text),
        position=position,
        start_at_end=False,
        clock=lambda: datetime.now(UTC),
        rotate_grace=0.2,
    )
    source.start()
    if not source.wait_ready(10):
        sys.exit("the source did not start")
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM})
    sys.exit(0 if source.stop(5) else 1)


if __name__ == "__main__":
    main()
