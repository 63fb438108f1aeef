"""Helpers for the follower tests: a recording callback, a numbered-line writer that rotates, waiting."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from userseg.adapters.sources.follow import LineFollower, Oversized


@dataclass
class Recorder:
    """The `on_line` callback: records (line, position) in order; waiting is condition-based, not polled."""

    items: list[tuple[bytes | Oversized, str]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # perf_counter() at delivery
    changed: threading.Condition = field(default_factory=threading.Condition)

    def __call__(self, line: bytes | Oversized, position: str) -> None:
        with self.changed:
            self.items.append((line, position))
            self.times.append(time.perf_counter())
            self.changed.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[bytes | Oversized, str]]:
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.items) >= count, timeout):
                raise TimeoutError(f"expected {count} lines, got {len(self.items)}")
            return list(self.items)

    def lines(self) -> list[bytes | Oversized]:
        with self.changed:
            return [line for line, _ in self.items]

    def last_position(self) -> str:
        with self.changed:
            return self.items[-1][1]


def numbered(i: int, pad: int = 60) -> bytes:
    """A recognisable line (without newline): the sequence number, then filler."""
    return b"line %08d " % i + b"x" * pad


def append(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def rotate_rename(path: Path, keep: int = 5) -> None:
    """logrotate without copytruncate: shift path.N -> path.N+1, path -> path.1 (the caller recreates)."""
    for n in range(keep, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            older.rename(path.with_name(f"{path.name}.{n + 1}"))
    path.rename(path.with_name(f"{path.name}.1"))


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll with a deadline, for state that offers no event to wait on (files written by another process)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.002)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextmanager
def following(path: Path, recorder: Recorder, **kwargs: object) -> Iterator[LineFollower]:
    """A started follower that is stopped (and checked stopped) even when the test fails."""
    follower = LineFollower(path, recorder, **kwargs)  # type: ignore[arg-type]
    follower.start()
    try:
        yield follower
    finally:
        assert follower.stop(5.0), "follower thread did not stop"


class Writer:
    """Appends numbered lines from a thread, running `actions[i]` (rotations) before line i.

    The writer keeps one O_APPEND descriptor open, like a daemon does, and
    reopens the path only when an action says so.  `pace` (lines per
    millisecond) spreads the writing over time so that readers overlap it.
    """

    def __init__(
        self,
        path: Path,
        count: int,
        actions: dict[int, Callable[[Writer], None]] | None = None,
        pad: int = 60,
        pace: int = 0,
    ) -> None:
        self.path, self.count, self.actions, self.pad, self.pace = path, count, actions or {}, pad, pace
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.written = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="test-writer", daemon=True)

    def reopen(self) -> None:
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _run(self) -> None:
        try:
            started = time.monotonic()
            for i in range(self.count):
                action = self.actions.get(i)
                if action is not None:
                    action(self)
                if self.pace and i % self.pace == 0:
                    ahead = started + i / self.pace / 1000 - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)  # pacing the load, not synchronising
                os.write(self.fd, numbered(i, self.pad) + b"\n")
                self.written = i + 1
        except BaseException as exc:  # surfaced by join()
            self.error = exc

    def start(self) -> Writer:
        self._thread.start()
        return self

    def join(self, timeout: float = 30.0) -> None:
        """Wait for the end (idempotent, also when never started); re-raises the writer's error."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError("writer did not finish")
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.error is not None:
            raise self.error
