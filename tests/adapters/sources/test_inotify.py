"""The ctypes inotify wrapper against the real kernel, and the successor tracker on event sequences."""

from __future__ import annotations

import os
import select
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.adapters.sources.followkit import fd_count
from userseg.adapters.sources.inotify import Inotify, InotifyEvent, Mask, SuccessorTracker, decode_events

DIR_MASK = Mask.CREATE | Mask.MOVED_FROM | Mask.MOVED_TO | Mask.DELETE


@pytest.fixture
def inotify() -> Iterator[Inotify]:
    with Inotify() as ino:
        yield ino


def wait_readable(ino: Inotify, timeout: float = 5.0) -> None:
    poller = select.poll()
    poller.register(ino.fileno(), select.POLLIN)
    assert poller.poll(int(timeout * 1000)), "no inotify event arrived"


def raw_event(wd: int, mask: int, cookie: int, name: bytes, padded: int) -> bytes:
    return struct.pack("iIII", wd, mask, cookie, padded) + name.ljust(padded, b"\0")


# ---- decoding ------------------------------------------------------------------------------------


def test_decode_events_splits_names_and_padding() -> None:
    data = raw_event(1, 0x100, 0, b"auth.log", 16) + raw_event(2, 0x2, 0, b"", 0)
    data += raw_event(-1, 0x4000, 0, b"", 0)
    assert decode_events(data) == [
        InotifyEvent(1, Mask.CREATE, 0, "auth.log"),
        InotifyEvent(2, Mask.MODIFY, 0, ""),
        InotifyEvent(-1, Mask.Q_OVERFLOW, 0, ""),
    ]


def test_decode_events_rejects_truncated_input() -> None:
    with pytest.raises(ValueError, match="name needs 16 bytes"):
        decode_events(raw_event(1, 0x100, 0, b"x", 16)[:-4])
    with pytest.raises(ValueError, match="stray bytes"):
        decode_events(raw_event(1, 0x2, 0, b"", 0) + b"\0\0")


def test_decode_keeps_unknown_bits_and_non_utf8_names() -> None:
    (event,) = decode_events(raw_event(3, 0x40000100, 0, b"caf\xe9", 8))
    assert event.mask & Mask.ISDIR and event.mask & Mask.CREATE
    assert os.fsencode(event.name) == b"caf\xe9"  # surrogateescape: the real name can be re-opened


# ---- the real kernel -----------------------------------------------------------------------------


def test_directory_events_carry_names_and_rename_cookies(inotify: Inotify, tmp_path: Path) -> None:
    wd = inotify.add_watch(tmp_path, DIR_MASK)
    assert inotify.read_events() == []  # nothing yet, and no blocking
    (tmp_path / "auth.log").write_bytes(b"x\n")
    (tmp_path / "auth.log").rename(tmp_path / "auth.log.1")
    (tmp_path / "auth.log.1").unlink()
    wait_readable(inotify)
    events = inotify.read_events()
    assert [(e.wd, e.mask & DIR_MASK, e.name) for e in events] == [
        (wd, Mask.CREATE, "auth.log"),
        (wd, Mask.MOVED_FROM, "auth.log"),
        (wd, Mask.MOVED_TO, "auth.log.1"),
        (wd, Mask.DELETE, "auth.log.1"),
    ]
    assert events[1].cookie == events[2].cookie != 0


def test_a_watch_through_proc_fd_follows_the_open_file_when_deleted(inotify: Inotify, tmp_path: Path) -> None:
    path = tmp_path / "auth.log"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        path.unlink()
        wd = inotify.add_watch(f"/proc/self/fd/{fd}", Mask.MODIFY)
        writer = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_APPEND)
        os.write(writer, b"late\n")
        os.close(writer)
        wait_readable(inotify)
        assert inotify.read_events() == [InotifyEvent(wd, Mask.MODIFY, 0, "")]
    finally:
        os.close(fd)
    wait_readable(inotify)  # the inode is freed: the kernel drops the watch
    assert [e.mask for e in inotify.read_events()] == [Mask.IGNORED]
    inotify.rm_watch(wd)  # already gone: not an error


def test_rm_watch_reports_ignored(inotify: Inotify, tmp_path: Path) -> None:
    wd = inotify.add_watch(tmp_path, DIR_MASK)
    inotify.rm_watch(wd)
    wait_readable(inotify)
    assert inotify.read_events() == [InotifyEvent(wd, Mask.IGNORED, 0, "")]


def test_errors_name_the_path_and_a_closed_instance_refuses(tmp_path: Path) -> None:
    before = fd_count()
    ino = Inotify()
    with pytest.raises(OSError, match="No such file") as caught:
        ino.add_watch(tmp_path / "missing", Mask.MODIFY)
    assert caught.value.filename == str(tmp_path / "missing")
    with pytest.raises(OSError, match="Not a directory"):
        (tmp_path / "file").write_bytes(b"")
        ino.add_watch(tmp_path / "file", Mask.CREATE | Mask.ONLYDIR)
    ino.close()
    ino.close()  # idempotent
    assert ino.closed and fd_count() == before
    with pytest.raises(ValueError, match="closed"):
        ino.read_events()


# ---- the successor tracker -----------------------------------------------------------------------


def ev(mask: Mask, name: str, cookie: int = 0) -> InotifyEvent:
    return InotifyEvent(1, mask, cookie, name)


def feed(tracker: SuccessorTracker, *events: InotifyEvent) -> None:
    for event in events:
        tracker.feed(event)


def test_a_file_created_at_the_name_is_the_successor() -> None:
    tracker = SuccessorTracker("log")
    feed(tracker, ev(Mask.CREATE, "other"), ev(Mask.CREATE, "log"))
    assert tracker.first() == "log"
    tracker.pop()
    assert tracker.first() is None


def test_renames_of_the_open_file_are_not_successors() -> None:
    tracker = SuccessorTracker("log")
    feed(tracker, ev(Mask.MOVED_FROM, "log", 7), ev(Mask.MOVED_TO, "log.1", 7))
    assert tracker.first() is None


def test_two_logrotate_cycles_leave_both_successors_in_order_under_their_new_names() -> None:
    tracker = SuccessorTracker("log")
    feed(
        tracker,
        ev(Mask.MOVED_FROM, "log", 1),
        ev(Mask.MOVED_TO, "log.1", 1),  # the open file: log -> log.1
        ev(Mask.CREATE, "log"),  # successor B
        ev(Mask.MOVED_FROM, "log.1", 2),
        ev(Mask.MOVED_TO, "log.2", 2),  # the open file again
        ev(Mask.MOVED_FROM, "log", 3),
        ev(Mask.MOVED_TO, "log.1", 3),  # B
        ev(Mask.CREATE, "log"),  # successor C
    )
    assert tracker.first() == "log.1"
    tracker.pop()
    assert tracker.first() == "log"


def test_deleted_moved_away_and_overwritten_successors_are_dropped() -> None:
    tracker = SuccessorTracker("log")
    feed(tracker, ev(Mask.CREATE, "log"), ev(Mask.DELETE, "log"))
    assert tracker.first() is None
    feed(tracker, ev(Mask.CREATE, "log"), ev(Mask.MOVED_FROM, "log", 4))  # moved out of the directory
    assert tracker.first() is None
    feed(
        tracker,
        ev(Mask.CREATE, "log"),
        ev(Mask.MOVED_FROM, "log", 5),
        ev(Mask.MOVED_TO, "log.1", 5),
        ev(Mask.MOVED_TO, "log.1", 6),
    )  # another file moved over it
    assert tracker.first() is None


def test_a_file_moved_onto_the_name_is_a_successor_and_directories_are_ignored() -> None:
    tracker = SuccessorTracker("log")
    feed(tracker, ev(Mask.CREATE | Mask.ISDIR, "log"))
    assert tracker.first() is None
    feed(tracker, ev(Mask.MOVED_TO, "log", 9))  # e.g. an atomic replace: log.tmp -> log
    assert tracker.first() == "log"
    tracker.reset()
    assert tracker.first() is None
    tracker.reset(seed=True)
    assert tracker.first() == "log"


def test_thousands_of_rotations_behind_every_successor_comes_out_once_in_order() -> None:
    """A follower that fell far behind: one read of a full queue names them all, the dropped ones skipped."""
    tracker = SuccessorTracker("log")
    for i in range(5000):  # log -> log.i, then a new log; log.0 is the open file
        cycle = (
            ev(Mask.MOVED_FROM, "log", i + 1),
            ev(Mask.MOVED_TO, f"log.{i}", i + 1),
            ev(Mask.CREATE, "log"),
        )
        feed(tracker, *cycle)
    feed(tracker, ev(Mask.DELETE, "log.100"), ev(Mask.MOVED_FROM, "log.200", 9999))  # deleted; moved out
    assert tracker.moves_pending() and not tracker.moves_pending()
    seen = []
    while (name := tracker.first()) is not None:
        seen.append(name)
        tracker.pop()
    assert seen == [f"log.{i}" for i in range(1, 5000) if i not in (100, 200)] + ["log"]
    assert not tracker.tracking


def test_a_successor_taken_while_its_rename_is_in_flight_does_not_come_back() -> None:
    tracker = SuccessorTracker("log")
    feed(tracker, ev(Mask.CREATE, "log"))
    assert tracker.first() == "log"
    feed(tracker, ev(Mask.MOVED_FROM, "log", 3))
    tracker.pop()  # the follower took it (its open raced the rename)
    feed(tracker, ev(Mask.MOVED_TO, "log.1", 3))
    assert not tracker.tracking and tracker.first() is None
