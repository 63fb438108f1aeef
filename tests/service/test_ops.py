"""The ops endpoint through Flask's test client: status codes, strict readiness, headers."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from userseg.service.health import Health, HealthFacts, assess
from userseg.service.metrics import ServiceMetrics
from userseg.service.ops import ops_app

OK = assess(HealthFacts(started=True))
DEGRADED = assess(HealthFacts(started=True, degraded=("directory stale",)))
FAILING = assess(HealthFacts(started=True, reconcile_error="nft: EPERM"))
STUCK = assess(HealthFacts(started=True, stuck_loops=("enforce",)))
STARTING = assess(HealthFacts(started=False))
STATUS: dict[str, Any] = {
    "pid": 1234,
    "health": OK.doc(),
    "loops": {},
    "kernel": {
        "in_step": True,
        "mappings": 2,
        "classes": 1,
        "reconciles": 1,
        "last_reconcile_age_seconds": 1.0,
    },
}


class Box:
    health = OK


def client(box: Box) -> FlaskClient:
    metrics = ServiceMetrics(lambda: STATUS)
    return ops_app(lambda: box.health, lambda: STATUS, metrics.exposition).test_client()


def _get(health: Health, url: str) -> Any:
    box = Box()
    box.health = health
    return client(box).get(url)


@pytest.mark.parametrize(
    ("health", "live"), [(OK, 200), (DEGRADED, 200), (FAILING, 200), (STARTING, 200), (STUCK, 503)]
)
def test_healthz_answers_liveness(health: Health, live: int) -> None:
    r = _get(health, "/healthz")
    assert r.status_code == live
    assert r.get_json() == health.doc()


@pytest.mark.parametrize(
    ("health", "plain", "strict"),
    [(OK, 200, 200), (DEGRADED, 200, 503), (FAILING, 503, 503), (STARTING, 503, 503), (STUCK, 503, 503)],
)
def test_readyz_is_ready_when_degraded_unless_asked_strictly(health: Health, plain: int, strict: int) -> None:
    assert _get(health, "/readyz").status_code == plain
    for flag in ("1", "true", "yes", "TRUE"):
        r = _get(health, f"/readyz?strict={flag}")
        assert r.status_code == strict, flag
    assert _get(health, "/readyz?strict=0").status_code == plain
    assert _get(health, "/readyz?strict=1").get_json()["reasons"] == list(health.reasons)


def test_the_answer_follows_the_health_of_the_moment() -> None:
    box = Box()
    c = client(box)
    assert c.get("/readyz").status_code == 200
    box.health = FAILING
    assert c.get("/readyz").status_code == 503
    box.health = OK
    assert c.get("/readyz").status_code == 200


def test_status_is_the_json_document() -> None:
    r = client(Box()).get("/status")
    assert r.status_code == 200 and r.mimetype == "application/json"
    assert r.get_json() == STATUS


def test_metrics_is_the_prometheus_text_format() -> None:
    r = client(Box()).get("/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    body = r.get_data(as_text=True)
    assert "# TYPE userseg_mappings gauge" in body and "userseg_mappings 2.0" in body


@pytest.mark.parametrize("url", ["/healthz", "/readyz", "/status", "/metrics"])
def test_every_answer_carries_the_security_headers(url: str) -> None:
    r = client(Box()).get(url)
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]


def test_unknown_paths_and_methods_answer_json() -> None:
    c = client(Box())
    r = c.get("/nope")
    assert r.status_code == 404 and r.get_json()["error"]
    r = c.post("/healthz")
    assert r.status_code == 405 and r.get_json()["error"] and "GET" in r.headers["Allow"]
    assert r.headers["Cache-Control"] == "no-store"


def test_a_failing_status_read_is_a_json_500_without_a_traceback() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("secret internals at /var/lib/userseg")

    app = ops_app(lambda: OK, broken, lambda: b"")
    r = app.test_client().get("/status")
    assert r.status_code == 500
    assert r.get_json() == {"error": "internal server error"}
    assert b"secret internals" not in r.get_data() and b"Traceback" not in r.get_data()
