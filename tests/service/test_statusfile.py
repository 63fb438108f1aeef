"""The status file: atomic replacement, its mode, and telling a live writer from a stale file."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from userseg.service.statusfile import read_status, status_path, write_status


def doc(pid: int | None = None, **extra: object) -> dict[str, object]:
    return {"pid": os.getpid() if pid is None else pid, "health": {"status": "ok"}, **extra}


def test_status_path_names_the_namespace(tmp_path: Path) -> None:
    assert status_path(tmp_path, None) == tmp_path / "status-host.json"
    assert status_path(tmp_path, "gw1") == tmp_path / "status-gw1.json"


def test_write_then_read_while_the_writer_lives(tmp_path: Path) -> None:
    path = tmp_path / "run" / "status-host.json"  # the directory does not exist yet
    write_status(path, doc(when=time))  # anything not JSON-native is written as its str()
    got = read_status(path)
    assert got is not None and got["pid"] == os.getpid() and got["health"] == {"status": "ok"}
    assert got["when"].startswith("<module 'time'")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o007 == 0
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_the_mode_does_not_depend_on_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_status(tmp_path / "s.json", doc())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "s.json").stat().st_mode) == 0o640


def test_a_reader_never_sees_half_a_document(tmp_path: Path) -> None:
    path = tmp_path / "status-host.json"
    big = doc(padding="x" * 50_000)
    write_status(path, big)
    stop = threading.Event()
    bad: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            text = path.read_text()
            reads += 1
            try:
                json.loads(text)
            except ValueError:
                bad.append(text[:80])

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(100):
            write_status(path, {**big, "n": i})
    finally:
        stop.set()
        t.join()
    assert reads > 0 and bad == []
    assert json.loads(path.read_text())["n"] == 99


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "status-host.json"
    write_status(path, doc(n=1))
    loop: dict[str, object] = {}
    loop["self"] = loop
    with pytest.raises(ValueError):
        write_status(path, loop)  # circular: json refuses it
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    got = read_status(path)
    assert got is not None and got["n"] == 1


def dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    return int(proc.stdout)


@pytest.mark.parametrize(
    "content",
    [
        None,  # missing file
        "",
        "{not json",
        "[1, 2]",
        json.dumps({"health": {}}),  # no pid
        json.dumps({"pid": "123"}),
        json.dumps({"pid": True}),
        json.dumps({"pid": 0}),  # kill(0, 0) would "find" our own process group
        json.dumps({"pid": -1}),  # kill(-1, 0) would "find" every process
    ],
)
def test_unusable_files_read_as_not_running(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "status-host.json"
    if content is not None:
        path.write_text(content)
    assert read_status(path) is None


def test_a_dead_writer_reads_as_not_running(tmp_path: Path) -> None:
    path = tmp_path / "status-host.json"
    write_status(path, doc(dead_pid()))
    assert read_status(path) is None


def test_a_pid_reused_by_a_younger_process_reads_as_not_running(tmp_path: Path) -> None:
    path = tmp_path / "status-host.json"
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        write_status(path, doc(proc.pid))
        assert read_status(path) is not None  # written while (or after) it started: its own file
        hour_ago = time.time() - 3600
        os.utime(path, (hour_ago, hour_ago))  # a file left an hour before this process existed
        assert read_status(path) is None
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
