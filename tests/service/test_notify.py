"""sd_notify over a real AF_UNIX datagram socket, as systemd would receive it."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from userseg.service.notify import Notifier, watchdog_interval


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def test_ready_reaches_the_socket_named_by_notify_socket(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    n = Notifier()
    try:
        assert n.enabled
        assert n.notify("READY=1", "STATUS=ok; 3 mappings") is True
        assert sock.recv(4096) == b"READY=1\nSTATUS=ok; 3 mappings"
        assert n.notify("WATCHDOG=1") is True  # the socket is reused
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        n.close()
    assert n.sent[-2:] == ["READY=1\nSTATUS=ok; 3 mappings", "WATCHDOG=1"]


def test_an_at_sign_means_the_abstract_namespace() -> None:
    name = f"userseg-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    n = Notifier(f"@{name}")
    try:
        assert n.notify("READY=1") is True
        assert sock.recv(4096) == b"READY=1"
    finally:
        n.close()
        sock.close()


def test_without_notify_socket_every_call_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    assert n.notify("READY=1") is False
    assert n._sock is None  # nothing was even opened
    n.close()


def test_a_receiver_that_never_reads_does_not_block_the_sender(receiver: tuple[socket.socket, str]) -> None:
    _, path = receiver
    n = Notifier(path)
    results: list[bool] = []
    timings: list[float] = []

    def fill() -> None:  # on a thread: a blocking send must fail the test, not hang it
        for _ in range(10_000):  # far more than any AF_UNIX receive queue holds
            start = time.monotonic()
            results.append(n.notify("WATCHDOG=1"))
            timings.append(time.monotonic() - start)
            if not results[-1]:
                break

    worker = threading.Thread(target=fill, daemon=True)
    worker.start()
    worker.join(5)
    try:
        assert not worker.is_alive(), f"notify() blocked after {len(results)} sends"
        assert results[0] is True
        assert results[-1] is False, "the queue never filled"
        assert timings[-1] < 0.5  # the refused send returned at once
        assert n.notify("WATCHDOG=1") is False  # and stays refused while nobody reads
    finally:
        n.close()


def test_a_missing_socket_is_logged_once_and_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = Notifier(str(tmp_path / "nobody-listens.sock"))
    try:
        with caplog.at_level("WARNING", logger="userseg.notify"):
            assert n.notify("READY=1") is False
            assert n.notify("STATUS=still here") is False
    finally:
        n.close()
    warnings = [r for r in caplog.records if r.name == "userseg.notify"]
    assert len(warnings) == 1 and "cannot notify systemd" in warnings[0].getMessage()


def test_sent_keeps_only_the_latest_messages() -> None:
    n = Notifier("")
    for i in range(50):
        n.notify(f"STATUS={i}")
    assert len(n.sent) <= 21 and n.sent[-1] == "STATUS=49"


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("", None, None),
        ("0", None, None),
        ("abc", None, None),
        ("-5", None, None),
        ("20000000", None, 10.0),
        ("3000000", "self", 1.5),
        ("3000000", "other", None),  # inherited from a parent: not ours to ping
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    for key, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            pid_text = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(value, value)
            monkeypatch.setenv(key, pid_text)
    assert watchdog_interval() == expected
