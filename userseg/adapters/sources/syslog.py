"""Syslog listeners (UDP, TCP, TLS): network bytes -> SyslogMessage -> payload parser -> Sink.

One `SyslogListener` per configured URL, each on its own thread.  Wire
formats are parsed by `userseg.events.syslog_frame` (pure), the payload
(NXLog JSON, Snare, XML...) by the injected `parse_payload`, so this module
only owns sockets, policy (who may send) and counting.  The per-message path
and the TCP/TLS connection loop live in `syslog_stream`.

UDP cannot push back on a sender, so datagrams are emitted with
`block=False`: a full ingest queue drops, counted, and the socket keeps
being drained; a large SO_RCVBUF absorbs bursts.  TCP and TLS emit with
`block=True` so back-pressure reaches the senders through TCP flow control.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import selectors
import socket
import ssl
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import tzinfo
from pathlib import Path
from urllib.parse import urlsplit

from userseg.adapters.sources.syslog_stream import Ingress, PayloadParser, StreamLoop, SyslogStats
from userseg.events.model import Sink
from userseg.events.syslog_frame import MAX_MESSAGE, split_datagram
from userseg.model import AddressRange
from userseg.ports import Clock

__all__ = [
    "PayloadParser",
    "SyslogListener",
    "SyslogListenerError",
    "SyslogStats",
    "TlsServerSettings",
    "parse_listen_url",
]

log = logging.getLogger("userseg.syslog")

DEFAULT_PORTS = {"udp": 514, "tcp": 514, "tls": 6514}
UDP_BATCH = 512  # datagrams drained per wake-up before the stop flag is looked at again
SO_MEMINFO, SK_MEMINFO_VARS, SK_MEMINFO_DROPS = 55, 9, 8  # <linux/sock_diag.h>
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux; typeshed lacks it


class SyslogListenerError(RuntimeError):
    """A listener cannot be configured or started (bad URL, unusable certificate, port in use)."""


@dataclass(frozen=True)
class TlsServerSettings:
    """PEM files.  With `client_ca_file` every client must present a certificate signed by it."""

    cert_file: Path
    key_file: Path  # unencrypted: a daemon has nobody to ask for a passphrase
    client_ca_file: Path | None = None


def parse_listen_url(url: str) -> tuple[str, str, int]:
    """`udp://host:port`, `tcp://...`, `tls://...` -> (scheme, host, port); IPv6 hosts in brackets;
    the port defaults to 514 (6514 for tls), the host to all IPv4 addresses."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise SyslogListenerError(f"bad listen URL {url!r}: {exc}") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise SyslogListenerError(f"bad listen URL {url!r}: the scheme must be udp, tcp or tls")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise SyslogListenerError(f"bad listen URL {url!r}: only scheme://host:port is allowed")
    return parts.scheme, parts.hostname or "0.0.0.0", DEFAULT_PORTS[parts.scheme] if port is None else port


class SyslogListener:
    """One syslog listener: `start()` binds and starts its thread, `stop()` closes everything.

    `parse_payload(message, received)` turns a message into a LoginEvent,
    Skipped or Rejected; an exception from it costs that message only.
    `allowed_senders` empty means everyone.  `local_tz` is the zone of
    timestamps that carry none (RFC 3164); default: the clock's zone.
    """

    def __init__(
        self,
        name: str,
        url: str,
        sink: Sink,
        parse_payload: PayloadParser,
        *,
        clock: Clock,
        allowed_senders: Sequence[AddressRange] = (),
        tls: TlsServerSettings | None = None,
        max_connections: int = 256,
        idle_timeout: float = 3600.0,
        handshake_timeout: float = 10.0,
        local_tz: tzinfo | None = None,
        udp_receive_buffer: int = 8 << 20,
    ) -> None:
        self.name = name
        self.url = url
        self.scheme, self._host, self._port = parse_listen_url(url)
        if (self.scheme == "tls") != (tls is not None):
            raise SyslogListenerError(f"syslog {name}: tls settings are required for tls:// and only for it")
        if max_connections < 1 or idle_timeout <= 0 or handshake_timeout <= 0:
            raise SyslogListenerError(f"syslog {name}: max_connections and the timeouts must be positive")
        self._ingress = Ingress(name, sink, parse_payload, clock, allowed_senders, local_tz)
        self._tls = tls
        self._stream = StreamLoop(
            self._ingress,
            max_connections=max_connections,
            idle_timeout=idle_timeout,
            handshake_timeout=handshake_timeout,
        )
        self._udp_receive_buffer = udp_receive_buffer
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake: tuple[int, int] | None = None
        self._lock = threading.Lock()  # hands the wake pipe to the thread if stop() gives up waiting
        self._exited = False
        self._thread_owns_wake = False
        self._address: tuple[str, int] | None = None
        self._udp_socket: socket.socket | None = None
        self._kernel_drops = 0

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port): the real port when the URL asked for port 0."""
        if self._address is None:
            raise SyslogListenerError(f"syslog {self.name} is not started")
        return self._address

    def stats(self) -> SyslogStats:
        return dataclasses.replace(self._ingress.stats(), kernel_dropped=self._kernel_dropped())

    def _kernel_dropped(self) -> int:
        """The socket's drop counter (SK_MEMINFO_DROPS): datagrams lost before we could read
        them, which the queue's own `dropped` cannot see.  Kept after the socket closes."""
        sock = self._udp_socket
        if sock is not None and sock.fileno() >= 0:
            try:
                info = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * SK_MEMINFO_VARS)
                self._kernel_drops = struct.unpack(f"{SK_MEMINFO_VARS}I", info)[SK_MEMINFO_DROPS]
            except OSError:
                pass
        return self._kernel_drops

    def start(self) -> None:
        """Bind now (so a busy port or a bad certificate fails the caller), then serve on a thread."""
        if self._thread is not None or self._exited:
            raise SyslogListenerError(f"syslog {self.name} was already started")
        context = self._tls_context() if self._tls is not None else None
        sock = self._bind()
        self._address = sock.getsockname()[:2]
        if self.scheme == "udp":
            self._udp_socket = sock
        # Everything the thread needs is made here, so that running out of descriptors (or of
        # threads) fails start() instead of killing the thread after start() returned.
        opened: list[int] = []
        try:
            opened += os.pipe()
            os.set_blocking(opened[0], False)
            self._wake = (opened[0], opened[1])
            selector = selectors.DefaultSelector()
            try:
                selector.register(sock, selectors.EVENT_READ, None)
                selector.register(opened[0], selectors.EVENT_READ, opened[0])
                self._thread = threading.Thread(
                    target=self._run,
                    args=(sock, context, selector),
                    name=f"userseg-syslog-{self.name}",
                    daemon=True,
                )
                self._thread.start()
            except BaseException:
                selector.close()
                raise
        except (OSError, RuntimeError) as exc:
            sock.close()
            for fd in opened:
                os.close(fd)
            self._wake = self._thread = None
            raise SyslogListenerError(f"syslog {self.name}: cannot start: {exc}") from None
        log.info("syslog %s: listening on %s://%s:%d", self.name, self.scheme, *self._address)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and close every socket.  Prompt, unless the thread is blocked handing a message to
        a full sink (TCP back-pressure): then it finishes on its own once the sink takes it."""
        thread, self._thread = self._thread, None
        if thread is None or self._wake is None:
            return
        self._stopping.set()
        os.write(self._wake[1], b"x")
        thread.join(timeout)
        with self._lock:
            if self._exited:
                self._close_wake()
            else:
                self._thread_owns_wake = True
                log.error("syslog %s: the listener thread did not stop within %.1f s", self.name, timeout)

    def _close_wake(self) -> None:
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None

    def _bind(self) -> socket.socket:
        kind = socket.SOCK_DGRAM if self.scheme == "udp" else socket.SOCK_STREAM
        where = f"{self.scheme}://{self._host}:{self._port}"
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(self._host, self._port, type=kind)[0]
        except OSError as exc:
            raise SyslogListenerError(f"syslog {self.name}: cannot resolve {where}: {exc}") from None
        sock = socket.socket(family, kind)
        try:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart despite TIME_WAIT
            else:
                self._set_receive_buffer(sock)
            sock.bind(sockaddr)
            if kind == socket.SOCK_STREAM:
                sock.listen(min(self._stream.max_connections, 1024))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            reason = exc.strerror or str(exc)
            raise SyslogListenerError(f"syslog {self.name}: cannot listen on {where}: {reason}") from None
        return sock

    def _set_receive_buffer(self, sock: socket.socket) -> None:
        """A burst of logons (a shift starting) must wait in the kernel, not be dropped there;
        SO_RCVBUFFORCE (needs CAP_NET_ADMIN) is not capped by net.core.rmem_max."""
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self._udp_receive_buffer)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._udp_receive_buffer)

    def _tls_context(self) -> ssl.SSLContext:
        settings = self._tls
        assert settings is not None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.num_tickets = 0  # forwarders do not resume sessions; saves a write per handshake

        def no_passphrase() -> bytes:  # never prompt on a terminal the daemon does not have
            raise SyslogListenerError(f"syslog {self.name}: key {settings.key_file} is encrypted")

        try:
            context.load_cert_chain(settings.cert_file, settings.key_file, password=no_passphrase)
            if settings.client_ca_file is not None:
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(cafile=settings.client_ca_file)
        except SyslogListenerError:
            raise
        except (OSError, ssl.SSLError) as exc:
            files = f"certificate {settings.cert_file}, key {settings.key_file}"
            if settings.client_ca_file is not None:
                files += f", client CA {settings.client_ca_file}"
            reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
            raise SyslogListenerError(f"syslog {self.name}: unusable TLS files ({files}): {reason}") from None
        return context

    def _run(
        self, sock: socket.socket, context: ssl.SSLContext | None, selector: selectors.BaseSelector
    ) -> None:
        try:
            with selector:
                if self.scheme == "udp":
                    self._serve_udp(sock, selector)
                else:
                    self._stream.serve(sock, context, selector, self._stopping)
        except Exception:  # the loops catch per event; this is the last line of defence
            self._ingress.errors += 1
            log.exception("syslog %s: listener loop failed", self.name)
        finally:
            sock.close()
            with self._lock:
                self._exited = True
                if self._thread_owns_wake:
                    self._close_wake()
            log.info("syslog %s: stopped", self.name)

    def _serve_udp(self, sock: socket.socket, selector: selectors.BaseSelector) -> None:
        """One datagram is one message (or several, each starting with a PRI after a LF)."""
        ingress = self._ingress
        clock = ingress.clock
        deliver = ingress.deliver
        buffer = bytearray(MAX_MESSAGE + 1)  # one byte more than allowed: a full buffer is oversized
        view = memoryview(buffer)
        check = bool(ingress.allowed)
        while not self._stopping.is_set():
            selector.select()
            try:
                for _ in range(UDP_BATCH):
                    try:
                        size, sender = sock.recvfrom_into(buffer)
                    except (BlockingIOError, InterruptedError):
                        break
                    if check and not ingress.sender_allowed(sender[0]):
                        continue
                    now = clock.now()
                    data = bytes(view[:size])
                    if data.find(b"\n<", 0, size - 1) == -1:
                        deliver(data, now, False)
                    else:
                        for part in split_datagram(data):
                            deliver(part, now, False)
            except Exception:
                ingress.errors += 1
                ingress.say("bug", logging.ERROR, "error handling a datagram", exc_info=True)
