"""The Samba auth-audit log as a login source: follow the file, parse each line, emit to the pipeline.

Samba writes one JSON object per line to the file named by
`log level = 1 auth_json_audit:4@/var/log/samba/auth_audit.log`.  This adapter
only moves lines: `parse` is injected (the real one is in
`userseg.events.formats`), so what a line means is decided in one place for
every source, and the follower stays testable with any parser.

Choices, and why:
- Lines are decoded as UTF-8 with errors="replace": Samba writes UTF-8, and a
  damaged byte must still reach the parser (which rejects or accepts the line
  visibly) rather than become a lone surrogate that fails later in the store.
- Blank lines emit nothing.  Positions are file offsets, so the position
  emitted with the next line covers them; a restart re-reads at most the blank
  lines at the end of the file, which emit nothing again.
- An oversized line becomes `Rejected("line too long ...")`, with its position,
  so it is counted and the position moves past it.
- A parser that raises is a bug, not bad input: the line is Rejected (naming
  the exception, not the content) and the source keeps going.
- `emit(..., block=True)`: a full pipeline queue stops reading (the file keeps
  the backlog), nothing is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from userseg.adapters.sources.follow import MAX_LINE, LineFollower, Oversized
from userseg.events.model import ParseResult, Rejected, Sink

log = logging.getLogger("userseg.sources.samba_log")

Parse = Callable[[str, datetime], ParseResult]


@dataclass(frozen=True, slots=True)
class SambaLogStats:
    """Counters for metrics; a snapshot, read from any thread."""

    lines: int  # lines read, blank and oversized ones included
    bytes: int  # bytes consumed, newlines included
    emitted: int  # results handed to the sink
    blank: int
    oversized: int
    parser_errors: int  # the parser raised (a bug; the line was emitted as Rejected)
    rotations: int
    truncations: int
    errors: int  # I/O and permission errors of the follower (each retried)


class SambaLogSource:
    """Follows the Samba auth-audit log in its own thread; `start()`, then `stop()` before the sink stops.

    `position` is the last position the pipeline persisted for this source
    (None on a first start: `start_at_end` decides whether history is
    replayed); `clock` gives the receive time handed to the parser.
    """

    def __init__(
        self,
        name: str,
        path: Path,
        sink: Sink,
        parse: Parse,
        *,
        position: str | None,
        clock: Callable[[], datetime],
        start_at_end: bool = True,
        max_line: int = MAX_LINE,
        rotate_grace: float = 5.0,
        recheck_interval: float = 5.0,
        retry_initial: float = 0.5,
    ) -> None:
        self.name = name
        self.path = path
        self._sink = sink
        self._parse = parse
        self._clock = clock
        self._max_line = max_line
        self._emitted = self._blank = self._parser_errors = 0
        self._follower = LineFollower(
            path,
            self._on_line,
            position=position,
            start_at_end=start_at_end,
            max_line=max_line,
            rotate_grace=rotate_grace,
            recheck_interval=recheck_interval,
            retry_initial=retry_initial,
            logger=log,
        )

    def start(self) -> None:
        self._follower.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop reading (prompt unless blocked in a full sink); True once the thread has ended."""
        return self._follower.stop(timeout)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once the start position is chosen (lines appended from then on are read)."""
        return self._follower.wait_ready(timeout)

    def stats(self) -> SambaLogStats:
        f = self._follower.stats()
        return SambaLogStats(
            lines=f.lines,
            bytes=f.bytes,
            emitted=self._emitted,
            blank=self._blank,
            oversized=f.oversized,
            parser_errors=self._parser_errors,
            rotations=f.rotations,
            truncations=f.truncations,
            errors=f.errors,
        )

    def _on_line(self, line: bytes | Oversized, position: str) -> None:
        result: ParseResult
        if isinstance(line, Oversized):
            start = line.prefix[:40].decode("utf-8", errors="replace")
            result = Rejected(
                f"line too long: {line.length} bytes, over the {self._max_line}-byte limit (starts {start!r})"
            )
        else:
            text = line.decode("utf-8", errors="replace")
            if not text or text.isspace():
                self._blank += 1
                return
            try:
                result = self._parse(text, self._clock())
            except Exception as exc:  # a parser bug must not stop the source
                self._parser_errors += 1
                log.exception("source %s: the parser failed on a line of %s", self.name, self.path)
                result = Rejected(f"parser error: {type(exc).__name__}")
        self._sink.emit(self.name, result, position, block=True)
        self._emitted += 1
