"""Long-lived flows that a lab client keeps open while a test changes the firewall.

Why apart from traffic.py: the probes there are short, nonblocking and driven by
one shared engine that classifies each attempt once; a long connection is the
opposite: one blocking socket on its own thread that must *keep* working, and
whose interesting outcome is the moment it stops (revocation tests: "this flow
died within 1 s, that one survived"). It shares no code with the engine.

Like every lab socket it is created on the lab's worker thread for the host's
namespace (`Lab.socket`) and bound to a chosen source address.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import socket
import threading
import time

from userseg.lab.topology import Lab


class LongConnection:
    """An established TCP connection that proves every `interval` it still works (echoed ping).

    Revocation tests need "this flow died within 1 s, that one survived": a ping is a line
    the server echoes; the connection is declared dead when an echo misses `dead_after`
    or the socket errors, and the death is dated at the *send* time of the first unanswered
    ping (so detection delay does not count against the firewall). Death is final.
    """

    def __init__(
        self,
        lab: Lab,
        client: str,
        src_ip: str,
        dst_ip: str,
        port: int,
        *,
        interval: float = 0.05,
        dead_after: float = 0.3,
        connect_timeout: float = 1.0,
    ) -> None:
        self.interval, self.dead_after = interval, dead_after
        family = socket.AF_INET6 if ipaddress.ip_address(dst_ip).version == 6 else socket.AF_INET
        self._sock = lab.socket(client, family, socket.SOCK_STREAM)
        self._buf = b""
        self._stop = threading.Event()
        try:
            self._sock.bind((src_ip, 0))
            self._sock.settimeout(connect_timeout)
            self._sock.connect((dst_ip, port))
            if not self._await(b"\n", time.monotonic() + connect_timeout):
                raise TimeoutError("no greeting from the server")
        except OSError as exc:
            self._sock.close()
            raise ConnectionError(f"{client} {src_ip} -> {dst_ip}:{port} did not open: {exc}") from exc
        self.started_at = time.monotonic()
        self.died_at: float | None = None
        self.pings = 0
        self._dead = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"long-{client}-{port}", daemon=True)
        self._thread.start()
        lab.on_close(self.close)

    def alive(self) -> bool:
        return not self._dead.is_set() and not self._stop.is_set()

    def wait_dead(self, timeout: float, since: float | None = None) -> float | None:
        """Seconds from `since` (time.monotonic(); default: connection start) to death, or None.

        Allow `dead_after` on top of the budget in `timeout`. The value can be slightly
        negative (at most one interval) when the ping in flight at `since` was the one lost.
        """
        if not self._dead.wait(timeout) or self.died_at is None:
            return None
        return self.died_at - (self.started_at if since is None else since)

    def wait_pings(self, count: int, timeout: float) -> bool:
        """Wait until `count` more pings succeeded (True) or death / timeout (False)."""
        with self._cond:
            target = self.pings + count
            self._cond.wait_for(lambda: self.pings >= target or self._dead.is_set(), timeout)
            return self.pings >= target

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._sock.close()

    def __enter__(self) -> LongConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _await(self, expected: bytes, deadline: float) -> bool:
        """Read until `expected` is buffered (consume through it); False at the deadline or on stop."""
        while expected not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stop.is_set():
                return False
            self._sock.settimeout(min(remaining, 0.05))  # short slices: close() stays prompt
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise ConnectionResetError(errno.ECONNRESET, "closed by peer")
            self._buf += data
        self._buf = self._buf.split(expected, 1)[1]
        return True

    def _run(self) -> None:
        for seq in itertools.count(1):
            line, sent = f"ping {seq}\n".encode(), time.monotonic()
            try:
                self._sock.sendall(line)
                ok = self._await(line, sent + self.dead_after)
            except OSError:
                ok = False
            if self._stop.is_set():
                return
            with self._cond:
                if not ok:
                    self.died_at = sent
                    self._dead.set()
                    self._cond.notify_all()
                    return
                self.pings += 1
                self._cond.notify_all()
            self._stop.wait(max(0.0, sent + self.interval - time.monotonic()))  # pacing, not sync
