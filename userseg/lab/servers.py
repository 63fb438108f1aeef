"""Application-server listeners for the namespace lab.

The lab starts one process per server namespace::

    ip netns exec NS python -I -S .../userseg/lab/servers.py --name s1 \\
        --bind 198.18.20.10,2001:db8:20::10 --tcp 80,443,8000-8199 --udp 53

Why a separate process rather than threads in the test process: the listener
must not share the test's GIL with hundreds of concurrent probes, it can be
killed on purpose ("the server is down" is a scenario of its own), and a
process started with `ip netns exec` is in the namespace for good, with no
setns bookkeeping.

Protocol, kept trivial so probes can tell "open" from anything else:
- TCP: every connection is greeted with ``hello from NAME:PORT\\n`` and then
  every byte received is echoed back.
- UDP: every datagram is echoed back to its sender.

Readiness: after *all* sockets are bound and listening the process writes one
line ``READY tcp=N udp=M`` to stdout; the lab waits for that line with a
deadline instead of sleeping. The process exits when its stdin reaches EOF
(the lab closes the pipe, or the lab process died) or on SIGTERM, so a crashed
test run does not leave listeners behind.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import select
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import cast

READY_PREFIX = "READY"


def parse_ports(text: str) -> list[int]:
    """Parse ``"80,443,8000-8003"`` into a sorted, de-duplicated list of ports."""
    ports: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        first, last = int(lo), int(hi or lo)
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"bad port range {part!r}")
        ports.update(range(first, last + 1))
    return sorted(ports)


def format_ports(ports: Sequence[int]) -> str:
    """The inverse of parse_ports, compressing runs so 200 ports stay a short argv."""
    out: list[str] = []
    ordered = sorted(set(ports))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


def _bind(host: str, port: int, kind: socket.SocketKind) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    if kind == socket.SOCK_STREAM:
        sock.listen(1024)
    sock.setblocking(False)
    return sock


def _raise_fd_limit() -> None:
    """Two families x 200 ports x TCP+UDP plus live connections exceed the usual 1024 fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(name: str, binds: Sequence[str], tcp: Sequence[int], udp: Sequence[int]) -> None:
    """Listen on every (bind, port), announce readiness, and serve until stdin reaches EOF.

    A plain selector loop rather than asyncio: importing asyncio triples the start-up
    time, and start-up is most of a lab's build time.
    """
    sel = selectors.DefaultSelector()
    for host in binds:
        for port in tcp:
            sel.register(
                _bind(host, port, socket.SOCK_STREAM), selectors.EVENT_READ, f"hello from {name}:{port}\n"
            )
        for port in udp:
            sel.register(_bind(host, port, socket.SOCK_DGRAM), selectors.EVENT_READ, "udp")
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ, "stdin")
    print(f"{READY_PREFIX} tcp={len(binds) * len(tcp)} udp={len(binds) * len(udp)}", flush=True)
    unsent: dict[socket.socket, bytearray] = {}  # per connection: echo bytes not yet sent

    def flush(conn: socket.socket) -> None:
        try:
            del unsent[conn][: conn.send(unsent[conn])]
        except BlockingIOError:
            pass
        except OSError:  # reset by the firewall or the client: part of the game
            sel.unregister(conn)
            conn.close()
            del unsent[conn]
            return
        sel.modify(conn, selectors.EVENT_READ | (selectors.EVENT_WRITE if unsent[conn] else 0), "conn")

    while True:
        for key, events in sel.select():
            if key.data == "stdin":
                if not os.read(sys.stdin.fileno(), 4096):
                    return
                continue
            sock = cast(socket.socket, key.fileobj)
            if key.data == "udp":
                with contextlib.suppress(OSError):  # BlockingIOError ends the batch
                    while True:
                        data, addr = sock.recvfrom(65536)
                        sock.sendto(data, addr)
            elif key.data != "conn":  # a listening socket; its data is the greeting
                with contextlib.suppress(OSError):
                    while True:
                        conn, _ = sock.accept()
                        conn.setblocking(False)
                        unsent[conn] = bytearray(key.data.encode())
                        sel.register(conn, selectors.EVENT_READ, "conn")
                        flush(conn)
            elif events & selectors.EVENT_READ:
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(sock)
                    sock.close()
                    del unsent[sock]
                    continue
                unsent[sock] += data
                flush(sock)
            else:
                flush(sock)


class ListenerError(RuntimeError):
    """A listener did not come up (bad port, address in use, not ready in time)."""


class Listener:
    """The lab's handle on one listener process in a namespace (the other side of the protocol)."""

    def __init__(
        self, ns: str, name: str, binds: Sequence[str], tcp: Sequence[int], udp: Sequence[int]
    ) -> None:
        self.name = name
        # -I -S and a file path: stdlib only, no site or package import: fast start-up
        here = os.path.abspath(__file__)
        argv = ["ip", "netns", "exec", ns, sys.executable, "-I", "-S", here, "--name", name]
        argv += ["--bind", ",".join(binds), "--tcp", format_ports(tcp), "--udp", format_ports(udp)]
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
        pipe = subprocess.PIPE
        self.proc = subprocess.Popen(argv, stdin=pipe, stdout=pipe, stderr=self._stderr)

    def wait_ready(self, deadline: float) -> None:
        """Block until the READY line arrives or the monotonic deadline passes (ListenerError)."""
        assert self.proc.stdout is not None
        fd, buf = self.proc.stdout.fileno(), b""
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ListenerError(f"listener {self.name} not ready in time")
            if not select.select([fd], [], [], remaining)[0]:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                self.proc.wait(timeout=5)
                self._stderr.seek(0)
                msg = self._stderr.read().decode(errors="replace").strip()
                raise ListenerError(f"listener {self.name} exited ({self.proc.returncode}): {msg}")
            buf += chunk
        if not buf.startswith(READY_PREFIX.encode()):
            raise ListenerError(f"listener {self.name} said {buf!r} instead of {READY_PREFIX}")

    def stop(self, timeout: float = 5.0) -> None:
        """EOF on stdin (the polite way), then SIGTERM, then SIGKILL; always reaped."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and self.proc.poll() is None:
                self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout / 3)
                break
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="userseg lab application-server listeners")
    parser.add_argument("--name", required=True, help="server name used in the TCP greeting")
    parser.add_argument("--bind", required=True, help="comma-separated local addresses")
    parser.add_argument("--tcp", default="", help="ports, e.g. 80,443,8000-8199")
    parser.add_argument("--udp", default="", help="ports, e.g. 53,123")
    args = parser.parse_args(argv)
    binds = [b.strip() for b in args.bind.split(",") if b.strip()]
    try:
        tcp, udp = parse_ports(args.tcp), parse_ports(args.udp)
        _raise_fd_limit()
        serve(args.name, binds, tcp, udp)
    except KeyboardInterrupt:
        return 0
    except (OSError, ValueError) as exc:
        print(f"userseg.lab.servers {args.name}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
