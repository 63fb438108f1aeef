"""The operations endpoint: /metrics, /healthz, /readyz, /status (loopback by default).

Read-only and unauthenticated, like every Prometheus exporter: it names users
only as counts, never who is where, and binds 127.0.0.1 unless configured
otherwise.  Served by the same hardened threaded server as the push API.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, request

from userseg.service.health import Health
from userseg.web.server import ApiServer, install_json_errors, secure_headers

# The text format generate_latest() writes; content_type, not mimetype: Flask would add a second charset.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def ops_app(
    health: Callable[[], Health], status: Callable[[], dict[str, Any]], metrics: Callable[[], bytes]
) -> Flask:
    app = Flask("userseg.ops")
    install_json_errors(app)  # a 404 or a failing status read answers JSON, never an HTML page

    def answer(ok: bool, doc: object) -> Response:
        return secure_headers(
            Response(json.dumps(doc), status=200 if ok else 503, mimetype="application/json")
        )

    @app.get("/healthz")
    def healthz() -> Response:
        h = health()
        return answer(h.live, h.doc())

    @app.get("/readyz")
    def readyz() -> Response:
        h = health()
        strict = request.args.get("strict", "").lower() in ("1", "true", "yes")
        return answer(h.ready and not (strict and h.reasons), h.doc())

    @app.get("/status")
    def status_doc() -> Response:
        return answer(True, status())

    @app.get("/metrics")
    def prometheus() -> Response:
        return secure_headers(Response(metrics(), content_type=METRICS_CONTENT_TYPE))

    return app


def start_ops_server(app: Flask, host: str, port: int) -> ApiServer:
    server = ApiServer(app, host, port, max_connections=16, idle_timeout=10.0, max_request_bytes=8192)
    server.start()
    return server
