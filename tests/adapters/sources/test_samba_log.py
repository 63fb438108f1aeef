"""SambaLogSource: lines to sink emits (blank, oversized, parser bugs); kill -9 and restart in a process."""

from __future__ import annotations

import ipaddress
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.adapters.sources.followkit import Writer, append, numbered, rotate_rename, wait_until
from tests.events.collect import CollectingSink
from userseg.adapters.sources.follow import Position
from userseg.adapters.sources.samba_log import SambaLogSource
from userseg.events.model import EventKind, LoginEvent, ParseResult, Rejected, Skipped

REPO = Path(__file__).resolve().parents[3]
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SAMBA_LINE = (
    '  {"timestamp": "2024-05-01T12:00:00.000000+0000", "type": "Authentication", "Authentication": '
    '{"eventId": 4624, "logonType": 3, "status": "NT_STATUS_OK", "remoteAddress": "ipv4:198.18.10.11:57494", '
    '"serviceDescription": "Kerberos KDC", "clientAccount": "carol@HELDOUT.LAB"}}'
)


def fake_parse(text: str, received: datetime) -> ParseResult:
    """Stands in for userseg.events.formats: enough to see what the source hands over."""
    if text.startswith("boom"):
        raise KeyError("a parser bug")
    if text.startswith("bad"):
        return Rejected(f"bad line {text!r}")
    try:
        auth = json.loads(text)["Authentication"]
    except ValueError:
        return Skipped(text)
    user, _, domain = auth["clientAccount"].partition("@")
    return LoginEvent(
        user=user,
        domain=domain,
        ip=ipaddress.ip_address(auth["remoteAddress"].split(":")[1]),
        time=received,
        kind=EventKind.LOGON,
        source="dc1",
        event_id=auth["eventId"],
    )


class Clock:
    """A clock that ticks one second per call, so each received time is distinguishable."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> datetime:
        self.calls += 1
        return T0 + timedelta(seconds=self.calls)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "auth_audit.log"
    path.write_bytes(b"")
    return path


@pytest.fixture
def source_factory(log_path: Path) -> Iterator[list[SambaLogSource]]:
    started: list[SambaLogSource] = []
    yield started
    for source in started:
        assert source.stop(5), "source thread did not stop"


def start(
    started: list[SambaLogSource], path: Path, sink: CollectingSink, **kwargs: object
) -> SambaLogSource:
    options: dict[str, object] = {"position": None, "clock": Clock(), "start_at_end": False, **kwargs}
    source = SambaLogSource("dc1", path, sink, fake_parse, **options)  # type: ignore[arg-type]
    started.append(source)
    source.start()
    assert source.wait_ready(5)
    return source


def test_each_line_is_parsed_with_its_receive_time_and_emitted_with_its_position(
    log_path: Path, source_factory: list[SambaLogSource]
) -> None:
    sink = CollectingSink()
    start(source_factory, log_path, sink)
    append(log_path, SAMBA_LINE.encode() + b"\nbad thing\r\nplain\n")
    items = sink.wait_for(3)
    assert [i.source for i in items] == ["dc1"] * 3
    event = items[0].result
    assert isinstance(event, LoginEvent) and event.user == "carol" and event.domain == "HELDOUT.LAB"
    assert event.ip == ipaddress.ip_address("198.18.10.11") and event.time == T0 + timedelta(seconds=1)
    assert items[1].result == Rejected("bad line 'bad thing'")  # CR stripped
    assert items[2].result == Skipped("plain")
    assert [Position.decode(i.position or "").offset for i in items] == [
        len(SAMBA_LINE) + 1,
        len(SAMBA_LINE) + 12,
        len(SAMBA_LINE) + 18,
    ]


def test_blank_lines_emit_nothing_and_the_next_position_covers_them(
    log_path: Path, source_factory: list[SambaLogSource]
) -> None:
    sink = CollectingSink()
    source = start(source_factory, log_path, sink)
    append(log_path, b"one\n\n   \n\t\r\ntwo\n")
    items = sink.wait_for(2)
    assert [i.result for i in items] == [Skipped("one"), Skipped("two")]
    assert Position.decode(items[1].position or "").offset == os.path.getsize(log_path)
    wait_until(lambda: source.stats().lines == 5, what="counted")
    stats = source.stats()
    assert (stats.lines, stats.blank, stats.emitted, stats.bytes) == (5, 3, 2, os.path.getsize(log_path))


def test_an_oversized_line_is_rejected(log_path: Path, source_factory: list[SambaLogSource]) -> None:
    sink = CollectingSink()
    source = start(source_factory, log_path, sink, max_line=1000)
    append(log_path, b'{"huge": "' + b"z" * 5000 + b'"}\nafter\n')
    items = sink.wait_for(2)
    assert isinstance(items[0].result, Rejected)
    assert items[0].result.reason == (
        "line too long: 5012 bytes, over the 1000-byte limit "
        '(starts \'{"huge": "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzz\')'
    )
    assert Position.decode(items[0].position or "").offset == 5013
    assert items[1].result == Skipped("after")
    assert source.stats().oversized == 1


def test_a_failing_parser_rejects_the_line_and_the_source_goes_on(
    log_path: Path, source_factory: list[SambaLogSource], caplog: pytest.LogCaptureFixture
) -> None:
    sink = CollectingSink()
    source = start(source_factory, log_path, sink)
    append(log_path, b"boom secret-ish content\nnext\n")
    items = sink.wait_for(2)
    assert items[0].result == Rejected("parser error: KeyError")  # names the failure, not the content
    assert items[1].result == Skipped("next")
    assert source.stats().parser_errors == 1
    assert "the parser failed" in caplog.text and str(log_path) in caplog.text


def test_invalid_utf8_reaches_the_parser_as_replacement_characters(
    log_path: Path, source_factory: list[SambaLogSource]
) -> None:
    sink = CollectingSink()
    start(source_factory, log_path, sink)
    append(log_path, b"caf\xc3\xa9 and caf\xe9 \xff\n")
    assert sink.wait_for(1)[0].result == Skipped("café and caf\ufffd \ufffd")


def test_a_restart_with_the_emitted_position_neither_replays_nor_skips(
    log_path: Path, source_factory: list[SambaLogSource]
) -> None:
    sink = CollectingSink()
    first = start(source_factory, log_path, sink)
    append(log_path, b"a\nb\n")
    position = sink.wait_for(2)[-1].position
    assert first.stop(5)
    append(log_path, b"c\n\n")
    rotate_rename(log_path)
    append(log_path, b"d\n")
    again = CollectingSink()
    start(source_factory, log_path, again, position=position)
    append(log_path, b"e\n")
    assert [i.result for i in again.wait_for(3)] == [Skipped("c"), Skipped("d"), Skipped("e")]


def test_back_pressure_from_a_blocking_sink_loses_nothing(
    log_path: Path, source_factory: list[SambaLogSource]
) -> None:
    entered, gate = threading.Event(), threading.Event()

    class SlowSink(CollectingSink):
        def emit(
            self, source: str, result: ParseResult, position: str | None = None, *, block: bool = True
        ) -> bool:
            assert block, "a file source always waits"
            entered.set()
            gate.wait(10)
            return super().emit(source, result, position, block=block)

    sink = SlowSink()
    start(source_factory, log_path, sink)
    append(log_path, b"".join(numbered(i) + b"\n" for i in range(50)))
    assert entered.wait(5)
    append(log_path, b"".join(numbered(i) + b"\n" for i in range(50, 100)))  # while the sink is stuck
    gate.set()
    assert [i.result for i in sink.wait_for(100)] == [Skipped(numbered(i).decode()) for i in range(100)]


# ---- kill -9 and restart, in a real process ---------------------------------------------------------------


class Child:
    """The source in a subprocess writing [line, position] records; started ready, killed or stopped."""

    def __init__(self, log: Path, out: Path, position: str | None) -> None:
        args = [sys.executable, "-m", "tests.adapters.sources.samba_child", str(log), str(out)]
        self.proc = subprocess.Popen(
            [*args, *([position] if position else [])],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        if not select.select([self.proc.stdout], [], [], 20)[0] or self.proc.stdout.readline() != b"ready\n":
            self.kill()
            errors = self.proc.stderr.read() if self.proc.stderr else b""
            raise AssertionError(f"child did not start: {errors!r}")

    def kill(self) -> None:
        self.proc.kill()
        self.close()

    def terminate(self) -> int:
        self.proc.terminate()
        return self.close()

    def close(self) -> int:
        code = self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code


def records(out: Path) -> list[tuple[str, str]]:
    data = out.read_bytes() if out.exists() else b""
    complete = data[: data.rfind(b"\n") + 1]  # a torn last record would be ignored (none expected)
    return [(line, position) for line, position in map(json.loads, complete.splitlines())]


def test_sigkill_and_restart_from_the_last_recorded_position_gives_exactly_the_written_lines(
    tmp_path: Path,
) -> None:
    """Three runs, killed mid-stream while a writer keeps appending: once inside a file, once after a
    rotation, and once with a rotation happening while nothing reads.  The records of all runs, in order,
    must be exactly the written lines."""
    log, out = tmp_path / "auth_audit.log", tmp_path / "out.jsonl"
    log.write_bytes(b"")
    total = 24_000
    child_down = threading.Event()

    def rotate(w: Writer) -> None:
        rotate_rename(w.path)
        w.reopen()

    def rotate_while_down(w: Writer) -> None:
        assert child_down.wait(30)
        rotate(w)

    writer = Writer(log, total, {8000: rotate, 16_000: rotate_while_down}, pace=8)
    child: Child | None = None
    try:
        child = Child(log, out, None)
        writer.start()
        wait_until(lambda: len(records(out)) >= 3000, timeout=30, what="run 1 progress")
        child.kill()  # mid-stream, in the first file

        child = Child(log, out, records(out)[-1][1])
        wait_until(lambda: len(records(out)) >= 12_000, timeout=30, what="run 2 past the rotation")
        child.kill()  # after the rotation at line 8000: the position is in the second file
        child_down.set()  # the writer rotates again while nothing reads

        wait_until(lambda: writer.written > 17_000, timeout=30, what="writer past the second rotation")
        child = Child(log, out, records(out)[-1][1])  # resumes in auth_audit.log.1, then the new file
        writer.join()
        wait_until(lambda: len(records(out)) >= total, timeout=30, what="all lines")
        assert child.terminate() == 0
        child = None
    finally:
        child_down.set()
        if child is not None:
            child.kill()
        writer.join()
    got = [line for line, _ in records(out)]
    assert len(got) == total
    assert got == [numbered(i).decode() for i in range(total)]


def test_measure_source_throughput(log_path: Path, source_factory: list[SambaLogSource]) -> None:
    """Lines/s through decode + a trivial parser + a sink (printed, not asserted): the budget is 20,000/s."""
    count = 40_000
    line = SAMBA_LINE.encode().ljust(1500, b" ")
    log_path.write_bytes(line.replace(b"carol", b"dave1") + b"\n")  # realistic 1.5 KB lines
    append(log_path, (line + b"\n") * count)

    class CountingSink:
        def __init__(self) -> None:
            self.count, self.done = 0, threading.Event()

        def emit(
            self, source: str, result: ParseResult, position: str | None = None, *, block: bool = True
        ) -> bool:
            self.count += 1
            if self.count == count + 1:
                self.done.set()
            return True

    sink = CountingSink()
    started = time.perf_counter()
    source = SambaLogSource(
        "dc1",
        log_path,
        sink,
        lambda text, received: Skipped(""),
        position=None,
        clock=lambda: T0,
        start_at_end=False,
    )
    source_factory.append(source)
    source.start()
    try:
        assert sink.done.wait(60)
        rate = (count + 1) / (time.perf_counter() - started)
    finally:
        assert source.stop(5)
        log_path.unlink()  # 60 MB: do not leave it to pytest's temp dir retention
    print(f"\nsamba source, trivial parser: {rate:,.0f} lines/s of 1.5 KB")
