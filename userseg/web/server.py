"""HTTP plumbing shared by the API blueprints, and the threaded server that runs them.

The plumbing (JSON for every error, never an HTML page or a stack trace;
security headers; a bounded body reader; a strict JSON parser) leaves each
endpoint to decide only what its documents mean.

`ApiServer` runs werkzeug's threaded WSGI server on a thread, hardened where
werkzeug's own `make_server(..., ssl_context=...)` is unfit for a gateway:

* werkzeug wraps the listening socket, so TLS handshakes run in the accept
  loop and one silent client stalls every other one (measured: the next
  client's handshake times out).  Here each handshake runs on its
  connection's thread, under the idle timeout.
* connections are capped and idle ones time out (`max_connections`,
  `idle_timeout`), so slow clients cannot pile up threads.
* werkzeug closes every connection after one answer, then drains up to
  10 GB the client still sends; here a connection is never read past
  `max_request_bytes`.
* a port in use is an ApiServerError (werkzeug prints and calls sys.exit);
  no DNS lookup at start-up; request lines are logged at DEBUG; the Server
  header names no versions; an app in debug mode is refused (the werkzeug
  debugger runs code); `stop()` also ends open connections, promptly.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, request
from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge
from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from userseg.events.settings import TlsFiles

__all__ = [
    "ApiServer", "ApiServerError", "BodyError", "LogLimiter", "install_json_errors", "json_http_error",
    "json_response", "make_push_app", "parse_json", "read_body", "secure_headers", "tls_context",
]  # fmt: skip

log = logging.getLogger("userseg.api")

READ_CHUNK = 64 * 1024
HEADER_ALLOWANCE = 8 << 20  # http.server accepts up to 100 header lines of 64 KiB each


class ApiServerError(RuntimeError):
    """The server cannot start: unusable TLS files, a port in use, an app in debug mode."""


# ------------------------------------------------------------------------------------ plumbing


class BodyError(ValueError):
    """A request body cannot be accepted; `problems` names every problem with its place."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems[:3]) + (" ..." if len(self.problems) > 3 else ""))


def json_response(status: int, payload: object, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(payload)
    return Response(body, status=status, headers=dict(headers or {}), mimetype="application/json")


def secure_headers(response: Response) -> Response:
    """API answers are never cached (they can name users) nor sniffed into HTML."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; frame-ancestors 'none'"
    return response


def json_http_error(exc: HTTPException) -> Response:
    """Any HTTP error as JSON, keeping its headers (405's Allow, 401's WWW-Authenticate)."""
    status = exc.code or 500
    message = exc.description if status < 500 and exc.description else exc.name
    response = json_response(status, {"error": message})
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return secure_headers(response)


def _internal_error(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return json_http_error(exc)
    log.exception("%s %s failed", request.method, request.path)
    return secure_headers(json_response(500, {"error": "internal server error"}))


def install_json_errors(app: Flask) -> None:
    """JSON for every error the app answers (404, 405, 413, 500...) and security headers on all."""
    app.register_error_handler(HTTPException, json_http_error)
    app.register_error_handler(Exception, _internal_error)
    app.after_request(secure_headers)


def read_body(max_body: int) -> bytes | None:
    """The request body, or None when it is over `max_body` bytes.

    Reads in chunks and never more than `max_body` + 1 bytes, so a chunked
    body (no Content-Length to check up front) cannot make us buffer more.
    """
    chunks: list[bytes] = []
    total = 0
    try:
        while total <= max_body:
            chunk = request.stream.read(min(READ_CHUNK, max_body + 1 - total))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
    except RequestEntityTooLarge:  # the app's MAX_CONTENT_LENGTH is below max_body
        return None
    except (ClientDisconnected, OSError):  # werkzeug's dechunker raises OSError on bad framing
        raise BodyError(
            ["body: incomplete (the connection ended early or the chunked encoding is bad)"]
        ) from None
    return None


class _Strict(ValueError):
    pass


def _constant(name: str) -> Any:
    raise _Strict(f"{name} is not a JSON number")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Strict(f"duplicate key {json.dumps(key[:64])}")
            seen.add(key)
    return doc


def parse_json(body: bytes) -> object:
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys (which one would win is a guess)."""
    if not body.strip():
        raise BodyError(["body: is empty"])
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BodyError([f"body: is not UTF-8 (bad byte at offset {exc.start})"]) from None
    try:
        return json.loads(text, parse_constant=_constant, object_pairs_hook=_pairs)
    except _Strict as exc:
        raise BodyError([f"body: {exc}"]) from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise BodyError([f"body: not valid JSON: {exc.msg} at {where}"]) from None
    except RecursionError:
        raise BodyError(["body: JSON nested too deeply"]) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise BodyError([f"body: not valid JSON: {exc}"]) from None


class LogLimiter:
    """Logs the first occurrence of a key at once, then at most one line per key and `interval`
    with the count of what was suppressed: a client looping on a bad request cannot flood the log."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger, self.interval = logger, interval
        self._said: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def say(self, key: str, level: int, message: str, *args: object) -> None:
        mono = time.monotonic()
        with self._lock:
            last, suppressed = self._said.get(key, (mono - 2 * self.interval, 0))
            if mono - last < self.interval:
                self._said[key] = (last, suppressed + 1)
                return
            if len(self._said) >= 1000:  # keys can hold client addresses: bound the memory
                self._said.clear()
            self._said[key] = (mono, 0)
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        self.logger.log(level, message + more, *args)


# ------------------------------------------------------------------------------------ the app


def make_push_app(blueprint: Blueprint, *, max_body: int = 1 << 20) -> Flask:
    """A Flask app serving only the push API blueprint (until the admin UI brings its own app
    factory): body size capped at `max_body`, JSON errors, security headers, never debug."""
    app = Flask("userseg.web", static_folder=None)
    app.config.update(MAX_CONTENT_LENGTH=max_body, DEBUG=False, TESTING=False, PROPAGATE_EXCEPTIONS=False)
    app.debug = False
    app.register_blueprint(blueprint)
    install_json_errors(app)
    return app


def tls_context(tls: TlsFiles | tuple[str | os.PathLike[str], str | os.PathLike[str]]) -> ssl.SSLContext:
    """A server context (TLS 1.2+) from PEM files; with a client CA, clients must present a
    certificate it signed.  Errors name the files, never their contents."""
    files = tls if isinstance(tls, TlsFiles) else TlsFiles(Path(tls[0]), Path(tls[1]))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2

    def no_passphrase() -> bytes:  # never prompt on a terminal the daemon does not have
        raise ApiServerError(f"TLS key {files.key} is encrypted")

    try:
        context.load_cert_chain(files.cert, files.key, password=no_passphrase)
        if files.client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=files.client_ca)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        names = f"certificate {files.cert}, key {files.key}" + (
            f", client CA {files.client_ca}" if files.client_ca is not None else ""
        )
        raise ApiServerError(f"unusable TLS files ({names}): {reason}") from None
    return context


# ------------------------------------------------------------------------------------ the server


class ApiServer:
    """Serves a Flask app on (host, port), optionally over TLS, from a background thread.

    `start()` binds (a busy port or bad TLS files fail the caller) and serves;
    `address` is the bound (host, port), with the real port when 0 was asked.
    """

    def __init__(
        self,
        app: Flask,
        host: str,
        port: int,
        *,
        tls: TlsFiles | tuple[str | os.PathLike[str], str | os.PathLike[str]] | ssl.SSLContext | None = None,
        max_connections: int = 256,
        idle_timeout: float = 30.0,
        max_request_bytes: int | None = None,
    ) -> None:
        if app.debug:
            raise ApiServerError("refusing to serve an app in debug mode (the werkzeug debugger runs code)")
        if max_connections < 1 or idle_timeout <= 0:
            raise ApiServerError("max_connections and idle_timeout must be positive")
        self.app, self.host, self.port = app, host, port
        self.context = tls if isinstance(tls, ssl.SSLContext) or tls is None else tls_context(tls)
        self.max_connections, self.idle_timeout = max_connections, idle_timeout
        if max_request_bytes is None:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            # Chunk framing can more than double a body on the wire; headers come on top.
            max_request_bytes = 4 * int(limit) + HEADER_ALLOWANCE if limit else None
        self.max_request_bytes = max_request_bytes
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise ApiServerError("the API server is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.context is not None else 'http'}://{host}:{port}"

    def start(self) -> None:
        if self._server is not None:
            raise ApiServerError("the API server was already started")
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="userseg-api", daemon=True
        )
        self._thread.start()
        log.info("push API listening on %s", self.url)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, end open connections (an answer being written is finished), wait for
        their threads up to `timeout` seconds."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        deadline = time.monotonic() + timeout
        server.shutdown()  # returns once serve_forever has left its loop (within poll_interval)
        thread.join(max(0.0, deadline - time.monotonic()))
        for worker in server.end_connections():
            worker.join(max(0.0, deadline - time.monotonic()))
        server.server_close()
        alive = server.open_connections()
        if alive:
            log.error("push API: %d connection thread(s) did not stop within %.1f s", alive, timeout)
        self._server = self._thread = None


class _CappedReader(io.RawIOBase):
    """Reads a connection's socket, but at most `left` bytes in all: werkzeug's post-answer drain
    and a never-ending chunked body stop there (the kernel then resets the connection)."""

    def __init__(self, sock: socket.socket, left: int) -> None:
        self._sock, self._left = sock, left

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with memoryview(buffer) as view, view.cast("B") as flat:
            count = self._sock.recv_into(flat[: self._left]) if self._left > 0 else 0
        self._left -= count
        return count


class _Handler(WSGIRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.owner.idle_timeout)
        cap = self.server.owner.max_request_bytes
        if cap is not None:
            self.rfile.close()
            self.rfile = io.BufferedReader(_CappedReader(self.connection, cap))

    def handle(self) -> None:
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()  # here, on this connection's thread, under the idle timeout
            except (OSError, ValueError) as exc:
                self.server.limiter.say("tls", logging.INFO, "TLS handshake with %s failed: %s",
                                        self.client_address[0], exc)  # fmt: skip
                return
        super().handle()

    def version_string(self) -> str:
        return "userseg"

    # http.server answers unparsable requests itself, with an HTML page quoting the request line.
    error_content_type = "application/json"
    error_message_format = '{"error": "%(message)s"}\n'

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        log.debug("%s: answered %d: %s", self.client_address[0], code, message)
        super().send_error(code)  # the standard phrase only: valid JSON, no client text echoed

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if log.isEnabledFor(logging.DEBUG):
            line = self.requestline.translate(self._control_char_table)
            log.debug("%s %s %s %s", self.client_address[0], line, code, size)

    def log(self, type: str, message: str, *args: Any) -> None:
        # Timeouts, malformed request lines, TLS errors: the client's problem, said rate-limited.
        peer = self.client_address[0]
        self.server.limiter.say(f"{type}:{message}", logging.INFO, "%s: " + message, peer, *args)


class _Server(ThreadedWSGIServer):
    """werkzeug's threaded server with per-connection TLS, a connection cap and prompt closing."""

    def __init__(self, owner: ApiServer) -> None:
        self.owner = owner
        self.limiter = LogLimiter(log)
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._lock = threading.Lock()
        self._closing = False
        super().__init__(owner.host, owner.port, owner.app, handler=_Handler)
        self.ssl_context = owner.context  # https in the WSGI environ; sockets are wrapped per connection

    def server_bind(self) -> None:
        # werkzeug prints an OSError here and calls sys.exit; TCPServer's bind, not HTTPServer's:
        # that one resolves our own name (a DNS lookup) at start-up.
        try:
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])
            socketserver.TCPServer.server_activate(self)
        except OSError as exc:
            raise ApiServerError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from None

    def server_activate(self) -> None:
        pass  # listen() is part of server_bind, under its error handling

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, peer = self.socket.accept()
        if self.ssl_context is not None:
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, peer

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            refused = self._closing or len(self._conns) >= self.owner.max_connections
            if not refused:
                worker = threading.Thread(
                    target=self.process_request_thread, args=(request, client_address),
                    name="userseg-api-conn", daemon=True,
                )  # fmt: skip
                self._conns[request] = worker
        if refused:
            self.limiter.say("full", logging.WARNING, "push API: refused a connection from %s: %d are open",
                             client_address[0], self.owner.max_connections)  # fmt: skip
            self.shutdown_request(request)
            return
        worker.start()

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._conns.pop(request, None)
        super().shutdown_request(request)

    def end_connections(self) -> list[threading.Thread]:
        """Make every open connection read EOF; returns their threads to wait for."""
        with self._lock:
            self._closing = True
            conns = list(self._conns.items())
        for sock, _ in conns:
            # socket.socket's shutdown, not SSLSocket's: that one would drop the TLS state
            # under a handler that is still writing its answer.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RD)
        return [worker for _, worker in conns]

    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("push API: unexpected error on the connection from %s", client_address)

    def log(self, type: str, message: str, *args: Any) -> None:
        log.error(message, *args)
