"""LineFollower against real files and a real thread: appends, rotation, resume, errors, stop, speed."""

from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.adapters.sources.followkit import (
    Recorder,
    Writer,
    append,
    expect,
    fd_count,
    following,
    lines,
    numbered,
    rotate_rename,
    wait_until,
)
from userseg.adapters.sources.follow import HEAD_BYTES, LineFollower, Oversized, Position

FAST = {"rotate_grace": 0.2, "retry_initial": 0.05, "retry_max": 0.2}


@pytest.fixture
def log_path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "auth.log"


# ---- appending -------------------------------------------------------------------------------------------


def test_lines_appended_one_by_one_arrive_in_order_with_advancing_positions(log_path: Path) -> None:
    log_path.write_bytes(b"")
    rec = Recorder()
    with following(log_path, rec, start_at_end=False):
        for i in range(50):
            append(log_path, lines(i))
            rec.wait_for(i + 1)
    assert rec.lines() == expect(50)
    offsets = [Position.decode(p).offset for _, p in rec.items]
    assert offsets == [(i + 1) * len(lines(0)) for i in range(50)]


def test_a_burst_in_one_write_is_split_into_lines(log_path: Path) -> None:
    log_path.write_bytes(b"")
    rec = Recorder()
    with following(log_path, rec, start_at_end=False, chunk_size=4096) as follower:
        append(log_path, lines(*range(3000)))
        rec.wait_for(3000)
    assert rec.lines() == expect(3000)
    assert follower.stats().lines == 3000
    assert follower.stats().bytes == 3000 * len(lines(0))


def test_a_partial_line_waits_for_its_newline(log_path: Path) -> None:
    log_path.write_bytes(b"")
    rec = Recorder()
    with following(log_path, rec, start_at_end=False) as follower:
        append(log_path, b"first\nsec")
        rec.wait_for(1)
        wait_until(lambda: follower.stats().bytes == 6, what="first line consumed")
        append(log_path, b"ond")  # still no newline: nothing may be delivered
        append(log_path, b"\nthird\n")
        rec.wait_for(3)
    assert rec.lines() == [b"first", b"second", b"third"]
    assert [Position.decode(p).offset for _, p in rec.items] == [6, 13, 19]


def test_crlf_loses_the_cr_and_empty_lines_are_delivered(log_path: Path) -> None:
    log_path.write_bytes(b"")
    rec = Recorder()
    with following(log_path, rec, start_at_end=False):
        append(log_path, b"one\r\n\r\n\ntwo\r\nbare\rcr\n")
        rec.wait_for(5)
    assert rec.lines() == [b"one", b"", b"", b"two", b"bare\rcr"]


def test_bytes_are_passed_through_undecoded(log_path: Path) -> None:
    log_path.write_bytes(b"")
    rec = Recorder()
    with following(log_path, rec, start_at_end=False):
        append(log_path, b"caf\xe9 \xff\xfe\x00end\n")
        rec.wait_for(1)
    assert rec.lines() == [b"caf\xe9 \xff\xfe\x00end"]


def test_an_oversized_line_is_a_marker_and_is_never_buffered_whole(log_path: Path) -> None:
    log_path.write_bytes(b"")
    rec = Recorder()
    limit = 1000
    with following(log_path, rec, start_at_end=False, max_line=limit, chunk_size=512) as follower:
        append(log_path, b"before\n")
        rec.wait_for(1)
        written = 0
        for _ in range(40):  # 40 KB without a newline, in pieces, each seen separately
            append(log_path, b"A" * 1000)
            written += 1000
            wait_until(lambda n=written: _read_off(follower) == 7 + n, what="piece consumed")  # type: ignore[misc]
            assert len(_buffered(follower)) <= limit  # memory stays bounded by the limit
        append(log_path, b"B\nafter\r\n" + b"C" * (limit + 1) + b"\nlast\n")
        rec.wait_for(5)
    items = rec.lines()
    assert items[0] == b"before" and items[2] == b"after" and items[4] == b"last"
    assert items[1] == Oversized(40_001, b"A" * 200)
    assert items[3] == Oversized(limit + 1, b"C" * 200)
    assert follower.stats().oversized == 2
    assert Position.decode(rec.items[1][1]).offset == 7 + 40_002  # the position moved past it


def test_a_line_exactly_at_the_limit_is_delivered(log_path: Path) -> None:
    log_path.write_bytes(b"")
    rec = Recorder()
    with following(log_path, rec, start_at_end=False, max_line=100):
        append(log_path, b"x" * 100 + b"\n" + b"y" * 99 + b"\r\n")
        rec.wait_for(2)
    assert rec.lines() == [b"x" * 100, b"y" * 99]


def _read_off(follower: LineFollower) -> int:
    current = follower._current
    return current.read_off if current is not None else -1


def _buffered(follower: LineFollower) -> bytes:
    current = follower._current
    return current.buf if current is not None else b""


# ---- where to start ----------------------------------------------------------------------------------------


def test_start_at_end_skips_history_but_not_a_line_being_written(log_path: Path) -> None:
    log_path.write_bytes(lines(0, 1, 2) + b"half of ")
    rec = Recorder()
    with following(log_path, rec) as follower:  # start_at_end is the default
        assert follower.wait_ready(5)
        append(log_path, b"line three\n")
        append(log_path, lines(4))
        rec.wait_for(2)
    assert rec.lines() == [b"half of line three", numbered(4)]


def test_start_at_beginning_reads_history(log_path: Path) -> None:
    log_path.write_bytes(lines(0, 1, 2))
    rec = Recorder()
    with following(log_path, rec, start_at_end=False):
        rec.wait_for(3)
    assert rec.lines() == expect(3)


def test_a_missing_file_is_awaited_then_read_from_its_start(log_path: Path) -> None:
    rec = Recorder()
    with following(log_path, rec) as follower:  # start_at_end applies only to a file present at start
        assert follower.wait_ready(5)
        append(log_path, lines(0, 1))
        rec.wait_for(2)
        assert follower.stats().errors == 0
    assert rec.lines() == expect(2)


# ---- rotation while writing --------------------------------------------------------------------------------


def _rename_create(w: Writer) -> None:
    rotate_rename(w.path)
    w.reopen()


def _delete_create(w: Writer) -> None:
    w.path.unlink()
    w.reopen()


def _delete_create_once_read(rec: Recorder, line: int) -> Callable[[Writer], None]:
    """A deleted file is readable only through a descriptor opened before: delete once we read it."""

    def action(w: Writer) -> None:
        rec.wait_for(line)
        _delete_create(w)

    return action


@pytest.mark.parametrize(
    "rotate_at",
    [
        pytest.param({3000: _rename_create}, id="rename+create"),
        pytest.param({2000: _rename_create, 2001: _rename_create, 2003: _rename_create}, id="thrice-quickly"),
        pytest.param({1500: _delete_create, 4000: 1600}, id="delete+recreate"),
    ],
)
def test_rotation_under_continuous_writing_delivers_every_line_once_in_order(
    log_path: Path, rotate_at: dict[int, Callable[[Writer], None] | int]
) -> None:
    rec = Recorder()
    count = 6000
    actions = {i: _delete_create_once_read(rec, a) if isinstance(a, int) else a for i, a in rotate_at.items()}
    log_path.write_bytes(b"")  # opened before the writer starts: a deleted file is gone unless held
    with following(log_path, rec, start_at_end=False, **FAST) as follower:
        assert follower.wait_ready(5)
        writer = Writer(log_path, count, actions).start()
        writer.join()
        rec.wait_for(count)
    assert rec.lines() == expect(count)
    assert 1 <= follower.stats().rotations <= len(rotate_at)


def test_two_rotations_while_the_reader_is_blocked_visit_every_file_in_order(log_path: Path) -> None:
    """The successor tracker: files rotated twice before we get to them are still read, in order."""
    gate, held = threading.Event(), threading.Event()
    rec = Recorder()

    def slow(line: bytes | Oversized, position: str) -> None:
        if line == numbered(9):
            held.set()
            gate.wait(10)
        rec(line, position)

    append(log_path, lines(*range(10)))
    follower = LineFollower(log_path, slow, start_at_end=False, **FAST)  # type: ignore[arg-type]
    follower.start()
    try:
        assert held.wait(5)
        append(log_path, lines(10))  # to the first file, after the reader's last read
        rotate_rename(log_path)
        append(log_path, lines(11, 12))
        rotate_rename(log_path)  # the second file is now auth.log.1, the first auth.log.2
        append(log_path, lines(13))
        rotate_rename(log_path)
        append(log_path, lines(14))
        gate.set()
        rec.wait_for(15)
        assert rec.lines() == expect(15)
        assert follower.stats().rotations == 3
    finally:
        gate.set()
        assert follower.stop()


def test_copytruncate_under_writing_restarts_at_zero(log_path: Path) -> None:
    """The writer copies and truncates once we have read everything (copytruncate loses the rest anyway)."""
    rec = Recorder()

    def copytruncate(w: Writer) -> None:
        rec.wait_for(2000)
        log_path.with_name("auth.log.1").write_bytes(log_path.read_bytes())
        os.truncate(log_path, 0)

    with following(log_path, rec, start_at_end=False, **FAST) as follower:
        Writer(log_path, 5000, {2000: copytruncate}).start().join()
        rec.wait_for(5000)
    assert rec.lines() == expect(5000)
    assert follower.stats().truncations == 1
    assert Position.decode(rec.last_position()).offset == 3000 * len(lines(0))


def test_truncation_refilled_past_our_offset_is_noticed_by_the_head(log_path: Path) -> None:
    gate, held = threading.Event(), threading.Event()
    rec = Recorder()

    def slow(line: bytes | Oversized, position: str) -> None:
        if line == numbered(4):
            held.set()
            gate.wait(10)
        rec(line, position)

    append(log_path, lines(*range(5)))
    follower = LineFollower(log_path, slow, start_at_end=False, **FAST)  # type: ignore[arg-type]
    follower.start()
    try:
        assert held.wait(5)
        os.truncate(log_path, 0)
        append(log_path, lines(*range(100, 110)))  # longer than before: only the head tells
        gate.set()
        rec.wait_for(15)
        assert rec.lines() == expect(5) + expect(10, 100)
        assert follower.stats().truncations == 1
    finally:
        gate.set()
        assert follower.stop()


def test_lines_written_to_the_old_file_after_rotation_are_still_delivered(log_path: Path) -> None:
    """Like Samba between logrotate's rename and its SIGHUP: the writer keeps its old descriptor."""
    rec = Recorder()
    with following(log_path, rec, start_at_end=False, rotate_grace=5.0) as follower:
        old = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(old, lines(0))
            rec.wait_for(1)
            rotate_rename(log_path)
            append(log_path, b"")  # logrotate's "create"
            wait_until(lambda: follower.stats().rotations == 1, what="rotation noticed")
            os.write(old, lines(1))  # late line to the rotated file
            rec.wait_for(2)
        finally:
            os.close(old)
        append(log_path, lines(2))
        rec.wait_for(3)
    assert rec.lines() == expect(3)
    late, new = Position.decode(rec.items[1][1]), Position.decode(rec.items[2][1])
    assert late.ino == new.ino == os.stat(log_path).st_ino and late.offset == 0  # covered by the new file


# ---- resume ------------------------------------------------------------------------------------------------


def _position_after(path: Path, count: int) -> str:
    """Follow `path` from the start until `count` lines arrived; the last position."""
    rec = Recorder()
    with following(path, rec, start_at_end=False):
        rec.wait_for(count)
    return rec.items[count - 1][1]


def test_resume_in_the_same_file_continues_after_the_last_line(log_path: Path) -> None:
    append(log_path, lines(*range(5)))
    position = _position_after(log_path, 3)
    append(log_path, lines(5, 6))
    rec = Recorder()
    with following(log_path, rec, position=position):
        rec.wait_for(4)
    assert rec.lines() == expect(4, 3)


def test_resume_after_a_rotation_while_stopped_finishes_the_old_file_first(log_path: Path) -> None:
    append(log_path, lines(*range(5)))
    position = _position_after(log_path, 2)
    append(log_path, lines(5))
    rotate_rename(log_path)
    append(log_path, lines(6, 7))
    rec = Recorder()
    with following(log_path, rec, position=position, **FAST) as follower:
        rec.wait_for(6)
        append(log_path, lines(8))
        rec.wait_for(7)
    assert rec.lines() == expect(7, 2)
    assert follower.stats().rotations == 1


def test_resume_after_copytruncate_while_stopped_starts_at_zero(log_path: Path) -> None:
    append(log_path, lines(*range(5)))
    position = _position_after(log_path, 5)
    os.truncate(log_path, 0)
    append(log_path, lines(10, 11))
    rec = Recorder()
    with following(log_path, rec, position=position) as follower:
        rec.wait_for(2)
    assert rec.lines() == expect(2, 10)
    assert follower.stats().truncations == 1


def test_resume_after_truncate_and_refill_beyond_the_offset_starts_at_zero(log_path: Path) -> None:
    append(log_path, lines(*range(3)))
    position = _position_after(log_path, 3)
    os.truncate(log_path, 0)
    append(log_path, lines(*range(20, 30)))  # same inode, larger than the offset, different head
    rec = Recorder()
    with following(log_path, rec, position=position):
        rec.wait_for(10)
    assert rec.lines() == expect(10, 20)


def test_resume_when_the_old_file_is_gone_reads_the_current_file_from_the_start(log_path: Path) -> None:
    append(log_path, lines(*range(3)))
    position = _position_after(log_path, 1)
    log_path.unlink()
    append(log_path, lines(7, 8))
    rec = Recorder()
    with following(log_path, rec, position=position):
        rec.wait_for(2)
    assert rec.lines() == expect(2, 7)


def test_resume_with_the_file_missing_waits_for_it(log_path: Path) -> None:
    append(log_path, lines(0))
    position = _position_after(log_path, 1)
    log_path.unlink()
    rec = Recorder()
    with following(log_path, rec, position=position) as follower:
        assert follower.wait_ready(5)
        append(log_path, lines(1))
        rec.wait_for(1)
    assert rec.lines() == expect(1, 1)


def test_an_unreadable_position_is_ignored_with_a_warning(
    log_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    append(log_path, lines(0, 1))
    rec = Recorder()
    with caplog.at_level(logging.WARNING), following(log_path, rec, position="{not json") as follower:
        assert follower.wait_ready(5)
        append(log_path, lines(2))
        rec.wait_for(1)
    assert rec.lines() == expect(1, 2)  # start_at_end, as if there were no position
    assert "ignoring the saved position" in caplog.text and str(log_path) in caplog.text


def test_position_round_trip_and_validation() -> None:
    pos = Position(dev=1, ino=2, offset=3000, head_len=HEAD_BYTES, head_hash="ab" * 16)
    assert Position.decode(pos.encode()) == pos
    for bad, problem in [
        ("[]", "version-1"),
        ('{"v":1}', "integers"),
        ('{"v":1,"dev":1,"ino":2,"off":5,"hlen":9,"head":"' + "a" * 32 + '"}', "exceeds"),
        ('{"v":1,"dev":1,"ino":2,"off":5,"hlen":5,"head":"x"}', "hex"),
        ("", "JSON"),
    ]:
        with pytest.raises(ValueError, match=problem):
            Position.decode(bad)


# ---- errors, stop, resources -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_errors_are_logged_with_the_path_and_retried(
    log_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """As root, permissions cannot fail; something that is not a regular file in its place can.

    A FIFO would block a plain open() forever, and with it stop().
    """
    if kind == "fifo":
        os.mkfifo(log_path)
    else:
        log_path.mkdir()
    rec = Recorder()
    with caplog.at_level(logging.WARNING), following(log_path, rec, start_at_end=False, **FAST) as follower:
        wait_until(lambda: follower.stats().errors >= 2, what="retried errors")
        log_path.unlink() if kind == "fifo" else log_path.rmdir()
        append(log_path, lines(0))
        rec.wait_for(1)
    assert rec.lines() == expect(1)
    assert f"not a regular file: {log_path}" in caplog.text


def test_a_failing_callback_is_retried_with_the_same_line_and_the_file_is_kept(log_path: Path) -> None:
    """Also an OSError from the callback (a full disk behind the sink) must not pass for a read error."""
    gate, held = threading.Event(), threading.Event()
    rec = Recorder()
    failures: list[str] = []

    def flaky(line: bytes | Oversized, position: str) -> None:
        if line == numbered(0):
            held.set()
            gate.wait(10)
        if line == numbered(1) and len(failures) < 2:
            failures.append(position)
            raise OSError(28, "No space left on device") if failures[1:] else RuntimeError("sink unavailable")
        rec(line, position)

    append(log_path, lines(0, 1, 2))
    follower = LineFollower(log_path, flaky, start_at_end=False, **FAST)  # type: ignore[arg-type]
    follower.start()
    try:
        assert held.wait(5)
        rotate_rename(log_path)  # a successor exists while the callback fails
        append(log_path, lines(3))
        gate.set()
        rec.wait_for(4)
    finally:
        gate.set()
        assert follower.stop()
    assert rec.lines() == expect(4)
    assert failures[0] == failures[1]  # the same line, with the same position, was offered again
    assert follower.stats().errors == 2 and follower.stats().lines == 4


def test_a_missing_directory_is_an_error_that_heals(tmp_path: Path) -> None:
    path = tmp_path / "later" / "auth.log"
    rec = Recorder()
    with following(path, rec, start_at_end=False, **FAST) as follower:
        wait_until(lambda: follower.stats().errors >= 1, what="missing directory reported")
        path.parent.mkdir()
        append(path, lines(0))
        rec.wait_for(1, timeout=5)
    assert rec.lines() == expect(1)


def test_stop_is_prompt_and_leaks_no_thread_or_descriptor(log_path: Path) -> None:
    before_fds, before_threads = fd_count(), threading.active_count()
    for exists in (True, False):  # idle on a file, and waiting for a missing one
        if exists:
            append(log_path, lines(0))
        elif log_path.exists():
            log_path.unlink()
        follower = LineFollower(log_path, Recorder(), recheck_interval=60.0)
        follower.start()
        assert follower.wait_ready(5)
        started = time.perf_counter()
        assert follower.stop(5.0)
        assert time.perf_counter() - started < 0.5
    assert fd_count() == before_fds
    assert threading.active_count() == before_threads


def test_rotated_files_are_closed_after_the_grace_period(log_path: Path) -> None:
    before = fd_count()
    rec = Recorder()
    with following(log_path, rec, start_at_end=False, rotate_grace=0.1) as follower:
        append(log_path, lines(0))
        rec.wait_for(1)
        rotate_rename(log_path)
        append(log_path, lines(1))
        rec.wait_for(2)
        assert follower.stats().rotations == 1
        wait_until(lambda: fd_count() == before + 3, what="rotated file closed")  # inotify, eventfd, file
    assert fd_count() == before


# ---- speed (measured and printed, not asserted) ----------------------------------------------------------


def test_measure_throughput_and_latency(log_path: Path) -> None:
    count, pad = 50_000, 1500
    append(log_path, lines(*range(count)).replace(b"x" * 60, b"x" * pad))
    done = threading.Event()
    seen = [0]

    def count_lines(line: bytes | Oversized, position: str) -> None:
        seen[0] += 1
        if seen[0] == count:
            done.set()

    follower = LineFollower(log_path, count_lines, start_at_end=False)
    started = time.perf_counter()
    follower.start()
    try:
        assert done.wait(60)
        elapsed = time.perf_counter() - started
    finally:
        assert follower.stop()
        log_path.write_bytes(b"")  # 75 MB: do not leave it to pytest's temp dir retention
    rate = count / elapsed
    print(
        f"\nfollower throughput: {rate:,.0f} lines/s of {pad + 15} bytes ({rate * (pad + 15) / 1e6:.0f} MB/s)"
    )

    rec = Recorder()
    sent: list[float] = []
    with following(log_path, rec) as follower:
        assert follower.wait_ready(5)
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
        try:
            next_at = time.perf_counter()
            for i in range(2000):  # 1 kHz: pacing the load, not synchronising
                next_at += 0.001
                while (delay := next_at - time.perf_counter()) > 0:
                    time.sleep(delay)
                sent.append(time.perf_counter())
                os.write(fd, lines(i))
        finally:
            os.close(fd)
        rec.wait_for(2000)
    latencies = sorted((got - put) * 1000 for got, put in zip(rec.times, sent, strict=True))
    p50, p99 = statistics.median(latencies), latencies[int(len(latencies) * 0.99)]
    print(f"append -> delivery at 1 kHz: p50 {p50:.3f} ms, p99 {p99:.3f} ms, max {latencies[-1]:.3f} ms")
    assert rec.lines() == expect(2000)
