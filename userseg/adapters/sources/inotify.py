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


class SuccessorTracker:
    """Where the files that replaced the followed name since the open file was opened live now, oldest first.

    Fed with the directory's events in kernel order: a file created (or moved)
    at the followed name is a successor; renames move successors (logrotate's
    `log -> log.1`); deletes and overwrites drop them.  Names only, so opening
    one must be checked against events that arrive meanwhile (the follower does).
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.names: list[list[str | None]] = []  # one-element lists: identity survives renames
        self._moving: dict[int, list[str | None]] = {}

    def feed(self, event: InotifyEvent) -> None:
        mask, name = event.mask, event.name
        if mask & Mask.ISDIR:
            return
        if mask & Mask.MOVED_FROM:
            for entry in self.names:
                if entry[0] == name:
                    entry[0] = None  # in flight, keeps its place; dropped unless its MOVED_TO follows
                    self._moving[event.cookie] = entry
        elif mask & (Mask.MOVED_TO | Mask.CREATE | Mask.DELETE):
            moved = self._moving.pop(event.cookie, None) if mask & Mask.MOVED_TO else None
            self.names = [e for e in self.names if e[0] != name]  # overwritten or deleted
            if moved is not None:
                moved[0] = name
            elif name == self.target and not mask & Mask.DELETE:
                self.names.append([name])

    def first(self) -> str | None:
        """The oldest successor's current name (call after a whole batch of events: renames come in pairs)."""
        self.names = [e for e in self.names if e[0] is not None]
        self._moving.clear()
        return self.names[0][0] if self.names else None

    def pop(self) -> None:
        self.names.pop(0)

    def reset(self, seed: bool = False) -> None:
        self.names = [[self.target]] if seed else []
        self._moving.clear()
