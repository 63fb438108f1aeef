"""Follow a growing log file line by line, across rotation and restarts, driven by inotify.

In the spirit of fail2ban's FileContainer (identity = inode + offset + hash of
the head of the file), but event-driven: the thread sleeps in poll() on an
inotify descriptor and a stop eventfd, so an appended line is delivered within
about a millisecond and stop() is immediate, also amid a backlog: every loop
of the thread (lines, files of a rotation storm, directory scans) checks the
stop flag between two steps, since a writer as fast as we are, or rotating
without pause, would otherwise never let a sync end.  A stat of the path
every `recheck_interval` seconds is only a backstop.  Reading one open file (lines,
offsets, truncation, position tokens) is `follow_reader.FileReader`; this
module decides which file to read.

Lines: complete lines only; a partial last line waits for its newline.  CRLF
loses its CR.  A line longer than `max_line` is delivered as `Oversized` (its
length and first bytes) and skipped up to its newline without being buffered.
Lines are bytes: decoding is the caller's decision (the Samba source decodes
UTF-8 with errors="replace").

Positions: after every line a token, `Position.encode()` of the file's inode,
the offset after the line and a hash of the file's first bytes.  The caller
persists it with what it derived from the line; `position=` on the next start
continues exactly after it (see `_resume`), so nothing is replayed or skipped.

Guaranteed while running: every line appended to the followed file, and to
every file that later appears at its name, is delivered once, in file order
and in the order the files appeared, whatever the interleaving of
- appends (by one writer or several, each line in one write),
- rotation by rename, any number of times faster than we read, with renames
  of rotated files (logrotate's `log.1 -> log.2`) and `create` of a new file,
- delete + create (the file we hold stays readable to its end),
- copytruncate: what was appended after our last read is recovered from the
  copy, a file of the directory whose name starts with the followed name and
  that holds our head and our last bytes read at our offset (`continues_in`).
How: the successor is looked for before the current file is read to its
end, so everything written to the old file before the rotation goes out
before the new file's first line.  Where the files that replaced the
current one went is tracked from the directory's events (`SuccessorTracker`,
files by creation order, names through renames); a name is used only on a
settled view of those events and checked again after the open (`_settle`:
one read of the directory waits out any rename or create in progress, whose
events are queued by then).  A name that vanished is looked up again, not
given up.  A rotated file stays open for `rotate_grace` seconds: lines a
writer appends before it reopens its log (Samba until its SIGHUP) are still
delivered, after lines of newer files, carrying the position of the current
file, which already covers them.

Not guaranteed (nobody can read what is gone, or tell files apart without
their events):
- a rotated file deleted, overwritten by a rename, or moved out of the
  directory before we opened it (we had not reached it yet);
- an inotify queue overflow: we continue with the file at the name, files
  rotated in between may be skipped (logged);
- copytruncate: lines written between its copy and its truncate (they are in
  neither file); a copy already compressed, deleted or placed in another
  directory when we notice the truncation; content truncated before we read
  any of it (nothing identifies its copy); a file truncated and refilled
  past our offset with the same first KiB (indistinguishable from appends);
- late lines written to a rotated file after its grace period;
- after a stop: resuming continues in the position's file (found by inode,
  under any name in the directory), then with the file at the name; files
  rotated in between, and a copytruncate copy, are not read.

Every error (permission, I/O, directory missing, a failing callback) is
logged with the path, counted and retried with exponential backoff; nothing
escapes the thread.  A failing callback is retried with the same line.
"""

from __future__ import annotations

import contextlib
import errno
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

from userseg.adapters.sources.follow_reader import (
    HEAD_BYTES,
    MAX_LINE,
    FileReader,
    Oversized,
    Position,
    head_hash,
)
from userseg.adapters.sources.inotify import Inotify, Mask, SuccessorTracker

__all__ = [
    "HEAD_BYTES",
    "MAX_LINE",
    "FollowStats",
    "LineFollower",
    "OnLine",
    "Oversized",
    "Position",
    "head_hash",
]

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
_ATTEMPTS = 100  # a directory that changes under us this often is an error (retried with backoff)


@dataclass(frozen=True, slots=True)
class FollowStats:
    lines: int = 0  # delivered, oversized ones included
    bytes: int = 0  # consumed, newlines included
    rotations: int = 0
    truncations: int = 0
    oversized: int = 0
    errors: int = 0


OnLine = Callable[[bytes | Oversized, str], None]


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
        self._current: FileReader | None = None
        self._draining: list[FileReader] = []  # rotated away, still read until their grace period ends
        self._next: FileReader | None = None  # the successor, opened, until the current file is read out
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

        Only a delivery blocked in `on_line` delays it: the thread gives up any
        backlog at the next line, file or directory scan (`_Stopped`), and no
        line is delivered after the delivery in progress.  Call again after a
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
        except _Stopped:
            pass  # raised by `_checkpoint` anywhere in a sync: what is left of the backlog is given up
        finally:
            self._close()

    def _checkpoint(self) -> None:
        """Between two steps of any loop of the thread: unwind it at once if stop() was called."""
        if self._stopping:
            raise _Stopped

    def _close(self) -> None:
        for reader in self._held():
            os.close(reader.fd)
        self._draining, self._current, self._next = [], None, None
        if self._inotify is not None:
            self._inotify.close()

    def _held(self) -> list[FileReader]:
        """Every file we have open: draining, current, and the successor about to be current."""
        return [*self._draining, *(r for r in (self._current, self._next) if r is not None)]

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
                    self._successors.reset()  # its names meant the old directory
                    if not event.mask & Mask.IGNORED:
                        self._inotify.rm_watch(event.wd)
                elif event.name:
                    self._successors.feed(event)
                    touched.add(event.name)
        return touched

    def _settle(self) -> set[str]:
        """Read the events of every directory change made so far; returns the names they touched.

        inotify promises no such thing by itself: a rename, create or unlink
        is visible (to an open() by name) a moment before its events are
        queued.  But Linux queues them while the change still holds the
        directory's i_rwsem, and getdents() takes that lock, so one read of
        the directory is a barrier.  (Were a filesystem to differ, what is
        left is the old race of a few microseconds, not a systematic loss.)
        The two halves of a rename are queued one after the other; a
        successor's MOVED_FROM still unmatched after a later barrier left the
        directory (`moves_pending`).
        """
        touched: set[str] = set()
        for _ in range(_ATTEMPTS):
            self._checkpoint()
            with os.scandir(self.path.parent) as entries:
                next(entries, None)  # one getdents(): waits out any change in progress
            touched |= self._drain_events()
            if not self._successors.moves_pending():
                return touched
        raise RuntimeError(f"renames in the directory of {self.path} do not complete")

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
            self._checkpoint()
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
            self._checkpoint()  # a storm of rotations can keep this loop going for as long as it lasts
            # Look for a successor BEFORE reading the current file to its end: once a successor
            # exists, everything written before the rotation is in the current file, so its lines
            # go out first.  Opened but not yet switched to, it survives a failed delivery in `_next`.
            if self._next is None:
                self._next = self._successor()
            current, successor = self._current, self._next
            failure: OSError | None = None
            if current is not None:
                try:
                    self._pump(current)
                except OSError as exc:
                    failure = exc
            if failure is not None and successor is None:
                raise failure
            if successor is None:
                if self._successors.tracking:
                    continue  # events read while pumping (a copy lookup) announced a new file
                break
            if current is not None:
                self._stats["rotations"] += 1
                self._log.info("%s was rotated; continuing with the file at %s", self.path, successor.name)
                # an unreadable old file is given up at once (the next loop turn), the new one is readable
                current.deadline = now + (self._grace if failure is None else 0.0)
                self._draining.append(current)
            self._current, self._next = successor, None
        if self._current is None and not self._waiting:
            self._log.info("waiting for %s to appear", self.path)
        self._waiting = self._current is None

    def _pump(self, reader: FileReader) -> None:
        reader.pump(self._deliver, self._chunk, self._truncated, self._checkpoint)

    def _truncated(self, reader: FileReader) -> None:
        """`reader`'s file shrank or was rewritten: first deliver what its copy holds beyond our offset."""
        copy = self._find_copy(reader)
        if copy is not None:
            try:
                reader.absorb(copy[0], self._deliver, self._chunk, self._checkpoint)
            finally:
                os.close(copy[0])
        self._stats["truncations"] += 1
        self._log.info(
            "%s was truncated (copytruncate?)%s; reading it from the start",
            self.path,
            f"; read the rest of its old content from {copy[1]}" if copy else "",
        )

    def _find_copy(self, reader: FileReader) -> tuple[int, str] | None:
        """A copytruncate copy of what `reader` read (see `continues_in`): an open descriptor and its name.

        Rotated files may be renamed while we look (the next rotation shifting
        log.1 to log.2), and a scan of the directory can miss a file being
        renamed; so it is repeated while events report changes to the names
        it covers.
        """
        if not reader.read_off:
            return None  # nothing read, nothing to recognise the copy by
        prefix = self.path.name
        rejected = {(r.dev, r.ino) for r in self._held()}  # a renamed file of ours is no copy
        self._settle()
        for _ in range(_ATTEMPTS):
            self._checkpoint()
            found = self._scan_for_copy(reader, rejected)
            if found is not None or not any(name.startswith(prefix) for name in self._settle()):
                return found
        return None

    def _scan_for_copy(self, reader: FileReader, rejected: set[tuple[int, int]]) -> tuple[int, str] | None:
        prefix, names = self.path.name, []
        with os.scandir(self.path.parent) as entries:
            for entry in entries:
                if not entry.name.startswith(prefix) or entry.name == prefix:
                    continue
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode) and st.st_size >= reader.read_off:
                        names.append(entry.name)
        for name in sorted(names):
            self._checkpoint()  # a directory may hold years of rotated files
            try:
                fd = os.open(self.path.parent / name, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) not in rejected and reader.continues_in(fd):
                    return fd, name
                rejected.add((st.st_dev, st.st_ino))
            except OSError:
                pass
            os.close(fd)
        return None

    def _open(self, name: str) -> FileReader:
        """Open a regular file of the directory (O_NONBLOCK: a FIFO must not hang the thread)."""
        fd = os.open(self.path.parent / name, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(self.path.parent / name))
            return FileReader(fd, name, self._max_line)
        except BaseException:
            os.close(fd)
            raise

    def _watch(self, reader: FileReader) -> FileReader:
        assert self._inotify is not None  # the inode we hold, whatever its name is by now
        reader.wd = self._inotify.add_watch(f"/proc/self/fd/{reader.fd}", _FILE_MASK)
        return reader

    def _replaced(self) -> bool:
        """Is another file than the current one at the followed name (False also when there is none)?"""
        current = self._current
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # renamed or deleted, nothing new yet: the open file may still grow
        return current is None or (st.st_ino, st.st_dev) != (current.ino, current.dev)

    def _successor(self) -> FileReader | None:
        """Open the file that replaced the current one, if any (None: keep reading the current one).

        The tracker's names are only as fresh as the events read so far, and a
        name can change between reading it and opening it.  So a name is
        chosen on a settled view and the open is confirmed by a second settle:
        if no event touched the name in between, the file opened is the one
        meant.  A name that vanished is looked up again, never given up while
        events still explain it (a rotated file renamed once more is still due).
        """
        tracker = self._successors
        for _ in range(_ATTEMPTS):
            self._checkpoint()
            if self._current is not None and not tracker.tracking and not self._replaced():
                return None  # the common case, a wake-up for an append: nothing new at the name
            self._settle()
            name = tracker.first()
            tracked = name is not None
            if name is None:
                if self._current is not None and not self._replaced():
                    return None
                name = self.path.name  # not seen arriving (the start, a queue overflow): the file there
            try:
                reader = self._open(name)
            except FileNotFoundError:
                if tracked and name not in self._settle():  # settled, and still not there: events were lost
                    self._log.warning("%s: the rotated file %s vanished unreported, skipped", self.path, name)
                    tracker.pop()
                if tracked or tracker.tracking or self._replaced():
                    continue  # renamed or deleted meanwhile: the events tell where it went
                return None  # nothing at the name yet
            try:
                if name not in self._settle():  # else renamed or replaced around our open: which file is it?
                    if tracked:
                        tracker.pop()
                    if not any(r.ino == reader.ino and r.dev == reader.dev for r in self._held()):
                        return self._watch(reader)
            except BaseException:  # _Stopped, a failed watch, a directory that never settles
                os.close(reader.fd)
                raise
            os.close(reader.fd)  # moved: look again; held: a late event about a file we already hold
        raise RuntimeError(f"the directory of {self.path} keeps changing")

    def _initial(self) -> FileReader | None:
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

    def _resume(self, pos: Position) -> FileReader | None:
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

    def _find_rotated(self, pos: Position) -> FileReader | None:
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

    def _deliver(self, reader: FileReader, item: bytes | Oversized, after: int) -> None:
        self._checkpoint()  # the line stays in the reader's buffer, undelivered
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

    def _finish(self, reader: FileReader) -> None:
        """End of a rotated file's grace period: deliver an unterminated last line, close it."""
        if reader.buf or reader.skip_len >= 0:
            self._log.warning("%s: the rotated file %s ends without a newline", self.path, reader.name)
            with contextlib.suppress(OSError):
                reader.split(self._deliver, final=True)
        self._draining.remove(reader)
        self._release(reader)

    def _release(self, reader: FileReader) -> None:
        if reader.wd is not None and self._inotify is not None:
            self._inotify.rm_watch(reader.wd)
        os.close(reader.fd)


class _Stopped(BaseException):
    """stop() was called: unwinds the thread from any depth (a BaseException, so no error handler
    of the thread mistakes it for a failure to log and retry; like GeneratorExit)."""


class _DeliveryFailed(Exception):
    """`on_line` raised: retried with the same line, never mistaken for an unreadable file."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return f"{type(exc).__name__}: {exc}"
