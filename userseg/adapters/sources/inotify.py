"""Linux inotify through ctypes: just enough to follow a log file without polling.

The standard library has no inotify binding and a third-party one is not worth
a dependency for five calls.  The descriptor is non-blocking and close-on-exec,
so a follower can `poll()` it together with a stop eventfd: it sleeps until the
kernel reports a change (an append reaches the reader within a millisecond) or
until it is told to stop (immediately), and never spins.

`SuccessorTracker` interprets a directory's events for a follower: where the
files that replaced the followed name (logrotate's rename + create) went.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import errno
import os
import struct
from collections import deque
from dataclasses import dataclass

_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then `len` bytes of name
_READ_SIZE = 64 * 1024  # far above one event (16 + NAME_MAX + 1 bytes): a read never fails with EINVAL


def _load_libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_init1.restype = ctypes.c_int
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_add_watch.restype = ctypes.c_int
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.inotify_rm_watch.restype = ctypes.c_int
    return libc


_libc = _load_libc()


class Mask(enum.IntFlag):
    """Event bits of <sys/inotify.h> (watch masks and reported events)."""

    ACCESS = 0x1
    MODIFY = 0x2
    ATTRIB = 0x4
    CLOSE_WRITE = 0x8
    CLOSE_NOWRITE = 0x10
    OPEN = 0x20
    MOVED_FROM = 0x40
    MOVED_TO = 0x80
    CREATE = 0x100
    DELETE = 0x200
    DELETE_SELF = 0x400
    MOVE_SELF = 0x800
    UNMOUNT = 0x2000  # reported only
    Q_OVERFLOW = 0x4000  # reported only, wd == -1: events were lost
    IGNORED = 0x8000  # reported only: the watch is gone (rm_watch, file deleted, unmount)
    ONLYDIR = 0x1000000  # watch flags
    DONT_FOLLOW = 0x2000000
    EXCL_UNLINK = 0x4000000
    MASK_ADD = 0x20000000
    ISDIR = 0x40000000  # reported only: the subject is a directory
    ONESHOT = 0x80000000


IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class InotifyEvent:
    wd: int  # -1 for Q_OVERFLOW
    mask: Mask
    cookie: int  # pairs a MOVED_FROM with its MOVED_TO
    name: str  # entry name inside a watched directory ("" for events on the watched inode itself)


def decode_events(data: bytes) -> list[InotifyEvent]:
    """Split one read() of an inotify descriptor into events (pure: the kernel never splits an event)."""
    events: list[InotifyEvent] = []
    offset = 0
    while offset + _EVENT.size <= len(data):
        wd, mask, cookie, length = _EVENT.unpack_from(data, offset)
        offset += _EVENT.size
        raw = data[offset : offset + length]
        if len(raw) < length:
            raise ValueError(f"truncated inotify event: name needs {length} bytes, {len(raw)} left")
        offset += length
        events.append(InotifyEvent(wd, Mask(mask), cookie, os.fsdecode(raw.rstrip(b"\0"))))
    if offset != len(data):
        raise ValueError(f"truncated inotify event header: {len(data) - offset} stray bytes")
    return events


class Inotify:
    """One inotify instance; `fileno()` is for poll/select, `read_events()` never blocks."""

    def __init__(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self._fd: int | None = fd

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError("inotify instance is closed")
        return self._fd

    def add_watch(self, path: str | os.PathLike[str], mask: Mask) -> int:
        """Watch `path` (resolved now, the watch then follows the inode); returns the watch descriptor.

        Adding a watch for an inode that is already watched returns the same
        descriptor and replaces its mask (unless MASK_ADD is given).
        """
        wd = _libc.inotify_add_watch(self.fileno(), os.fsencode(path), int(mask))
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch: {os.strerror(err)}", os.fspath(path))
        return int(wd)

    def rm_watch(self, wd: int) -> None:
        """Remove a watch; a watch the kernel already dropped (file deleted) is not an error."""
        if _libc.inotify_rm_watch(self.fileno(), wd) < 0:
            err = ctypes.get_errno()
            if err != errno.EINVAL:
                raise OSError(err, f"inotify_rm_watch: {os.strerror(err)}")

    def read_events(self) -> list[InotifyEvent]:
        """Every event queued now, in kernel order; [] when there is none."""
        events: list[InotifyEvent] = []
        fd = self.fileno()
        while True:
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                return events
            if not data:
                return events
            events.extend(decode_events(data))

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self._fd is None

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Successor:
    """One file that came to the followed name: its current name (None while a rename is in flight)."""

    __slots__ = ("live", "name")

    def __init__(self, name: str) -> None:
        self.name: str | None = name
        self.live = True  # False once deleted, overwritten, moved out, given up or taken (`pop`)


class SuccessorTracker:
    """Where the files that replaced the followed name since the open file was opened live now, oldest first.

    Fed with the directory's events in kernel order: a file created (or moved)
    at the followed name is a successor; renames move successors (logrotate's
    `log -> log.1`); deletes and overwrites drop them.  Names only, so opening
    one must be checked against events that arrive meanwhile (the follower
    does, see its `_settle`).

    The kernel queues a rename's MOVED_FROM and MOVED_TO one after the other,
    so a read can return the first without the second (inotify(7)).  Such a
    successor is "in flight": it keeps its place, `moves_pending` says so, and
    the follower reads on until it lands or is known to have left.

    Every event costs O(1) whatever the number of successors: a follower that
    fell thousands of rotations behind reads a full queue (16384 events) in
    milliseconds, not seconds spent unable to notice a stop.  Dropped entries
    stay in the queue, marked dead, until they reach its head.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self._order: deque[_Successor] = deque()  # creation order, dead entries included
        self._at: dict[str, _Successor] = {}  # current name -> the live successor there
        self._moving: dict[int, _Successor] = {}  # rename cookie -> a successor in flight
        self._stale: set[int] = set()  # moves already pending at the last `moves_pending`

    def feed(self, event: InotifyEvent) -> None:
        mask, name = event.mask, event.name
        if mask & Mask.ISDIR:
            return
        if mask & Mask.MOVED_FROM:
            entry = self._at.pop(name, None)
            if entry is not None:
                entry.name = None  # in flight, keeps its place; dropped unless its MOVED_TO follows
                self._moving[event.cookie] = entry
        elif mask & (Mask.MOVED_TO | Mask.CREATE | Mask.DELETE):
            moved = self._moving.pop(event.cookie, None) if mask & Mask.MOVED_TO else None
            replaced = self._at.pop(name, None)
            if replaced is not None:
                replaced.live = False  # overwritten or deleted
            if moved is not None and moved.live:
                moved.name = name
                self._at[name] = moved
            elif name == self.target and not mask & Mask.DELETE:
                self._at[name] = entry = _Successor(name)
                self._order.append(entry)

    @property
    def tracking(self) -> bool:
        """Is any successor known (also one in flight)?"""
        return bool(self._at or self._moving)

    def moves_pending(self) -> bool:
        """Is a successor's rename half-reported?  Call after each barrier + read of the events.

        A move that was already pending at the previous call, so before the
        barrier that preceded this read, has completed without its MOVED_TO
        reaching us: the file left the directory, and is dropped.
        """
        for cookie in self._stale:
            entry = self._moving.pop(cookie, None)
            if entry is not None:
                entry.live = False
        self._stale = set(self._moving)
        return bool(self._moving)

    def first(self) -> str | None:
        """The oldest successor's current name (call after a whole batch of events: renames come in pairs)."""
        for entry in self._moving.values():
            entry.live = False
        self._moving.clear()
        self._stale.clear()
        while self._order and not self._order[0].live:
            self._order.popleft()
        return self._order[0].name if self._order else None

    def pop(self) -> None:
        """Take the successor `first` named (the follower opened it)."""
        entry = self._order.popleft()
        entry.live = False
        if entry.name is not None and self._at.get(entry.name) is entry:
            del self._at[entry.name]

    def reset(self, seed: bool = False) -> None:
        self._order.clear()
        self._at.clear()
        self._moving.clear()
        self._stale.clear()
        if seed:
            self._at[self.target] = entry = _Successor(self.target)
            self._order.append(entry)
