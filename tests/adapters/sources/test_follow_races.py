"""LineFollower under the interleavings that rotation races produce: forced step by step, then a storm.

The tests that drive the follower from their own thread (`stepped`) put the
files in exactly the state under test, also in the middle of a step (hooks
on the follower's own calls), so each race happens every run.  The storm at
the end lets the scheduler produce the rest.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.adapters.sources.followkit import (
    Recorder,
    Stepped,
    Writer,
    append,
    copytruncate,
    expect,
    fd_count,
    following,
    lines,
    numbered,
    rotate_rename,
    stepped,
    stop_within,
)
from userseg.adapters.sources.follow import LineFollower, Oversized, Position
from userseg.adapters.sources.follow_reader import FileReader
from userseg.adapters.sources.inotify import InotifyEvent, Mask, SuccessorTracker


@pytest.fixture
def log_path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "auth.log"


def before_open(
    monkeypatch: pytest.MonkeyPatch, follower: LineFollower, name: str, change: Callable[[], None]
) -> None:
    """Make `change` once, right before the follower opens `name`: a rotation racing the open."""
    real, pending = follower._open, [change]

    def hooked(opened: str) -> FileReader:
        if opened == name and pending:
            pending.pop()()
        return real(opened)

    monkeypatch.setattr(follower, "_open", hooked)


def split_rename_reports(monkeypatch: pytest.MonkeyPatch, follower: LineFollower, nth: int) -> None:
    """The next read of events stops after the nth MOVED_FROM; its MOVED_TO comes with the read after.

    inotify(7): the kernel queues the two halves of a rename one after the other,
    so a read can fall between them.
    """
    inotify = follower._inotify
    assert inotify is not None
    real, late = inotify.read_events, list[InotifyEvent]()

    def halves() -> list[InotifyEvent]:
        if late:
            monkeypatch.setattr(inotify, "read_events", real)
            return late + real()
        events = real()
        moves = [i for i, e in enumerate(events) if e.mask & Mask.MOVED_FROM]
        assert len(moves) >= nth, "the test needs that many renames queued"
        late.extend(events[moves[nth - 1] + 1 :])
        return events[: moves[nth - 1] + 1]

    monkeypatch.setattr(inotify, "read_events", halves)


@contextmanager
def line_0_read(path: Path) -> Iterator[tuple[Stepped, Recorder]]:
    """A stepped follower that has read the first file's line 0 (the file the test then rotates)."""
    append(path, lines(0))
    rec = Recorder()
    with stepped(path, rec, start_at_end=False) as driver:
        driver.step()
        yield driver, rec


def new_file(path: Path, *numbers: int) -> None:
    """logrotate's rename, then the writer's new file with these lines (none: an empty file)."""
    rotate_rename(path)
    append(path, lines(*numbers))


def test_lines_appended_right_before_a_rotation_come_before_the_new_files(
    log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Appended and rotated just after a read found the end: the old file's last line goes out first."""
    with line_0_read(log_path) as (driver, rec):
        real, pending = driver.follower._pump, [True]

        def pump_then_rotate(reader: FileReader) -> None:
            real(reader)
            if pending:
                pending.clear()
                append(log_path, lines(1))
                new_file(log_path, 2)

        monkeypatch.setattr(driver.follower, "_pump", pump_then_rotate)
        driver.step()
        driver.step()
        assert rec.lines() == expect(3)


def test_many_rotations_between_two_reads_visit_every_file_once_in_order(log_path: Path) -> None:
    with line_0_read(log_path) as (driver, rec):
        append(log_path, lines(1))
        new_file(log_path)  # empty, then rotated with the others
        new_file(log_path, 2, 3)
        new_file(log_path, 4)
        new_file(log_path, 5)
        driver.step()
        assert rec.lines() == expect(6)
        assert driver.follower.stats().rotations == 4


def test_a_new_file_renamed_again_while_we_open_it_is_still_read(
    log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CI flake (5,999 of 6,000): B was known as auth.log, the next rotation renamed it auth.log.1
    just before our open, and the file that was to replace it did not exist yet."""
    with line_0_read(log_path) as (driver, rec):
        new_file(log_path, 1)
        before_open(monkeypatch, driver.follower, log_path.name, lambda: rotate_rename(log_path))
        driver.step()
        append(log_path, lines(2))  # the writer's next file, at last
        driver.step()
        assert rec.lines() == expect(3)


def test_a_file_renamed_onto_the_name_around_our_open_is_not_taken_for_the_new_one(
    log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with line_0_read(log_path) as (driver, rec):
        new_file(log_path, 1)
        before_open(monkeypatch, driver.follower, log_path.name, lambda: new_file(log_path, 2))
        driver.step()  # opens the file with line 2 where it expected the one with line 1: must notice
        assert rec.lines() == expect(3)


def test_a_rename_reported_in_halves_keeps_the_new_file_in_its_place(
    log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with line_0_read(log_path) as (driver, rec):
        new_file(log_path, 1)  # renames: A -> .1
        new_file(log_path, 2)  # renames: A .1 -> .2, then B -> .1 (the 3rd MOVED_FROM) ...
        split_rename_reports(monkeypatch, driver.follower, nth=3)  # ... whose MOVED_TO is read late
        driver.step()
        assert rec.lines() == expect(3)


def test_a_half_reported_rename_is_pending_until_a_later_read_lands_or_drops_it() -> None:
    """The tracker side of `_settle`: pending after a MOVED_FROM, dropped if a round brings no MOVED_TO."""
    tracker = SuccessorTracker("log")
    for event in (InotifyEvent(1, Mask.CREATE, 0, "log"), InotifyEvent(1, Mask.MOVED_FROM, 7, "log")):
        tracker.feed(event)
    assert tracker.moves_pending() and tracker.tracking
    tracker.feed(InotifyEvent(1, Mask.MOVED_TO, 7, "log.1"))
    assert not tracker.moves_pending()
    assert tracker.first() == "log.1"
    tracker.pop()
    for event in (InotifyEvent(1, Mask.CREATE, 0, "log"), InotifyEvent(1, Mask.MOVED_FROM, 8, "log")):
        tracker.feed(event)
    assert tracker.moves_pending()  # the MOVED_TO may still come ...
    assert not tracker.moves_pending()  # ... but not after one more round: it left the directory
    assert tracker.first() is None


def test_a_new_file_moved_out_of_the_directory_is_given_up_at_once(log_path: Path) -> None:
    """Its MOVED_FROM never gets a MOVED_TO here: skipped (documented), without waiting or erring."""
    (log_path.parent / "elsewhere").mkdir()
    with line_0_read(log_path) as (driver, rec):
        new_file(log_path, 1)
        log_path.rename(log_path.parent / "elsewhere" / log_path.name)
        append(log_path, lines(2))
        driver.step()
        assert rec.lines() == [numbered(0), numbered(2)]
        assert driver.follower.stats().errors == 0


def test_copytruncate_recovers_the_unread_lines_from_the_copy_exactly_once(
    log_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Lines appended after our last read are only in the copy; a failed delivery amid them is retried."""
    rec, failed = Recorder(), []

    def flaky(line: bytes | Oversized, position: str) -> None:
        if line == numbered(15) and not failed:
            failed.append(position)
            raise RuntimeError("sink unavailable")
        rec(line, position)

    append(log_path, lines(*range(10)))
    with caplog.at_level(logging.INFO), stepped(log_path, flaky, start_at_end=False) as driver:
        driver.step()
        append(log_path, lines(*range(10, 20)))
        copytruncate(log_path)
        append(log_path, lines(*range(20, 25)))
        with pytest.raises(Exception, match="delivering a line failed"):
            driver.step()
        assert rec.lines() == expect(15)
        driver.step()
        assert rec.lines() == expect(25)
        assert driver.follower.stats().truncations == 1
    assert f"read the rest of its old content from {log_path.name}.1" in caplog.text
    assert rec.items[15][1] == failed[0]  # the same line at the same position, offered again
    assert Position.decode(rec.last_position()).offset == 5 * len(lines(0))  # in the truncated file


def test_a_copy_renamed_while_we_look_for_it_is_still_found(
    log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scan of the directory can miss a file being renamed (the next rotation shifting log.1 to log.2)."""
    append(log_path, lines(*range(10)))
    rec = Recorder()
    with stepped(log_path, rec, start_at_end=False) as driver:
        driver.step()
        append(log_path, lines(*range(10, 20)))
        copytruncate(log_path)
        append(log_path, lines(20))
        follower, rotated = driver.follower, log_path.with_name(f"{log_path.name}.1")
        real, pending = follower._scan_for_copy, [True]

        def scan_amid_rename(reader: FileReader, rejected: set[tuple[int, int]]) -> tuple[int, str] | None:
            if not pending:
                return real(reader, rejected)
            pending.clear()
            rotated.rename(log_path.parent / "in-flight")  # neither name visible to this scan
            try:
                return real(reader, rejected)
            finally:
                (log_path.parent / "in-flight").rename(log_path.with_name(f"{log_path.name}.2"))
                new_file(log_path, 21)  # and a rotation: read in this step, not at the next recheck

        monkeypatch.setattr(follower, "_scan_for_copy", scan_amid_rename)
        driver.step()
        assert rec.lines() == expect(22)


def test_a_file_with_our_head_but_other_bytes_at_our_offset_is_not_taken_for_the_copy(log_path: Path) -> None:
    """A truncation without a copy loses the unread lines; a look-alike must not fill them in."""
    append(log_path, lines(*range(20)))  # more than the head's KiB
    rec = Recorder()
    with stepped(log_path, rec, start_at_end=False) as driver:
        driver.step()
        append(log_path, lines(*range(20, 30)))
        log_path.with_name(f"{log_path.name}.1").write_bytes(lines(*range(15), *range(40, 60)))
        os.truncate(log_path, 0)
        append(log_path, lines(30))
        driver.step()
        assert rec.lines() == [*expect(20), numbered(30)]


def test_a_storm_of_rotations_under_writing_loses_and_repeats_nothing(log_path: Path) -> None:
    """Hundreds of logrotate cycles in a tight loop (often several between two reads) and copytruncates.

    Nothing is deleted (a file rotated away unread before we reach it is lost
    by design), and a copytruncate waits until we read a line of the file it
    truncates (before that, nothing identifies its copy): what is left is
    every interleaving the scheduler produces, and every line must arrive once.
    """
    rec = Recorder()
    count, started = 10_000, [0]

    def rename(w: Writer) -> None:
        rotate_rename(w.path, keep=3, archive=True)
        w.reopen()

    def copy(line: int) -> Callable[[Writer], None]:
        def action(w: Writer) -> None:
            rec.wait_for(started[0] + 1)
            copytruncate(w.path, keep=3, archive=True)
            started[0] = line

        return action

    def renamed(line: int) -> Callable[[Writer], None]:
        def action(w: Writer) -> None:
            rename(w)
            started[0] = line

        return action

    actions: dict[int, Callable[[Writer], None]] = {}
    for n, line in enumerate(range(50, count, 37)):
        actions[line] = copy(line) if n % 10 == 9 else renamed(line)
        if n % 4 == 0:
            actions[line + 1] = renamed(line + 1)  # a one-line file
    log_path.write_bytes(b"")
    with following(log_path, rec, start_at_end=False, rotate_grace=0.05, retry_initial=0.05) as follower:
        assert follower.wait_ready(5)
        Writer(log_path, count, actions).start().join()
        rec.wait_for(count)
        assert rec.lines() == expect(count)
        assert follower.stats().errors == 0


# ---- stop amid and after a storm -------------------------------------------------------------------------


def _rotations(path: Path, first: int, count: int) -> None:
    """`count` rename + create rotations, each new file with one line; the old files keep unique names."""
    for i in range(first, first + count):
        path.rename(path.with_name(f"{path.name}.{i}"))
        append(path, lines(i))


def _appends(path: Path, first: int, count: int) -> None:
    append(path, lines(*range(first, first + count)))


@pytest.mark.parametrize("backlog", [_rotations, _appends], ids=["rotations", "appends"])
def test_stop_requested_amid_a_backlog_ends_the_thread_before_the_next_line(
    log_path: Path, backlog: Callable[[Path, int, int], None]
) -> None:
    """The stop request lands while the follower works through a storm (as when a writer keeps
    outpacing it): it must not finish that first; only the delivery in progress completes."""
    gates = {numbered(0): threading.Event(), numbered(1): threading.Event()}
    held = {line: threading.Event() for line in gates}
    rec = Recorder()

    def blocking(line: bytes | Oversized, position: str) -> None:
        if line in gates:
            held[line].set()
            gates[line].wait(10)
        rec(line, position)

    append(log_path, lines(0))
    threads = threading.active_count()
    follower = LineFollower(log_path, blocking, start_at_end=False, rotate_grace=60.0)
    follower.start()
    try:
        assert held[numbered(0)].wait(5)
        backlog(log_path, 1, 100)  # all there before the follower reads on: line 1 is amid the backlog
        gates[numbered(0)].set()
        assert held[numbered(1)].wait(5)
        assert not follower.stop(0.0)  # requested while a delivery is blocked: not done yet
    finally:
        for gate in gates.values():
            gate.set()
        stop_within(follower, 1.0)
    assert threading.active_count() == threads
    assert rec.lines() == expect(2)


def test_stop_after_a_storm_of_rotations_is_prompt_and_releases_every_file(log_path: Path) -> None:
    """Hundreds of rotated files still open in their grace period, each with a watch: all go at once
    (closing the inotify descriptor drops its watches together, not one by one)."""
    count = 300
    append(log_path, lines(0))
    fds, threads = fd_count(), threading.active_count()
    rec = Recorder()
    follower = LineFollower(log_path, rec, start_at_end=False, rotate_grace=60.0)
    follower.start()
    try:
        rec.wait_for(1)
        _rotations(log_path, 1, count)
        rec.wait_for(count + 1, timeout=30)
        assert follower.stats().rotations == count
        assert fd_count() >= fds + count  # every rotated file is still held
    finally:
        stop_within(follower, 1.0)
    assert threading.active_count() == threads
    assert fd_count() == fds
    assert rec.lines() == expect(count + 1)
