"""Syslog listeners over real sockets on loopback: UDP, TCP (octet-counted and LF-framed), TLS
with client certificates, the sender allowlist, drops, caps, timeouts, prompt stop, no leaks."""

from __future__ import annotations

import logging
import os
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from tests.adapters.sources.tls_certs import Pki, make_pki
from tests.events.collect import CollectingSink
from userseg.adapters.sources.syslog import SyslogListener, SyslogListenerError, TlsServerSettings
from userseg.events.model import EventKind, LoginEvent, ParseResult, Rejected
from userseg.events.syslog_frame import SyslogMessage, octet_counted
from userseg.model import AddressRange

NOW = datetime(2024, 6, 15, 12, 0, tzinfo=UTC)


class FixedClock:
    def now(self) -> datetime:
        return NOW


def login_parser(msg: SyslogMessage, received: datetime) -> ParseResult:
    """Test payload: `login USER IP`."""
    parts = msg.message.split()
    if len(parts) != 3 or parts[0] != "login":
        return Rejected(f"not a test login: {msg.message[:30]!r}")
    return LoginEvent(
        parts[1], "", ip_address(parts[2]), received, EventKind.LOGON, "test", host=msg.hostname
    )


def users(sink: CollectingSink) -> list[str]:
    return [e.user for e in sink.events()]


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll with a deadline (the listener's counters have no condition to wait on)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.002)


def closed_by_peer(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Block until the server closes the connection (EOF, reset or a TLS alert)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


Factory = Callable[..., SyslogListener]


@pytest.fixture
def make_listener() -> Iterator[Factory]:
    """Builds and starts listeners; stops every one of them at teardown, also on failure."""
    started: list[SyslogListener] = []

    def make(url: str, sink: CollectingSink, **kwargs: Any) -> SyslogListener:
        kwargs.setdefault("clock", FixedClock())
        listener = SyslogListener("test", url, sink, kwargs.pop("parser", login_parser), **kwargs)
        listener.start()
        started.append(listener)
        return listener

    yield make
    for listener in started:
        listener.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def udp_send(address: tuple[str, int], *datagrams: bytes, source: str = "127.0.0.1") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        for datagram in datagrams:
            sock.sendto(datagram, address)


def tcp_connect(address: tuple[str, int], source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(address, timeout=5, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# ------------------------------------------------------------------------------------------ UDP


def test_udp_one_datagram_one_message_and_several_per_datagram(make_listener: Factory) -> None:
    sink = CollectingSink()
    listener = make_listener("udp://127.0.0.1:0", sink)
    udp_send(listener.address, b"<13>Jun 15 11:59:00 dc01 nxlog: login alice 198.18.0.1\n")
    udp_send(listener.address, b"<13>login bob 198.18.0.2\n<13>login carol 198.18.0.3\n<13>bogus")
    sink.wait_for(4)
    assert users(sink) == ["alice", "bob", "carol"]
    assert sink.events()[0].host == "dc01" and sink.events()[0].time == NOW
    assert [r.reason for r in sink.rejected()] == ["not a test login: 'bogus'"]
    stats = listener.stats()
    assert (stats.received, stats.rejected, stats.dropped, stats.not_allowed) == (4, 1, 0, 0)


def test_udp_full_sink_drops_and_counts_and_keeps_serving(make_listener: Factory) -> None:
    sink = CollectingSink(capacity=3)
    listener = make_listener("udp://127.0.0.1:0", sink)
    udp_send(listener.address, *(f"<13>login u{i} 198.18.0.{i}".encode() for i in range(10)))
    wait_until(lambda: listener.stats().received == 10)
    assert listener.stats().dropped == 7 and sink.dropped == 7
    assert users(sink) == ["u0", "u1", "u2"]
    sink.capacity = None  # the pipeline caught up
    udp_send(listener.address, b"<13>login later 198.18.1.1")
    sink.wait_for(4)
    assert users(sink)[-1] == "later"


def test_udp_sender_allowlist(make_listener: Factory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="userseg.syslog")
    sink = CollectingSink()
    allowed = [AddressRange.parse("127.0.0.1")]
    listener = make_listener("udp://127.0.0.1:0", sink, allowed_senders=allowed)
    udp_send(listener.address, *[b"<13>login mallory 198.18.0.66"] * 3, source="127.0.0.2")
    udp_send(listener.address, b"<13>login alice 198.18.0.1", source="127.0.0.1")
    sink.wait_for(1)  # one receive queue: the denied datagrams were handled before this one
    assert users(sink) == ["alice"]
    stats = listener.stats()
    assert (stats.not_allowed, stats.received) == (3, 1)
    denied = [r.getMessage() for r in caplog.records if "not in allowed_senders" in r.getMessage()]
    assert len(denied) == 1 and "127.0.0.2" in denied[0]  # rate-limited: one line for the burst


def test_udp_payload_parser_failure_costs_one_message(make_listener: Factory) -> None:
    def flaky(msg: SyslogMessage, received: datetime) -> ParseResult:
        if "boom" in msg.message:
            raise KeyError("EventID")
        return login_parser(msg, received)

    sink = CollectingSink()
    listener = make_listener("udp://127.0.0.1:0", sink, parser=flaky)
    udp_send(listener.address, b"<13>boom", b"<13>login alice 198.18.0.1")
    sink.wait_for(2)
    assert [r.reason for r in sink.rejected()] == ["payload parser failed: KeyError"]
    assert users(sink) == ["alice"]
    assert listener.stats().errors == 1


def test_udp_receive_buffer_is_large(make_listener: Factory) -> None:
    wanted = 16 << 20  # above Debian's default net.core.rmem_max (4 MiB): needs SO_RCVBUFFORCE (root)
    listener = make_listener("udp://127.0.0.1:0", CollectingSink(), udp_receive_buffer=wanted)
    sizes = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
        except FileNotFoundError:  # the directory listing's own descriptor
            continue
        with socket.socket(fileno=os.dup(int(fd))) as probe:  # family and type read from the socket
            if (
                probe.family == socket.AF_INET
                and probe.type == socket.SOCK_DGRAM
                and probe.getsockname() == listener.address
            ):
                sizes.append(probe.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    assert len(sizes) == 1 and sizes[0] >= wanted


def test_udp_ipv6_dual_stack(make_listener: Factory) -> None:
    sink = CollectingSink()
    listener = make_listener("udp://[::1]:0", sink, allowed_senders=[AddressRange.parse("::1")])
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"<13>login alice 2001:db8::1", listener.address)
    sink.wait_for(1)
    assert sink.events()[0].ip == ip_address("2001:db8::1")


# ------------------------------------------------------------------------------------------ TCP


def test_tcp_octet_counted_several_per_segment_and_split_across_segments(make_listener: Factory) -> None:
    sink = CollectingSink()
    listener = make_listener("tcp://127.0.0.1:0", sink)
    frames = b"".join(octet_counted(f"<13>login u{i} 198.18.0.{i}".encode()) for i in range(3))
    with tcp_connect(listener.address) as sock:
        sock.sendall(frames)  # three messages in one segment
        last = octet_counted(b"<13>login split 198.18.0.9")
        for i in range(0, len(last), 5):  # one message over several segments
            sock.sendall(last[i : i + 5])
        sink.wait_for(4)
    assert users(sink) == ["u0", "u1", "u2", "split"]
    assert listener.stats().connections == 1


def test_tcp_lf_framed_crlf_and_unterminated_last_line(make_listener: Factory) -> None:
    sink = CollectingSink()
    listener = make_listener("tcp://127.0.0.1:0", sink)
    with tcp_connect(listener.address) as sock:
        sock.sendall(b"<13>login alice 198.18.0.1\r\n<13>login bob 198.18.0.2\n<13>login ca")
        sock.sendall(b"rol 198.18.0.3")  # no LF: delivered when the sender closes
        sink.wait_for(2)
    sink.wait_for(3)
    assert users(sink) == ["alice", "bob", "carol"]


def test_tcp_uses_back_pressure_not_drops(make_listener: Factory) -> None:
    sink = CollectingSink(capacity=1)  # refuses only non-blocking emits
    listener = make_listener("tcp://127.0.0.1:0", sink)
    with tcp_connect(listener.address) as sock:
        sock.sendall(b"".join(f"<13>login u{i} 198.18.0.{i}\n".encode() for i in range(5)))
        sink.wait_for(5)
    assert listener.stats().dropped == 0


def test_tcp_oversized_frame_is_rejected_and_the_connection_goes_on(make_listener: Factory) -> None:
    sink = CollectingSink()
    listener = make_listener("tcp://127.0.0.1:0", sink)
    with tcp_connect(listener.address) as sock:
        sock.sendall(b"70000 " + b"x" * 70000 + octet_counted(b"<13>login alice 198.18.0.1"))
        sink.wait_for(2)
    assert "octet-counted frame of 70000 bytes exceeds 65536" in sink.rejected()[0].reason
    assert users(sink) == ["alice"]
    assert listener.stats().rejected == 1


def test_tcp_bogus_length_closes_that_connection_only(make_listener: Factory) -> None:
    sink = CollectingSink()
    listener = make_listener("tcp://127.0.0.1:0", sink)
    with tcp_connect(listener.address) as good, tcp_connect(listener.address) as bad:
        bad.sendall(b"99999999999 <13>login mallory 198.18.0.66\n")
        assert closed_by_peer(bad)
        good.sendall(b"<13>login alice 198.18.0.1\n")
        sink.wait_for(2)
    assert "bogus octet count" in sink.rejected()[0].reason
    assert users(sink) == ["alice"]
    with tcp_connect(listener.address) as again:
        again.sendall(b"<13>login bob 198.18.0.2\n")
        sink.wait_for(3)
    assert users(sink) == ["alice", "bob"]


def test_tcp_sender_allowlist(make_listener: Factory) -> None:
    sink = CollectingSink()
    listener = make_listener("tcp://127.0.0.1:0", sink, allowed_senders=[AddressRange.parse("127.0.0.0/31")])
    with tcp_connect(listener.address, source="127.0.0.2") as denied:
        denied.sendall(b"<13>login mallory 198.18.0.66\n")
        assert closed_by_peer(denied)
    with tcp_connect(listener.address, source="127.0.0.1") as allowed:
        allowed.sendall(b"<13>login alice 198.18.0.1\n")
        sink.wait_for(1)
    assert users(sink) == ["alice"]
    stats = listener.stats()
    assert (stats.not_allowed, stats.connections, stats.received) == (1, 1, 1)


def test_tcp_connection_cap(make_listener: Factory) -> None:
    sink = CollectingSink()
    listener = make_listener("tcp://127.0.0.1:0", sink, max_connections=1)
    with tcp_connect(listener.address) as first:
        first.sendall(b"<13>login alice 198.18.0.1\n")
        sink.wait_for(1)  # the first connection is accepted and registered
        with tcp_connect(listener.address) as second:
            assert closed_by_peer(second)
        first.sendall(b"<13>login bob 198.18.0.2\n")
        sink.wait_for(2)
    assert listener.stats().refused_connections == 1


def test_tcp_idle_connection_is_closed(make_listener: Factory) -> None:
    sink = CollectingSink()
    listener = make_listener("tcp://127.0.0.1:0", sink, idle_timeout=0.2)
    with tcp_connect(listener.address) as sock:
        sock.sendall(b"<13>login alice 198.18.0.1\n")
        assert closed_by_peer(sock)
    wait_until(lambda: listener.stats().active_connections == 0)
    assert listener.stats().idle_closed == 1 and users(sink) == ["alice"]


def test_tcp_out_of_descriptors_pauses_accepting_and_recovers(make_listener: Factory) -> None:
    sink = CollectingSink()
    listener = make_listener("tcp://127.0.0.1:0", sink, idle_timeout=0.2)  # ticks every 50 ms
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # its descriptor exists before the limit
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.dup(0)
    os.close(lowest_free)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no new descriptor from here
        try:
            client.connect(listener.address)
            client.sendall(b"<13>login alice 198.18.0.1\n")
            wait_until(lambda: listener.stats().errors >= 1)  # accept() failed with EMFILE
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        sink.wait_for(1)  # accepting again on the next tick; the queued connection is served
        assert users(sink) == ["alice"]
    finally:
        client.close()


# ------------------------------------------------------------------------------------------ TLS


def tls_settings(pki: Pki, *, client_ca: bool = True) -> TlsServerSettings:
    return TlsServerSettings(pki.server_cert, pki.server_key, pki.ca_cert if client_ca else None)


def tls_connect(address: tuple[str, int], pki: Pki, cert: tuple[Path, Path] | None) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=pki.ca_cert)
    if cert is not None:
        context.load_cert_chain(*cert)
    return context.wrap_socket(tcp_connect(address), server_hostname="127.0.0.1")


def refused(address: tuple[str, int], pki: Pki, cert: tuple[Path, Path] | None) -> bool:
    """With TLS 1.3 the client may finish its side before the server rejects its certificate;
    either way the server ends the connection and never takes data."""
    try:
        sock = tls_connect(address, pki, cert)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    with sock:
        try:
            sock.sendall(b"<13>login mallory 198.18.0.66\n")
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return True
        return closed_by_peer(sock)


def test_tls_with_client_certificates(make_listener: Factory, pki: Pki) -> None:
    sink = CollectingSink()
    listener = make_listener("tls://127.0.0.1:0", sink, tls=tls_settings(pki))
    good = (pki.client_cert, pki.client_key)
    with tls_connect(listener.address, pki, good) as sock:
        sock.sendall(octet_counted(b"<13>1 2024-06-15T11:59:00Z dc01 nxlog - - - login alice 198.18.0.1"))
        sink.wait_for(1)
    assert refused(listener.address, pki, None)  # no client certificate
    assert refused(listener.address, pki, (pki.rogue_cert, pki.rogue_key))  # not issued by the CA
    with tcp_connect(listener.address) as plain:  # plain TCP to the TLS port
        plain.sendall(b"<13>login mallory 198.18.0.66\n")
        assert closed_by_peer(plain)
    wait_until(lambda: listener.stats().tls_failures == 3)
    with tls_connect(listener.address, pki, good) as sock:  # still serving
        sock.sendall(b"<13>login bob 198.18.0.2\n")
        sink.wait_for(2)
    assert users(sink) == ["alice", "bob"]
    stats = listener.stats()
    assert (stats.tls_failures, stats.received, stats.rejected) == (3, 2, 0)


def test_tls_server_authentication_only(make_listener: Factory, pki: Pki) -> None:
    sink = CollectingSink()
    listener = make_listener("tls://127.0.0.1:0", sink, tls=tls_settings(pki, client_ca=False))
    with tls_connect(listener.address, pki, None) as sock:
        sock.sendall(b"<13>login alice 198.18.0.1\n")
        sink.wait_for(1)
    assert users(sink) == ["alice"]


def test_tls_stalled_handshake_times_out(make_listener: Factory, pki: Pki) -> None:
    sink = CollectingSink()
    listener = make_listener("tls://127.0.0.1:0", sink, tls=tls_settings(pki), handshake_timeout=0.2)
    with tcp_connect(listener.address) as silent:
        assert closed_by_peer(silent)
    wait_until(lambda: listener.stats().tls_failures == 1)


def test_tls_unusable_files_fail_start(pki: Pki, tmp_path: Path) -> None:
    cases = {
        "No such file": TlsServerSettings(tmp_path / "missing.pem", pki.server_key),
        "is encrypted": TlsServerSettings(pki.server_cert, pki.encrypted_key),
        "unusable TLS files": TlsServerSettings(pki.server_cert, pki.other_key),  # key does not match
    }
    for message, settings in cases.items():
        listener = SyslogListener(
            "t", "tls://127.0.0.1:0", CollectingSink(), login_parser, clock=FixedClock(), tls=settings
        )
        with pytest.raises(SyslogListenerError, match=message):
            listener.start()


# ------------------------------------------------------------------------------------------ lifecycle


def test_bad_configuration_is_refused() -> None:
    def build(url: str, **kwargs: Any) -> SyslogListener:
        return SyslogListener("t", url, CollectingSink(), login_parser, clock=FixedClock(), **kwargs)

    for url in ("http://127.0.0.1:514", "udp://127.0.0.1:99999", "udp://127.0.0.1:514/path"):
        with pytest.raises(SyslogListenerError, match="bad listen URL"):
            build(url)
    with pytest.raises(SyslogListenerError, match="tls settings are required"):
        build("tls://127.0.0.1:0")
    with pytest.raises(SyslogListenerError, match="must be positive"):
        build("tcp://127.0.0.1:0", max_connections=0)


@pytest.mark.parametrize("scheme", ["udp", "tcp"])
def test_address_in_use_is_a_clear_error(scheme: str) -> None:
    kind = socket.SOCK_DGRAM if scheme == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as taken:
        taken.bind(("127.0.0.1", 0))
        if scheme == "tcp":
            taken.listen()
        port = taken.getsockname()[1]
        listener = SyslogListener(
            "t", f"{scheme}://127.0.0.1:{port}", CollectingSink(), login_parser, clock=FixedClock()
        )
        with pytest.raises(SyslogListenerError, match="Address already in use"):
            listener.start()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_stop_is_prompt_and_leaks_nothing(pki: Pki) -> None:
    before_fds, before_threads = open_fds(), threading.active_count()
    sink = CollectingSink()
    listeners = [
        SyslogListener("u", "udp://127.0.0.1:0", sink, login_parser, clock=FixedClock()),
        SyslogListener("t", "tcp://127.0.0.1:0", sink, login_parser, clock=FixedClock()),
        SyslogListener(
            "s", "tls://127.0.0.1:0", sink, login_parser, clock=FixedClock(), tls=tls_settings(pki)
        ),
    ]
    clients: list[socket.socket] = []
    try:
        for listener in listeners:
            listener.start()
        udp_send(listeners[0].address, b"<13>login a 198.18.0.1")
        clients.append(tcp_connect(listeners[1].address))
        clients[-1].sendall(b"<13>login b 198.18.0.2\n")
        clients.append(tls_connect(listeners[2].address, pki, (pki.client_cert, pki.client_key)))
        clients[-1].sendall(b"<13>login c 198.18.0.3\n")
        sink.wait_for(3)
        for listener in listeners:  # open connections must not delay the stop
            started = time.monotonic()
            listener.stop()
            assert time.monotonic() - started < 0.5
        for client in clients:
            assert closed_by_peer(client)
    finally:
        for listener in listeners:
            listener.stop()
        for client in clients:
            client.close()
    assert threading.active_count() == before_threads
    assert open_fds() == before_fds
