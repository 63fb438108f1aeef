"""The push API through the real server on 127.0.0.1: http.client, raw sockets, curl and TLS."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.events.collect import CollectingSink
from userseg.events.model import EventKind, LoginEvent, ParseResult
from userseg.events.settings import TlsFiles
from userseg.model import ip
from userseg.web.push import API_PATH, push_blueprint
from userseg.web.server import ApiServer, ApiServerError, make_push_app
from userseg.web.tokens import TokenBook, new_token, token_hash

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
TOKEN = new_token()
TOKENS = TokenBook({token_hash(TOKEN): "vpn"})
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
ONE = json.dumps({"user": "CORP\\alice", "ip": "198.18.0.10"}).encode()


@contextmanager
def serve(
    sink: Any = None, *, max_body: int = 1 << 20, max_events: int = 10_000, **server_kw: Any
) -> Iterator[tuple[ApiServer, Any]]:
    sink = CollectingSink() if sink is None else sink
    blueprint = push_blueprint(TOKENS, sink, clock=lambda: NOW, max_body=max_body, max_events=max_events)
    server = ApiServer(make_push_app(blueprint, max_body=max_body), "127.0.0.1", 0, **server_kw)
    server.start()
    try:
        yield server, sink
    finally:
        server.stop()


def request(
    server: ApiServer,
    body: bytes,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, http.client.HTTPMessage, Any]:
    host, port = server.address
    conn: http.client.HTTPConnection
    if context is not None:
        conn = http.client.HTTPSConnection(host, port, timeout=10, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("POST", API_PATH, body=body, headers=AUTH if headers is None else headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, response.headers, json.loads(data) if data else None
    finally:
        conn.close()


def raw_exchange(server: ApiServer, head: bytes, chunks: list[bytes]) -> bytes:
    """Send `head` and `chunks` on a plain socket, then read the answer up to the end of its body."""
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(head)
        for chunk in chunks:
            sock.sendall(chunk)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 1 << 30


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def head(length: int | None = None, extra: str = "") -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {API_PATH} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n{extra}\r\n"
    ).encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


# ------------------------------------------------------------------------------------ plain HTTP


def test_single_batch_and_refusals_over_a_real_socket() -> None:
    with serve() as (server, sink):
        status, headers, doc = request(server, ONE)
        assert (status, doc) == (202, {"accepted": 1})
        assert headers["Server"] == "userseg" and headers["Cache-Control"] == "no-store"
        batch = json.dumps({"events": [{"user": f"u{i}", "ip": f"198.18.2.{i}"} for i in range(1, 101)]})
        assert request(server, batch.encode())[::2] == (202, {"accepted": 100})
        for auth in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}):
            status, headers, doc = request(server, ONE, {"Content-Type": "application/json", **auth})
            assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="userseg"'
            assert doc == {"error": "a valid bearer token is required"}
        status, _, doc = request(server, b'{"user": "a", "ip": "300.1.1.1"}')
        assert status == 400 and doc["problems"] == ['ip: "300.1.1.1" is not an IP address']
        assert request(server, ONE, {**AUTH, "Content-Type": "text/plain"})[0] == 415
    assert len(sink.events()) == 101
    assert sink.events()[0] == LoginEvent(
        "alice", "CORP", ip("198.18.0.10"), NOW, EventKind.LOGON, "vpn", detail=(("format", "http"),)
    )


def test_ipv6_listener() -> None:
    sink = CollectingSink()
    app = make_push_app(push_blueprint(TOKENS, sink, clock=lambda: NOW))
    server = ApiServer(app, "::1", 0)
    server.start()
    try:
        assert server.url == f"http://[::1]:{server.address[1]}"
        assert request(server, b'{"user": "a", "ip": "2001:db8::5"}')[0] == 202
    finally:
        server.stop()
    assert [e.ip for e in sink.events()] == [ip("2001:db8::5")]


def test_curl() -> None:
    """Admins will test with curl: the exact command line from the docs must work."""
    with serve() as (server, sink):
        event = '{"user": "alice@corp.example", "ip": "2001:db8::7", "type": "logout"}'
        command = ["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", "--data-binary", event,
                   "-H", f"Authorization: Bearer {TOKEN}", "-H", "Content-Type: application/json",
                   f"{server.url}{API_PATH}"]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=20)
        body, code = done.stdout.rsplit("\n", 1)
        assert (code, json.loads(body)) == ("202", {"accepted": 1})
    [event] = sink.events()
    assert (event.user, event.domain, event.ip, event.kind) == ("alice", "corp.example", ip("2001:db8::7"),
                                                                EventKind.LOGOFF)  # fmt: skip


@pytest.mark.parametrize("first_line", [b'GARBAGE "quoted"', b"POST /api/v1/events HTTP/9.9", b"G" * 70_000])
def test_unparsable_requests_get_json_too(first_line: bytes) -> None:
    with serve() as (server, _), socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(first_line + b"\r\n\r\n")
        answer = b""
        while data := sock.recv(65536):
            answer += data
    if answer.startswith(b"HTTP/"):
        header, body = answer.split(b"\r\n\r\n", 1)
        assert status_of(answer) in (400, 414, 505) and b"Content-Type: application/json" in header
    else:  # a request line that is not HTTP/1.x gets an HTTP/0.9 answer: the body alone
        body = answer
    assert set(json.loads(body)) == {"error"} and b"quoted" not in body and b"GGG" not in body


def test_chunked_body_within_the_limit_is_accepted() -> None:
    with serve() as (server, sink):
        answer = raw_exchange(server, head(), [chunk(ONE[:10]), chunk(ONE[10:]), b"0\r\n\r\n"])
        assert status_of(answer) == 202, answer
    assert len(sink.events()) == 1


@pytest.mark.parametrize(
    ("framing", "body"), [(None, b"zz\r\nabc\r\n0\r\n\r\n"), (None, b"5\r\nab"), (100, b'{"user": ')]
)
def test_a_cut_or_badly_chunked_body_is_a_clear_400(framing: int | None, body: bytes) -> None:
    with serve() as (server, sink), socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(head(framing) + body)
        sock.shutdown(socket.SHUT_WR)  # the client is done: the body ends early
        answer = b""
        while data := sock.recv(65536):
            answer += data
    assert status_of(answer) == 400, answer
    doc = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert doc["problems"] == ["body: incomplete (the connection ended early or the chunked encoding is bad)"]
    assert sink.items == []


def test_oversized_content_length_is_refused_before_the_body_is_read() -> None:
    """The client announces 10 MB and sends nothing: the 413 must come at once, not after a wait."""
    with serve(max_body=64 * 1024) as (server, sink):
        answer = raw_exchange(server, head(10_000_000), [])
        assert status_of(answer) == 413, answer
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"error": "request body is over 65536 bytes"}
    assert sink.items == []


def test_oversized_chunked_body_is_refused_without_reading_to_its_end() -> None:
    """max_body + 8 KiB of chunks and no terminating chunk: the server answers 413 after reading
    max_body + 1 bytes; were it reading to the end, this would hang until the timeout."""
    with serve(max_body=64 * 1024) as (server, sink):
        data = [chunk(b"x" * 4096) for _ in range(18)]
        answer = raw_exchange(server, head(), data)
        assert status_of(answer) == 413, answer
    assert sink.items == []


def test_an_endless_body_is_cut_off_at_max_request_bytes() -> None:
    """werkzeug would drain up to 10 GB after answering; the cap makes the server hang up."""
    with serve(max_body=16 * 1024, max_request_bytes=256 * 1024) as (server, _):
        sock = socket.create_connection(server.address, timeout=10)
        sent = 0
        try:
            sock.sendall(head())
            piece = chunk(b"y" * 65536)
            with pytest.raises(OSError):  # reset / broken pipe once the server closed
                while sent < 64 << 20:
                    sock.sendall(piece)
                    sent += len(piece)
        finally:
            sock.close()
        assert sent < 32 << 20  # the cap plus what the socket buffers held


def test_idle_connections_time_out_and_the_cap_refuses_extra_ones() -> None:
    with serve(max_connections=2, idle_timeout=30) as (server, sink):
        idle = [socket.create_connection(server.address, timeout=10) for _ in range(2)]
        extra = socket.create_connection(server.address, timeout=10)
        try:
            assert extra.recv(1) == b""  # closed by the server at once, not after 30 s
            for sock in idle:
                sock.close()
            deadline = time.monotonic() + 10
            while True:  # the handlers notice the closed connections on their own threads
                try:
                    if request(server, ONE)[0] == 202:
                        break
                except (ConnectionError, http.client.RemoteDisconnected):
                    pass
                assert time.monotonic() < deadline, "the server did not free its connection slots"
        finally:
            extra.close()
            for sock in idle:
                sock.close()
    assert len(sink.events()) == 1
    with serve(idle_timeout=0.3) as (server, _):
        sock = socket.create_connection(server.address, timeout=10)
        try:
            started = time.monotonic()
            assert sock.recv(1) == b""
            assert time.monotonic() - started < 5
        finally:
            sock.close()


def test_stop_is_prompt_with_open_connections_and_leaves_no_thread() -> None:
    with serve(idle_timeout=60) as (server, _):
        address = server.address
        idle = socket.create_connection(address, timeout=10)
        assert request(server, ONE)[0] == 202  # the idle connection was accepted before this one
        started = time.monotonic()
        server.stop()
        took = time.monotonic() - started
    try:
        assert took < 2.0
        assert idle.recv(1) == b""
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=2).close()
        assert not [t.name for t in threading.enumerate() if t.name.startswith("userseg-api")]
    finally:
        idle.close()


def test_start_failures_are_clear_errors(tmp_path: Path) -> None:
    with serve() as (server, _):
        app = make_push_app(push_blueprint(TOKENS, CollectingSink(), clock=lambda: NOW))
        busy = ApiServer(app, "127.0.0.1", server.address[1])
        with pytest.raises(
            ApiServerError, match=r"cannot listen on 127\.0\.0\.1:\d+: Address already in use"
        ):
            busy.start()
    app.debug = True
    with pytest.raises(ApiServerError, match="debug mode"):
        ApiServer(app, "127.0.0.1", 0)
    app.debug = False
    (tmp_path / "cert.pem").write_text("not a certificate")
    with pytest.raises(
        ApiServerError, match=r"unusable TLS files \(certificate .*cert\.pem, key .*nokey\.pem\)"
    ):
        ApiServer(app, "127.0.0.1", 0, tls=(tmp_path / "cert.pem", tmp_path / "nokey.pem"))


# ------------------------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=userseg-test",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


def test_https(certificate: tuple[Path, Path]) -> None:
    client = ssl.create_default_context(cafile=str(certificate[0]))
    with serve(tls=certificate) as (server, sink):
        assert server.url.startswith("https://127.0.0.1:")
        assert request(server, ONE, context=client)[::2] == (202, {"accepted": 1})
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            request(server, ONE)  # plain HTTP to the TLS port
        with pytest.raises(ssl.SSLCertVerificationError):
            request(server, ONE, context=ssl.create_default_context())  # an unknown CA is refused
    assert len(sink.events()) == 1


def test_client_certificates_when_a_client_ca_is_configured(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    with serve(tls=TlsFiles(cert, key, client_ca=cert)) as (server, sink):
        anonymous = ssl.create_default_context(cafile=str(cert))
        with pytest.raises((ssl.SSLError, ConnectionError)):
            request(server, ONE, context=anonymous)
        known = ssl.create_default_context(cafile=str(cert))
        known.load_cert_chain(cert, key)  # self-signed: the certificate is its own CA
        assert request(server, ONE, context=known)[0] == 202
    assert len(sink.events()) == 1


def test_an_encrypted_key_is_refused_without_prompting(
    certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    encrypted = tmp_path / "encrypted.pem"
    subprocess.run(
        ["openssl", "pkey", "-in", str(certificate[1]), "-aes256", "-passout", "pass:x",
         "-out", str(encrypted)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    app = make_push_app(push_blueprint(TOKENS, CollectingSink(), clock=lambda: NOW))
    with pytest.raises(ApiServerError, match=r"TLS key .*encrypted\.pem is encrypted"):
        ApiServer(app, "127.0.0.1", 0, tls=(certificate[0], encrypted))


def test_a_silent_client_does_not_block_other_handshakes(certificate: tuple[Path, Path]) -> None:
    """werkzeug's own TLS handshakes in the accept loop: one silent client stalls everyone."""
    client = ssl.create_default_context(cafile=str(certificate[0]))
    with serve(tls=certificate, idle_timeout=30) as (server, _):
        silent = socket.create_connection(server.address, timeout=10)
        try:
            started = time.monotonic()
            assert request(server, ONE, context=client)[0] == 202
            assert time.monotonic() - started < 3
        finally:
            silent.close()


# ------------------------------------------------------------------------------------ measurement


class CountingSink:
    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def emit(
        self, source: str, result: ParseResult, position: str | None = None, *, block: bool = True
    ) -> bool:
        with self._lock:
            self.count += 1
        return True


def test_measure_events_per_second(capsys: pytest.CaptureFixture[str]) -> None:
    """Not an assertion of speed: prints events/s for batches of 1,000 through the real server.
    werkzeug closes every connection after one answer, so each batch opens a new connection."""
    events = [
        {
            "user": f"user{i}",
            "ip": f"198.18.{i // 250}.{i % 250 + 1}",
            "time": "2026-11-22T11:59:00Z",
            "ttl": 3600,
        }
        for i in range(1000)
    ]
    batch = json.dumps({"events": events}).encode()
    with serve(CountingSink()) as (server, sink):
        request(server, batch)  # warm-up
        rounds, started = 20, time.perf_counter()
        for _ in range(rounds):
            assert request(server, batch)[::2] == (202, {"accepted": 1000})
        took = time.perf_counter() - started
    assert sink.count == (rounds + 1) * 1000
    with capsys.disabled():
        print(f"\npush API: {rounds * 1000 / took:,.0f} events/s ({len(batch)} byte batches of 1,000, "
              f"{took / rounds * 1000:.1f} ms each)")  # fmt: skip
