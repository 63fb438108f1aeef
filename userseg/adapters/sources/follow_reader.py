"""One open log file of the follower: offsets, line splitting, truncation checks, position tokens.

Kept apart from `follow.py`, which decides *which* file to read (rotation,
resume, inotify); this module only reads one descriptor it is given.  A
`FileReader` never reopens anything by name: once opened, the file is the
inode, whatever it is renamed to.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

HEAD_BYTES = 1024  # the identity of a file: a hash of (up to) its first KiB, with its inode
MARK_BYTES = 64  # the last bytes read, kept to recognise a copytruncate copy at our offset
MAX_LINE = 65_536
PREFIX_BYTES = 200  # kept from an oversized line, for the error message


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


Deliver = Callable[["FileReader", bytes | Oversized, int], None]
OnTruncate = Callable[["FileReader"], None]
Checkpoint = Callable[[], None]  # called before every read; raises to abandon the loop (the follower's stop)


class FileReader:
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
        "mark",
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
        marked = min(offset, MARK_BYTES)
        self.mark = os.pread(self.fd, marked, offset - marked) if marked else b""  # the bytes before read_off

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

    def continues_in(self, fd: int) -> bool:
        """Does the file `fd` hold what we read so far (same head, same last bytes before our offset)?

        That is a copytruncate copy taken after our last read: what it holds
        beyond our offset was written to our file and truncated away unread.
        """
        if not self.read_off or os.fstat(fd).st_size < self.read_off:
            return False
        if os.pread(fd, len(self.head), 0) != self.head:
            return False
        return os.pread(fd, len(self.mark), self.read_off - len(self.mark)) == self.mark

    def position(self, offset: int) -> str:
        hlen = min(offset, len(self.head))
        if self._pos[0] != hlen:
            self._pos = (hlen, _encode(self.dev, self.ino, hlen, head_hash(self.head[:hlen])))
        return f"{self._pos[1]}{offset}}}"

    def pump(self, deliver: Deliver, chunk: int, on_truncate: OnTruncate, checkpoint: Checkpoint) -> None:
        """Read to EOF in big chunks, delivering complete lines.

        Truncation is checked before every read and the head again after it,
        so data read across a copytruncate is discarded, not delivered.
        `on_truncate` runs before reading restarts at 0, while this reader
        still describes the old content (it may `absorb` the copy's tail).
        Delivery may block for long (back-pressure), so this loops until a
        read finds nothing new, which a writer as fast as we are may never
        let happen: `checkpoint` is how a stop ends it (a read can also bring
        no line at all: an oversized one being skipped).
        """
        if self.buf:
            self.split(deliver)  # lines a failed delivery left behind
        while True:
            checkpoint()
            if self._rewritten():
                on_truncate(self)
                self.start_at(0)
            data = os.pread(self.fd, chunk, self.read_off)
            if not data:
                return
            if self.head and os.pread(self.fd, len(self.head), 0) != self.head:
                continue  # rewritten while we read: start over
            self._consume(data, deliver)

    def absorb(self, fd: int, deliver: Deliver, chunk: int, checkpoint: Checkpoint) -> None:
        """Deliver what another descriptor holds beyond our read offset, as if this file had it.

        For a copytruncate copy (see `continues_in`): offsets keep counting in
        the old content, so a failed delivery resumes exactly where it
        stopped.  A last line without newline is delivered too: its rest, if
        any, was lost between the copy and the truncate.
        """
        while True:
            checkpoint()
            data = os.pread(fd, chunk, self.read_off)
            if not data:
                break
            self._consume(data, deliver)
        self.split(deliver, final=True)

    def _consume(self, data: bytes, deliver: Deliver) -> None:
        if len(self.head) < HEAD_BYTES and self.read_off == len(self.head):
            self.head = (self.head + data)[:HEAD_BYTES]
        self.read_off += len(data)
        self.mark = data[-MARK_BYTES:] if len(data) >= MARK_BYTES else (self.mark + data)[-MARK_BYTES:]
        self.buf += data
        self.split(deliver)

    def split(self, deliver: Deliver, final: bool = False) -> None:
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
