"""The per-message path shared by all syslog transports, and the TCP/TLS connection loop.

`Ingress` is what every received message goes through: sender allowlist,
header parse, payload parse, sink, counters.  `StreamLoop` serves TCP and
TLS connections with one selector loop per listener rather than a thread
per connection: a domain's worth of forwarders is a few hundred mostly idle
connections, the GIL would serialise their parsing anyway, and one loop
makes the idle sweep, the connection cap and a prompt stop one place each.
TLS handshakes run non-blocking inside the loop, so a client that stalls
mid-handshake delays nobody.  Stream messages are emitted with
`block=True`: when the ingest queue is full the loop stops reading and TCP
flow control pushes back on every sender.

Nothing a peer sends may end the loop: framing and parse failures become
Rejected results (counted, handed to the sink), TLS failures are counted,
and an unexpected exception costs the one connection it happened on.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from userseg.events.model import ParseResult, Rejected, Sink
from userseg.events.syslog_frame import FrameError, StreamDeframer, SyslogMessage, parse_header
from userseg.model import AddressRange
from userseg.ports import Clock

log = logging.getLogger("userseg.syslog")

PayloadParser = Callable[[SyslogMessage, datetime], ParseResult]
RECV_SIZE = 64 * 1024  # per read from one connection
LOG_INTERVAL = 10.0  # seconds between two log lines of one kind (with the count suppressed meanwhile)
ALLOW_CACHE_SIZE = 4096


@dataclass(frozen=True)
class SyslogStats:
    received: int  # messages from allowed senders (before parsing)
    not_allowed: int  # datagrams / connections from senders outside allowed_senders (never parsed)
    rejected: int  # Rejected results: header, framing or payload
    dropped: int  # the sink refused (queue full; UDP only)
    tls_failures: int  # failed or timed-out handshakes, TLS errors afterwards
    connections: int  # TCP/TLS connections accepted (past the allowlist and the cap)
    active_connections: int
    refused_connections: int  # over max_connections
    idle_closed: int
    errors: int  # unexpected exceptions caught by the loop (bugs; see the log)
    kernel_dropped: int = 0  # UDP: datagrams the kernel dropped on a full receive buffer (SO_MEMINFO)


class RateLimitedLog:
    """At most one line per kind per LOG_INTERVAL: a flood of bad input must not flood the log."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._last: dict[str, tuple[float, int]] = {}

    def __call__(self, kind: str, level: int, fmt: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        last, suppressed = self._last.get(kind, (-LOG_INTERVAL, 0))
        if now - last < LOG_INTERVAL:
            self._last[kind] = (last, suppressed + 1)
            return
        self._last[kind] = (now, 0)
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        log.log(level, "syslog %s: " + fmt + "%s", self.name, *args, more, exc_info=exc_info)


def peer_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The sender's address as the allowlist sees it (IPv4-mapped IPv6 unwrapped; None if unparsable)."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # a dual-stack socket reports IPv4 senders as ::ffff:a.b.c.d
    return addr


class Ingress:
    """Allowlist, parsing, delivery and counters of one listener.  Used by its thread only;
    other threads read the counters (plain ints) through `stats()`."""

    def __init__(
        self,
        name: str,
        sink: Sink,
        parse_payload: PayloadParser,
        clock: Clock,
        allowed_senders: Sequence[AddressRange],
        local_tz: tzinfo | None,
    ) -> None:
        self.name = name
        self.sink = sink
        self.parse_payload = parse_payload
        self.clock = clock
        self.allowed = tuple(allowed_senders)
        self.local_tz = local_tz
        self.say = RateLimitedLog(name)
        self._allow_cache: dict[str, bool] = {}
        self.received = self.not_allowed = self.rejected = self.dropped = 0
        self.tls_failures = self.connections = self.active = self.refused = 0
        self.idle_closed = self.errors = 0

    def stats(self) -> SyslogStats:
        return SyslogStats(
            self.received, self.not_allowed, self.rejected, self.dropped, self.tls_failures,
            self.connections, self.active, self.refused, self.idle_closed, self.errors,
        )  # fmt: skip

    def sender_allowed(self, host: str) -> bool:
        """True when the allowlist is empty or holds `host`; counts and logs a refusal."""
        if not self.allowed:
            return True
        ok = self._allow_cache.get(host)
        if ok is None:
            addr = peer_ip(host)
            ok = addr is not None and any(r.contains(addr) for r in self.allowed)
            if len(self._allow_cache) >= ALLOW_CACHE_SIZE:  # spoofed UDP sources must not grow it forever
                self._allow_cache.clear()
            self._allow_cache[host] = ok
        if not ok:
            self.not_allowed += 1
            self.say("not_allowed", logging.WARNING, "ignored traffic from %s: not in allowed_senders", host)
        return ok

    def deliver(self, data: bytes, now: datetime, block: bool) -> None:
        """One message: header, payload, sink.  Runs for every message: keep it lean."""
        self.received += 1
        head = parse_header(data, received=now, local_tz=self.local_tz)
        result: ParseResult
        if isinstance(head, SyslogMessage):
            try:
                result = self.parse_payload(head, now)
            except Exception as exc:  # a parser bug must cost one message, not the listener
                self.errors += 1
                self.say("parser", logging.ERROR, "payload parser failed: %r", exc, exc_info=True)
                result = Rejected(f"payload parser failed: {type(exc).__name__}")
        else:
            result = head
        if type(result) is Rejected:
            self.rejected += 1
        if not self.sink.emit(self.name, result, None, block=block):
            self.dropped += 1
            self.say("dropped", logging.WARNING, "ingest queue full: dropping messages")

    def deliver_frames(self, frames: list[bytes | FrameError], peer: str) -> bool:
        """Deliver what a deframer produced; False after a fatal framing error (close the stream)."""
        if not frames:
            return True
        now = self.clock.now()
        for frame in frames:
            if isinstance(frame, FrameError):
                self.rejected += 1
                self.say("framing", logging.WARNING, "framing error from %s: %s", peer, frame.reason)
                self.sink.emit(self.name, Rejected(frame.reason), None, block=True)
                if frame.fatal:
                    return False
            else:
                self.deliver(frame, now, True)
        return True


class _Connection:
    __slots__ = ("deframer", "fd", "handshaking", "last_active", "peer", "sock", "tls", "writing")

    def __init__(self, sock: socket.socket, peer: str, tls: bool, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.tls = tls
        self.handshaking = tls
        self.writing = False  # registered for EVENT_WRITE: TLS must write before it can go on
        self.last_active = now
        self.deframer = StreamDeframer()


class StreamLoop:
    """Serves one listening TCP socket (TLS when a context is given) until `stopping` is set."""

    def __init__(
        self, ingress: Ingress, *, max_connections: int, idle_timeout: float, handshake_timeout: float
    ) -> None:
        self.ingress = ingress
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self._conns: dict[int, _Connection] = {}
        self._buffer = memoryview(bytearray(RECV_SIZE))
        self._accept_paused = False

    def serve(
        self,
        listener: socket.socket,
        context: ssl.SSLContext | None,
        selector: selectors.BaseSelector,
        stopping: threading.Event,
    ) -> None:
        """`selector` holds `listener` (data None) and the stop pipe (any other non-connection data)."""
        tick = max(0.01, min(1.0, self.idle_timeout / 4, self.handshake_timeout / 4))
        next_sweep = time.monotonic() + tick
        try:
            while not stopping.is_set():
                for key, _mask in selector.select(max(0.0, next_sweep - time.monotonic())):
                    conn = key.data
                    try:
                        if conn is None:
                            self._accept(listener, context, selector)
                        elif isinstance(conn, _Connection):
                            self._service(conn, selector)
                    except Exception:
                        self.ingress.errors += 1
                        self.ingress.say("bug", logging.ERROR, "error serving a connection", exc_info=True)
                        if isinstance(conn, _Connection):
                            self._close(conn, selector)
                if time.monotonic() >= next_sweep:
                    self._sweep(selector)
                    if self._accept_paused:  # out of descriptors a tick ago: try again
                        self._accept_paused = False
                        selector.register(listener, selectors.EVENT_READ, None)
                    next_sweep = time.monotonic() + tick
        finally:
            for conn in list(self._conns.values()):
                self._close(conn, selector)

    def _accept(
        self, listener: socket.socket, context: ssl.SSLContext | None, selector: selectors.BaseSelector
    ) -> None:
        ingress = self.ingress
        for _ in range(64):
            try:
                raw, peer_address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and friends: the pending connection stays queued and the listening socket
                # readable; stop watching it until the next tick instead of spinning on it.
                ingress.errors += 1
                ingress.say("accept", logging.ERROR, "accept failed: %s", exc.strerror or exc)
                selector.unregister(listener)
                self._accept_paused = True
                return
            peer = peer_address[0]
            if not ingress.sender_allowed(peer):
                raw.close()
                continue
            if len(self._conns) >= self.max_connections:
                raw.close()
                ingress.refused += 1
                ingress.say(
                    "cap",
                    logging.WARNING,
                    "refused a connection from %s: max_connections (%d) reached",
                    peer,
                    self.max_connections,
                )
                continue
            sock: socket.socket = raw
            try:
                raw.setblocking(False)
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # notice peers that vanished
                if context is not None:
                    sock = context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
                conn = _Connection(sock, peer, context is not None, time.monotonic())
                selector.register(sock, selectors.EVENT_READ, conn)
            except OSError as exc:  # reset before we got to it
                sock.close()
                raw.close()
                ingress.say("accept", logging.WARNING, "connection from %s failed: %s", peer, exc)
                continue
            self._conns[conn.fd] = conn
            ingress.connections += 1
            ingress.active = len(self._conns)

    def _service(self, conn: _Connection, selector: selectors.BaseSelector) -> None:
        sock = conn.sock
        if conn.handshaking:
            assert isinstance(sock, ssl.SSLSocket)
            try:
                sock.do_handshake()
            except ssl.SSLWantReadError:
                if conn.writing:
                    self._want(conn, selector, selectors.EVENT_READ)
                return
            except ssl.SSLWantWriteError:
                self._want(conn, selector, selectors.EVENT_WRITE)
                return
            except (ssl.SSLError, OSError) as exc:
                self._tls_failed(conn, exc, selector)
                return
            conn.handshaking = False
        if conn.writing:
            self._want(conn, selector, selectors.EVENT_READ)
        buffer = self._buffer
        while True:
            try:
                size = sock.recv_into(buffer)
            except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
                return
            except ssl.SSLWantWriteError:  # e.g. a TLS 1.3 key update must be answered first
                self._want(conn, selector, selectors.EVENT_WRITE)
                return
            except ssl.SSLError as exc:
                self._tls_failed(conn, exc, selector)
                return
            except OSError:  # reset by peer
                self._close(conn, selector)
                return
            if not size:
                self.ingress.deliver_frames(conn.deframer.finish(), conn.peer)
                self._close(conn, selector)
                return
            conn.last_active = time.monotonic()
            if not self.ingress.deliver_frames(conn.deframer.feed(buffer[:size]), conn.peer):
                self._close(conn, selector)
                return
            # Plain TCP: the level-triggered selector comes back for the rest, so one busy sender
            # cannot starve the others.  TLS: bytes already decrypted inside the SSL object are
            # invisible to select() and must be drained now.
            if not isinstance(sock, ssl.SSLSocket) or not sock.pending():
                return

    @staticmethod
    def _want(conn: _Connection, selector: selectors.BaseSelector, events: int) -> None:
        selector.modify(conn.sock, events, conn)
        conn.writing = events == selectors.EVENT_WRITE

    def _tls_failed(self, conn: _Connection, exc: Exception, selector: selectors.BaseSelector) -> None:
        self.ingress.tls_failures += 1
        reason = (
            getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        )
        self.ingress.say("tls", logging.WARNING, "TLS failure with %s: %s", conn.peer, reason)
        self._close(conn, selector)

    def _sweep(self, selector: selectors.BaseSelector) -> None:
        now = time.monotonic()
        for conn in list(self._conns.values()):
            if conn.handshaking and now - conn.last_active > self.handshake_timeout:
                self._tls_failed(conn, TimeoutError("handshake timed out"), selector)
            elif not conn.handshaking and now - conn.last_active > self.idle_timeout:
                self.ingress.idle_closed += 1
                self.ingress.deliver_frames(conn.deframer.finish(), conn.peer)
                self._close(conn, selector)

    def _close(self, conn: _Connection, selector: selectors.BaseSelector) -> None:
        if self._conns.pop(conn.fd, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError):  # never registered, or already gone
            selector.unregister(conn.sock)
        conn.sock.close()
        self.ingress.active = len(self._conns)
