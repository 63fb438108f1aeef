"""An in-memory Sink for source and parser tests: records what a source emitted, in order."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from userseg.events.model import LoginEvent, ParseResult, Rejected, Skipped


@dataclass
class Emitted:
    source: str
    result: ParseResult
    position: str | None


@dataclass
class CollectingSink:
    """Thread-safe; `capacity` (items) makes non-blocking emits fail like a full queue would."""

    capacity: int | None = None
    items: list[Emitted] = field(default_factory=list)
    dropped: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)

    def emit(
        self, source: str, result: ParseResult, position: str | None = None, *, block: bool = True
    ) -> bool:
        with self.changed:
            if not block and self.capacity is not None and len(self.items) >= self.capacity:
                self.dropped += 1
                return False
            self.items.append(Emitted(source, result, position))
            self.changed.notify_all()
            return True

    def events(self) -> list[LoginEvent]:
        with self.changed:
            return [i.result for i in self.items if isinstance(i.result, LoginEvent)]

    def rejected(self) -> list[Rejected]:
        with self.changed:
            return [i.result for i in self.items if isinstance(i.result, Rejected)]

    def skipped(self) -> list[Skipped]:
        with self.changed:
            return [i.result for i in self.items if isinstance(i.result, Skipped)]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Emitted]:
        """Block until at least `count` items arrived (poll-free); raises TimeoutError otherwise."""
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.items) >= count, timeout):
                raise TimeoutError(f"expected {count} items, got {len(self.items)}")
            return list(self.items)
