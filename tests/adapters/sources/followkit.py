"""Helpers for the follower tests: a recording callback, a numbered-line writer that rotates, waiting,
and a follower driven step by step from the test's thread."""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from userseg.adapters.sources.follow import LineFollower, OnLine, Oversized
from userseg.adapters.sources.inotify import Inotify


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


def lines(*numbers: int) -> bytes:
    """These numbered lines, each with its newline, as one write."""
    return b"".join(numbered(i) + b"\n" for i in numbers)


def expect(count: int, start: int = 0) -> list[bytes | Oversized]:
    """What the follower delivers for `count` numbered lines from `start`."""
    return [numbered(i) for i in range(start, start + count)]


def append(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def rotate_rename(path: Path, keep: int = 5, archive: bool = False) -> None:
    """logrotate without copytruncate: shift path.N -> path.N+1, path -> path.1 (the caller recreates).

    `archive` keeps the file falling off the end as path.old<n> instead of
    letting the next rotation overwrite it: for stress tests, where a file
    rotated out of view before it was read would be lost by design.
    """
    _shift(path, keep, archive)
    path.rename(path.with_name(f"{path.name}.1"))


def copytruncate(path: Path, keep: int = 5, archive: bool = False) -> None:
    """logrotate's copytruncate: shift the rotated files, copy the log to path.1, truncate the log."""
    _shift(path, keep, archive)
    path.with_name(f"{path.name}.1").write_bytes(path.read_bytes())
    os.truncate(path, 0)


_ARCHIVED = itertools.count()


def _shift(path: Path, keep: int, archive: bool) -> None:
    for n in range(keep, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            newer = f"{path.name}.old{next(_ARCHIVED)}" if archive and n == keep else f"{path.name}.{n + 1}"
            older.rename(path.with_name(newer))


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
        stop_within(follower, 5.0)


def stop_within(follower: LineFollower, timeout: float) -> None:
    """Stop the follower; fail, saying where its thread is, if the thread has not ended within `timeout`."""
    if not follower.stop(timeout):
        thread = follower._thread
        frame = sys._current_frames().get(thread.ident) if thread is not None and thread.ident else None
        where = "".join(traceback.format_stack(frame)) if frame is not None else "(not running)"
        raise AssertionError(f"follower thread did not stop within {timeout} s; it is at:\n{where}")


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


class Stepped:
    """A follower that never starts its thread: `step()` is one wake-up of its loop (read events, sync).

    The test changes the files between steps, or inside one through a hook on
    the follower's own calls, so the interleaving under test is exactly the
    one written down, not one that timing might produce.
    """

    def __init__(self, path: Path, recorder: OnLine, **kwargs: object) -> None:
        self.follower = LineFollower(path, recorder, **kwargs)  # type: ignore[arg-type]
        self.follower._inotify = Inotify()

    def step(self) -> None:
        self.follower._drain_events()
        self.follower._sync()

    def close(self) -> None:
        self.follower._close()


@contextmanager
def stepped(path: Path, recorder: OnLine, **kwargs: object) -> Iterator[Stepped]:
    """A `Stepped` follower whose files and inotify descriptor are closed even when the test fails."""
    driver = Stepped(path, recorder, **kwargs)
    try:
        yield driver
    finally:
        driver.close()
