"""Running the real `userseg serve` as systemd would: NOTIFY_SOCKET, signals, the ops endpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.scenario.cli_helpers import USERSEG, env, userseg, write_config
from tests.scenario.world import ALICE
from userseg.lab import Lab
from userseg.service.statusfile import read_status, status_path

SERVICE_SECTION = """
[service]
listen = "127.0.0.1:0"
status_interval = 0.2
startup_sync_timeout = 20
"""


def prepare(lab: Lab, tmp: Path, extra: str = "") -> Path:
    """The scenario config plus [service] (and `extra`), a migrated store, the directory,
    and alice mapped on her client IP (not applied: the service does that)."""
    cfg = write_config(tmp, lab, SERVICE_SECTION + extra)
    userseg(cfg, "db", "upgrade")
    userseg(cfg, "directory", "import", str(tmp / "directory.json"))
    userseg(cfg, "map", "add", "alice", ALICE, "--no-apply")
    return cfg


class ServiceProcess:
    """One `userseg serve` child with its own notify socket (what systemd would listen on)."""

    def __init__(self, cfg: Path, *, netns: str | None, watchdog_usec: int | None = None) -> None:
        self.cfg = cfg
        self.netns = netns
        self.run_dir = cfg.parent / "run"
        self.notify_path = cfg.parent / f"notify-{time.monotonic_ns()}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.notify_path))
        self.messages: list[str] = []
        self._arrived = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        extra = {"NOTIFY_SOCKET": str(self.notify_path)}
        if watchdog_usec is not None:
            extra["WATCHDOG_USEC"] = str(watchdog_usec)
        self.stderr_path = cfg.parent / f"serve-{time.monotonic_ns()}.log"
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            [*USERSEG, "--config", str(cfg), "serve"],
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            text=True,
            env={**env(cfg.parent), **extra},
        )

    # ---------------------------------------------------------------- notify

    def _read(self) -> None:
        """Read every datagram as it arrives, as systemd does (a full queue would drop them)."""
        self.sock.settimeout(0.2)
        while not self._closed:
            try:
                data = self.sock.recv(65536).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._arrived:
                self.messages.append(data)
                self._arrived.notify_all()

    def wait_message(self, predicate: Any, timeout: float) -> str | None:
        """The first datagram (already received or arriving within timeout) that satisfies predicate."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            seen = 0
            while True:
                for m in self.messages[seen:]:
                    if predicate(m):
                        return m
                seen = len(self.messages)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    return None
                self._arrived.wait(min(left, 0.5))

    def wait_ready(self, timeout: float = 60) -> str:
        m = self.wait_message(lambda d: "READY=1" in d.split("\n"), timeout)
        if m is None:
            self.kill()
            raise AssertionError(f"serve did not send READY=1; stderr:\n{self.log()}")
        return m

    def count(self, field: str) -> int:
        with self._arrived:
            return sum(field in m.split("\n") for m in self.messages)

    # ---------------------------------------------------------------- status and ops

    def status(self) -> dict[str, Any] | None:
        return read_status(status_path(self.run_dir, self.netns))

    def wait_status(self, predicate: Any, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        doc = None
        while time.monotonic() < deadline:
            doc = self.status()
            if doc is not None and predicate(doc):
                return doc
            time.sleep(0.05)
        raise AssertionError(f"status never matched; last: {json.dumps(doc, indent=1)}\n{self.log()}")

    def ops_url(self) -> str:
        doc = self.wait_status(lambda d: d["ops"]["address"] is not None)
        host, port = doc["ops"]["address"]
        return f"http://{host}:{port}"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.ops_url() + path, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    # ---------------------------------------------------------------- lifecycle

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
            self._closed = True
            self._reader.join(2)
            return code
        finally:
            self.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.close()

    def close(self) -> None:
        self._closed = True
        self._reader.join(2)
        self.sock.close()
        self._stderr.close()
        if self.notify_path.exists():
            os.unlink(self.notify_path)

    def log(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""
