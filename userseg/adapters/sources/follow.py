"""Follow a growing log file line by line, across rotation and restarts, driven by inotify.

In the spirit of fail2ban's FileContainer (identity = inode + offset + hash of
the head of the file), but event-driven: the thread sleeps in poll() on an
inotify descriptor and a stop eventfd, so an appended line is delivered within
about a millisecond and stop() is immediate.  A stat of the path every
`recheck_interval` seconds is only a backstop.

What it guarantees, and how:
- Complete lines only; a partial last line waits for its newline.  CRLF loses
  its CR.  A line longer than `max_line` is delivered as `Oversized` (its length
  and first bytes) and skipped up to its newline without being buffered.
- After every line a position token: `Position.encode()` of the file's inode,
  the offset after the line and a hash of the file's first bytes.  The caller
  persists it with what it derived from the line; `position=` on the next start
  continues exactly after it (see `resume` below), so nothing is replayed or
  skipped.
- Rotation by rename (+ create) or delete (+ create): the open descriptor is
  read to EOF before the next file is opened from offset 0.  Where the files
  that replaced the path went is tracked from the directory's rename events
  (`_Successors`), so two rotations faster than we read still visit every
  file in order.  A rotated file stays open for `rotate_grace` seconds: lines a
  writer appends before it reopens its log (Samba until its SIGHUP) are still
  delivered, carrying the position of the current file, which already covers
  them.
- copytruncate (the file shrinks, or its head bytes change): read again from 0.
  Lines appended between our last read and the copy are in the copy only, and
  copytruncate itself loses lines written between its copy and its truncate.
- Every error (permission, I/O, directory missing, a failing callback) is
  logged with the path, counted and retried with exponential backoff; nothing
  escapes the thread.  A failing callback is retried with the same line.

Lines are bytes: decoding is the caller's decision (the Samba source decodes
UTF-8 with errors="replace").
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import select
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from userseg.adapters.sources.inotify import Inotify, Mask, SuccessorTracker

HEAD_BYTES = 1024  # the identity of a file: a hash of (up to) its first KiB, with its inode
MAX_LINE = 65_536
PREFIX_BYTES = 200  # kept from an oversized line, for the error message
_DIR_MASK = (
    Mask.CREATE
    | Mask.MOVED_TO
    | Mask.MOVED_FROM
    | Mask.DELETE
    | Mask.DELETE_SELF
    | Mask.MOVE_SELF
    | Mask.ONLYDIR
)
_FILE_MASK = Mask.MODIFY | Mask.ATTRIB | Mask.MOVE_SELF | Mask.DELETE_SELF
_DIR_GONE = Mask.IGNORED | Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.UNMOUNT


@dataclass(frozen=True, slots=True)
class Position:
    """Where reading stopped: the inode (dev for diagnostics), offset after a line, head hash.

    The device is recorded but not compared: the position is only ever matched
    against files in the followed directory, and some filesystems renumber
    their device across reboots; inode plus a hash of the first KiB is already
    unambiguous.
    """

    dev: int
    ino: int
    offset: int
    head_len: int
    head_hash: str

    def encode(self) -> str:
        return _encode(self.dev, self.ino, self.head_len, self.head_hash) + f"{self.offset}}}"

    @classmethod
    def decode(cls, text: str) -> Position:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"position is not JSON: {exc}") from None
        if not isinstance(raw, dict) or raw.get("v") != 1:
            raise ValueError("position is not a version-1 file position")
        fields = [raw.get(k) for k in ("dev", "ino", "off", "hlen")]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in fields):
            raise ValueError("position needs non-negative integers dev, ino, off, hlen")
        head = raw.get("head")
        if not isinstance(head, str) or len(head) != 32:
            raise ValueError("position needs a 32-digit hex head hash")
        dev, ino, off, hlen = (int(v) for v in fields)  # type: ignore[arg-type]
        if hlen > min(off, HEAD_BYTES):
            raise ValueError(f"position head length {hlen} exceeds its offset {off} or {HEAD_BYTES}")
        return cls(dev, ino, off, hlen, head)


def _encode(dev: int, ino: int, hlen: int, head: str) -> str:
    return f'{{"v":1,"dev":{dev},"ino":{ino},"hlen":{hlen},"head":"{head}","off":'


def head_hash(head: bytes) -> str:
    return hashlib.blake2b(head, digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Oversized:
    """A line over the limit: not delivered, only its length (without newline) and first bytes."""

    length: int
    prefix: bytes


@dataclass(frozen=True, slots=True)
class FollowStats:
    lines: int = 0  # delivered, oversized ones included
    bytes: int = 0  # consumed, newlines included
    rotations: int = 0
    truncations: int = 0
    oversized: int = 0
    errors: int = 0


OnLine = Callable[[bytes | Oversized, str], None]
_Deliver = Callable[["_Reader", bytes | Oversized, int], None]


class _Reader:
    """One open file: read offset, offset after the last delivered line, undelivered tail, head bytes."""

    __slots__ = (
        "_pos",
        "buf",
        "deadline",
        "dev",
        "fd",
        "head",
        "ino",
        "line_off",
        "max_line",
        "name",
        "read_off",
        "skip_len",
        "skip_prefix",
        "wd",
    )

    def __init__(self, fd: int, name: str, max_line: int) -> None:
        st = os.fstat(fd)
        self.fd, self.name, self.max_line = fd, name, max_line
        self.dev, self.ino = st.st_dev, st.st_ino
        self.wd: int | None = None
        self.deadline: float | None = None  # set once rotated away: closed after the grace period
        self._pos: tuple[int, str] = (-1, "")  # (head length, encoded prefix) of the last position
        self.start_at(0)

    def start_at(self, offset: int) -> None:
        self.read_off = self.line_off = offset
        self.buf = b""
        self.skip_len = -1  # >= 0: inside an oversized line, this many of its bytes discarded
        self.skip_prefix = b""
        self.head = os.pread(self.fd, min(offset, HEAD_BYTES), 0) if offset else b""

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def matches(self, pos: Position) -> bool:
        """Is this the file `pos` was taken in (same inode, long enough, same head)?"""
        if self.ino != pos.ino or self.size() < pos.offset:
            return False
        return head_hash(os.pread(self.fd, pos.head_len, 0)) == pos.head_hash

    def tail_offset(self) -> int:
        """Offset just after the last newline: where "start at end" begins without cutting a line."""
        size = self.size()
        window = min(size, self.max_line + 1)
        newline = os.pread(self.fd, window, size - window).rfind(b"\n")
        if newline >= 0:
            return size - window + newline + 1
        return 0 if size <= self.max_line else size - window

    def _rewritten(self) -> bool:
        """Shrunk below what we read, or rewritten from the start (copytruncate, then refilled fast)."""
        if self.size() < self.read_off:
            return True
        return bool(self.head) and os.pread(self.fd, len(self.head), 0) != self.head

    def position(self, offset: int) -> str:
        hlen = min(offset, len(self.head))
        if self._pos[0] != hlen:
            self._pos = (hlen, _encode(self.dev, self.ino, hlen, head_hash(self.head[:hlen])))
        return f"{self._pos[1]}{offset}}}"

    def pump(self, deliver: _Deliver, chunk: int, on_truncate: Callable[[], None]) -> None:
        """Read to EOF in big chunks, delivering complete lines.

        Truncation is checked before every read and the head again after it,
        so data read across a copytruncate is discarded, not delivered.
        Delivery may block for long (back-pressure), so this loops until a
        read finds nothing new.
        """
        if self.buf:
            self.split(deliver)  # lines a failed delivery left behind
        while True:
            if self._rewritten():
                on_truncate()
                self.start_at(0)
            data = os.pread(self.fd, chunk, self.read_off)
            if not data:
                return
            if self.head and os.pread(self.fd, len(self.head), 0) != self.head:
                continue  # rewritten while we read: start over
            if len(self.head) < HEAD_BYTES and self.read_off == len(self.head):
                self.head = (self.head + data)[:HEAD_BYTES]
            self.read_off += len(data)
            self.buf += data
            self.split(deliver)

    def split(self, deliver: _Deliver, final: bool = False) -> None:
        """Deliver the complete lines in `buf` (and an unterminated tail when `final`).

        A failing `deliver` leaves its line in `buf`, to be offered again.
        """
        buf, start = self.buf, 0
        try:
            while True:
                newline = buf.find(b"\n", start)
                end = newline if newline >= 0 else len(buf)
                if newline < 0 and not (final and (end > start or self.skip_len >= 0)):
                    if self.skip_len >= 0:
                        self.skip_len += end - start
                        start = end
                    elif end - start > self.max_line:
                        self.skip_len, self.skip_prefix = end - start, buf[start : start + PREFIX_BYTES]
                        start = end
                    return
                length = end - start
                item: bytes | Oversized
                if self.skip_len >= 0:
                    item = Oversized(self.skip_len + length, self.skip_prefix)
                elif length > self.max_line:
                    item = Oversized(length, buf[start : start + PREFIX_BYTES])
                else:
                    item = buf[start : end - 1 if length and buf[end - 1] == 13 else end]
                after = self.line_off + max(self.skip_len, 0) + length + (newline >= 0)
                deliver(self, item, after)
                self.line_off, self.skip_len, start = after, -1, end + 1
                if newline < 0:
                    return
        finally:
            self.buf = buf[start:] if start else buf


class LineFollower:
    """Follows one path in its own thread, calling `on_line(line, position)` for every line, in order.

    `on_line` runs in the follower's thread and may block (back-pressure); if
    it raises, the error is logged and the same line is offered again after a
    backoff.  `position` is a token from an earlier run (see module doc); None
    starts at the end of the file (`start_at_end`, the default: a first start
    does not replay history) or at its beginning.  A file that appears only
    after the follower looked is read from its beginning.
    """

    def __init__(
        self,
        path: Path,
        on_line: OnLine,
        *,
        position: str | None = None,
        start_at_end: bool = True,
        max_line: int = MAX_LINE,
        chunk_size: int = 256 * 1024,
        recheck_interval: float = 5.0,
        rotate_grace: float = 5.0,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self.path = Path(os.path.abspath(path))
        self._on_line, self._position, self._start_at_end = on_line, position, start_at_end
        self._max_line, self._chunk = max_line, chunk_size
        self._recheck, self._grace = recheck_interval, rotate_grace
        self._retry_initial, self._retry_max = retry_initial, retry_max
        self._log = logger or logging.getLogger("userseg.sources.follow")
        self._thread: threading.Thread | None = None
        self._wake = -1  # eventfd: stop() writes it, the thread polls it with inotify
        self._stopping = False
        self._resolved = threading.Event()  # the start file and offset are chosen
        self._stats = dict.fromkeys(FollowStats.__dataclass_fields__, 0)
        # owned by the thread
        self._inotify: Inotify | None = None
        self._dir_wd: int | None = None
        self._current: _Reader | None = None
        self._draining: list[_Reader] = []  # rotated away, still read until their grace period ends
        self._successors = SuccessorTracker(self.path.name)
        self._waiting = False

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"follower of {self.path} already started")
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name=f"follow:{self.path.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop promptly (also while waiting for the file); True once the thread has ended.

        Only a delivery blocked in `on_line` delays it.  Call again after a
        False to finish the cleanup.
        """
        thread = self._thread
        if thread is None or self._wake < 0:
            return True
        self._stopping = True
        os.eventfd_write(self._wake, 1)
        if thread is threading.current_thread():
            return False
        thread.join(timeout)
        if thread.is_alive():
            return False
        os.close(self._wake)  # only now: the thread polls it until it ends
        self._wake = -1
        return True

    def stats(self) -> FollowStats:
        return FollowStats(**self._stats)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the starting point is chosen: lines appended after this are delivered."""
        return self._resolved.wait(timeout)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wake, select.POLLIN)
        backoff = retry_at = recheck_at = 0.0  # sync at once
        try:
            while not self._stopping:
                deadline = min([max(retry_at, recheck_at), *(r.deadline or math.inf for r in self._draining)])
                wait = max(0.0, deadline - time.monotonic())
                ready = poller.poll(math.ceil(wait * 1000))
                if self._stopping:
                    break
                try:
                    if self._inotify is None:
                        self._inotify = Inotify()
                        poller.register(self._inotify.fileno(), select.POLLIN)
                    self._drain_events()
                    now = time.monotonic()
                    if now < retry_at or (not ready and now < recheck_at and now < deadline):
                        continue  # in backoff (events are still tracked), or a spurious wake-up
                    self._sync()
                    backoff = retry_at = 0.0
                    recheck_at = time.monotonic() + self._recheck
                except Exception as exc:  # the thread must survive anything, and retry
                    backoff = min(self._retry_max, backoff * 2 or self._retry_initial)
                    retry_at = time.monotonic() + backoff
                    self._stats["errors"] += 1
                    self._log.warning(
                        "following %s: %s; retrying in %.1f s",
                        self.path,
                        _describe(exc),
                        backoff,
                        exc_info=not isinstance(exc, OSError | _DeliveryFailed),
                    )
        finally:
            for reader in [*self._draining, *([self._current] if self._current else [])]:
                os.close(reader.fd)
            self._draining, self._current = [], None
            if self._inotify is not None:
                self._inotify.close()

    def _drain_events(self) -> set[str]:
        """Feed queued inotify events to the successor tracker; returns the directory names they touched."""
        assert self._inotify is not None
        touched: set[str] = set()
        for event in self._inotify.read_events():
            if event.mask & Mask.Q_OVERFLOW:
                self._log.warning("inotify queue overflow following %s; relying on stat", self.path)
                self._successors.reset()
            elif self._dir_wd is not None and event.wd == self._dir_wd:
                if event.mask & _DIR_GONE:
                    self._dir_wd = None  # re-added on the next sync, on whatever directory has the name
                    if not event.mask & Mask.IGNORED:
                        self._inotify.rm_watch(event.wd)
                elif event.name:
                    self._successors.feed(event)
                    touched.add(event.name)
        return touched

    def _sync(self) -> None:
        """Read everything new, switching files as rotation requires (also the periodic safety check)."""
        assert self._inotify is not None
        if self._dir_wd is None:
            self._dir_wd = self._inotify.add_watch(self.path.parent, _DIR_MASK)
            self._drain_events()
        if not self._resolved.is_set():
            self._current = self._initial()
            self._resolved.set()
        now = time.monotonic()
        for reader in list(self._draining):
            try:
                self._pump(reader)
            except OSError as exc:  # a rotated file must not hold up the current one
                self._stats["errors"] += 1
                self._log.warning(
                    "%s: dropping the rotated file %s: %s", self.path, reader.name, _describe(exc)
                )
                reader.deadline = now
            if reader.deadline is not None and now >= reader.deadline:
                self._finish(reader)
        while True:
            current = self._current
            failure: OSError | None = None
            if current is not None:
                try:
                    self._pump(current)
                except OSError as exc:
                    failure = exc
            successor = self._successor()
            if failure is not None and successor is None:
                raise failure
            if successor is None:
                break
            if current is not None:
                self._stats["rotations"] += 1
                self._log.info("%s was rotated; continuing with the file at %s", self.path, successor.name)
                # an unreadable old file is given up at once (the next loop turn), the new one is readable
                current.deadline = now + (self._grace if failure is None else 0.0)
                self._draining.append(current)
            self._current = successor
        if self._current is None and not self._waiting:
            self._log.info("waiting for %s to appear", self.path)
        self._waiting = self._current is None

    def _pump(self, reader: _Reader) -> None:
        reader.pump(self._deliver, self._chunk, self._truncated)

    def _truncated(self) -> None:
        self._stats["truncations"] += 1
        self._log.info("%s was truncated (copytruncate?); reading it from the start", self.path)

    def _open(self, name: str) -> _Reader:
        """Open a regular file of the directory (O_NONBLOCK: a FIFO must not hang the thread)."""
        fd = os.open(self.path.parent / name, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(self.path.parent / name))
            return _Reader(fd, name, self._max_line)
        except BaseException:
            os.close(fd)
            raise

    def _watch(self, reader: _Reader) -> _Reader:
        assert self._inotify is not None  # the inode we hold, whatever its name is by now
        reader.wd = self._inotify.add_watch(f"/proc/self/fd/{reader.fd}", _FILE_MASK)
        return reader

    def _successor(self) -> _Reader | None:
        """Open the file that replaced the current one, if any (None: keep reading the current one)."""
        for _ in range(100):
            name = self._successors.first()
            if name is None:
                name = self.path.name
                if self._current is not None:
                    try:
                        st = os.stat(self.path)
                    except FileNotFoundError:
                        return None  # renamed or deleted, nothing new yet: the open file may still grow
                    if st.st_ino == self._current.ino and st.st_dev == self._current.dev:
                        return None
            try:
                reader = self._open(name)
            except FileNotFoundError:
                if self._successors.first() is None:
                    return None
                self._successors.pop()
                continue
            if name in self._drain_events():  # renamed or replaced while we opened it: which file is it?
                os.close(reader.fd)
                continue
            if self._successors.first() is not None:
                self._successors.pop()
            held = [*self._draining, *([self._current] if self._current else [])]
            if any(r.ino == reader.ino and r.dev == reader.dev for r in held):
                os.close(reader.fd)  # a late event about a file we already hold
                continue
            return self._watch(reader)
        raise RuntimeError(f"the directory of {self.path} keeps changing")

    def _initial(self) -> _Reader | None:
        """Apply the saved position (or start_at_end) to pick the first file and offset."""
        from_start = not self._start_at_end
        if self._position is not None:
            try:
                position = Position.decode(self._position)
            except ValueError as exc:
                self._log.warning("ignoring the saved position of %s: %s", self.path, exc)
            else:
                return self._resume(position)
        reader = self._successor()
        if reader is not None and not from_start:
            reader.start_at(reader.tail_offset())
        return reader

    def _resume(self, pos: Position) -> _Reader | None:
        """Continue after `pos`: in the same file, in the rotated file it became, or from 0."""
        reader = self._successor()
        if reader is not None and reader.ino == pos.ino:
            if reader.matches(pos):
                self._log.info("resuming %s at offset %d", self.path, pos.offset)
                reader.start_at(pos.offset)
            else:
                self._stats["truncations"] += 1
                self._log.info("%s was truncated while we were stopped; reading it from the start", self.path)
            return reader
        old = self._find_rotated(pos)
        if old is None:
            self._log.warning(
                "the file of the saved position of %s is gone (rotated more than once?); "
                "reading the current file from the start",
                self.path,
            )
            return reader
        self._log.info("%s was rotated while we were stopped; finishing %s first", self.path, old.name)
        if reader is not None:
            self._release(reader)
        self._successors.reset(seed=True)  # the current file comes next, wherever it moves meanwhile
        old.start_at(pos.offset)
        return self._watch(old)

    def _find_rotated(self, pos: Position) -> _Reader | None:
        """The file of `pos` under another name in the directory (logrotate's `log.1`), if unchanged."""
        with os.scandir(self.path.parent) as entries:
            names = sorted(e.name for e in entries if e.inode() == pos.ino and e.name != self.path.name)
        for name in names:
            try:
                reader = self._open(name)
            except OSError:
                continue
            try:
                if reader.matches(pos):
                    return reader
            except OSError:
                pass
            os.close(reader.fd)
        return None

    def _deliver(self, reader: _Reader, item: bytes | Oversized, after: int) -> None:
        current = self._current
        if reader.deadline is not None and current is not None:
            position = current.position(current.line_off)  # a late line of a rotated file
        else:
            position = reader.position(after)
        try:
            self._on_line(item, position)
        except Exception as exc:  # kept apart from read errors: the line is offered again, the file kept
            raise _DeliveryFailed(f"delivering a line failed: {type(exc).__name__}: {exc}") from exc
        self._stats["lines"] += 1
        self._stats["bytes"] += after - reader.line_off
        if isinstance(item, Oversized):
            self._stats["oversized"] += 1

    def _finish(self, reader: _Reader) -> None:
        """End of a rotated file's grace period: deliver an unterminated last line, close it."""
        if reader.buf or reader.skip_len >= 0:
            self._log.warning("%s: the rotated file %s ends without a newline", self.path, reader.name)
            with contextlib.suppress(OSError):
                reader.split(self._deliver, final=True)
        self._draining.remove(reader)
        self._release(reader)

    def _release(self, reader: _Reader) -> None:
        if reader.wd is not None and self._inotify is not None:
            self._inotify.rm_watch(reader.wd)
        os.close(reader.fd)


class _DeliveryFailed(Exception):
    """`on_line` raised: retried with the same line, never mistaken for an unreadable file."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return f"{type(exc).__name__}: {exc}"
