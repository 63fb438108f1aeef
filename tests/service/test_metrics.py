"""/metrics exposition from a hand-made status document, and the login apply timing."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from userseg.model import IPAddress, ip
from userseg.service.metrics import ServiceMetrics, TimedKernel

DOC: dict[str, Any] = {
    "health": {"status": "degraded", "live": True, "ready": True, "reasons": ["directory stale"]},
    "loops": {"enforce": 0.4, "ingest": 1.5},
    "kernel": {
        "in_step": True,
        "mappings": 7,
        "classes": 3,
        "reconciles": 12,
        "last_reconcile_age_seconds": 4.2,
    },
    "ingest": {
        "queue_depth": 5,
        "queue_capacity": 1000,
        "sources": {
            "dc1": {"counters": {"received": 10, "mapped": 8, "dropped": 2}, "last_event_age_seconds": 3.0},
            "vpn": {"counters": {"received": 0}, "last_event_age_seconds": None},
        },
    },
    "directory": {
        "servers": [
            {"server": "dc1.corp.example", "age_seconds": 30, "last_error": None},
            {"server": "dc2.corp.example", "age_seconds": None, "last_error": "timed out"},
        ],
        "notifications": 4,
    },
}


def samples(metrics: ServiceMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_status_document_becomes_metrics() -> None:
    got = samples(ServiceMetrics(lambda: DOC))
    expected = {
        ("userseg_up", ()): 1,
        ("userseg_ready", ()): 1,
        ("userseg_degraded", ()): 1,
        ("userseg_kernel_in_step", ()): 1,
        ("userseg_mappings", ()): 7,
        ("userseg_classes", ()): 3,
        ("userseg_reconciles_total", ()): 12,
        ("userseg_last_reconcile_age_seconds", ()): 4.2,
        ("userseg_loop_heartbeat_age_seconds", (("loop", "enforce"),)): 0.4,
        ("userseg_loop_heartbeat_age_seconds", (("loop", "ingest"),)): 1.5,
        ("userseg_ingest_queue_depth", ()): 5,
        ("userseg_ingest_queue_capacity", ()): 1000,
        ("userseg_events_total", (("outcome", "mapped"), ("source", "dc1"))): 8,
        ("userseg_events_total", (("outcome", "dropped"), ("source", "dc1"))): 2,
        ("userseg_events_total", (("outcome", "received"), ("source", "vpn"))): 0,
        ("userseg_source_last_event_age_seconds", (("source", "dc1"),)): 3.0,
        ("userseg_directory_sync_age_seconds", (("server", "dc1.corp.example"),)): 30,
        ("userseg_directory_last_attempt_ok", (("server", "dc1.corp.example"),)): 1,
        ("userseg_directory_last_attempt_ok", (("server", "dc2.corp.example"),)): 0,
        ("userseg_directory_notifications_total", ()): 4,
    }
    for key, value in expected.items():
        assert got.get(key) == pytest.approx(value), key
    # Unknown values are absent, not zero: an age of 0 would claim "just now".
    assert ("userseg_source_last_event_age_seconds", (("source", "vpn"),)) not in got
    assert ("userseg_directory_sync_age_seconds", (("server", "dc2.corp.example"),)) not in got


def test_optional_parts_are_left_out_when_the_service_has_none() -> None:
    doc = copy.deepcopy(DOC)
    doc.update(ingest=None, directory=None)
    doc["kernel"]["last_reconcile_age_seconds"] = None
    doc["health"] = {"status": "starting", "live": True, "ready": False, "reasons": []}
    got = samples(ServiceMetrics(lambda: doc))
    names = {name for name, _ in got}
    assert not any(n.startswith(("userseg_ingest", "userseg_events", "userseg_directory")) for n in names)
    assert "userseg_last_reconcile_age_seconds" not in names
    assert got[("userseg_ready", ())] == 0 and got[("userseg_degraded", ())] == 0


def test_each_scrape_reads_the_document_again() -> None:
    doc = copy.deepcopy(DOC)
    metrics = ServiceMetrics(lambda: doc)
    assert samples(metrics)[("userseg_mappings", ())] == 7
    doc["kernel"]["mappings"] = 9
    assert samples(metrics)[("userseg_mappings", ())] == 9


class Inner:
    def __init__(self, result: bool | Exception) -> None:
        self.result = result
        self.seen: list[list[tuple[IPAddress, tuple[str, datetime] | None]]] = []

    def set_mappings(self, changes: Iterable[tuple[IPAddress, tuple[str, datetime] | None]]) -> bool:
        self.seen.append(list(changes))
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def test_timed_kernel_passes_through_and_observes_login_applies() -> None:
    metrics = ServiceMetrics(lambda: DOC)
    inner = Inner(True)
    kernel = TimedKernel(inner, metrics)
    change = [(ip("198.18.0.10"), None)]
    assert kernel.set_mappings(iter(change)) is True
    inner.result = False
    assert kernel.set_mappings(change) is False
    assert inner.seen == [change, change]
    got = samples(metrics)
    assert got[("userseg_apply_seconds_count", (("kind", "login"),))] == 2
    assert got[("userseg_apply_seconds_bucket", (("kind", "login"), ("le", "+Inf")))] == 2
    assert 0 <= got[("userseg_apply_seconds_sum", (("kind", "login"),))] < 5
    assert got.get(("userseg_errors_total", (("kind", "kernel_login"),)), 0) == 0


def test_timed_kernel_counts_an_error_and_re_raises_it() -> None:
    metrics = ServiceMetrics(lambda: DOC)
    kernel = TimedKernel(Inner(OSError("netlink: EPERM")), metrics)
    with pytest.raises(OSError, match="EPERM"):
        kernel.set_mappings([(ip("198.18.0.10"), None)])
    got = samples(metrics)
    assert got[("userseg_errors_total", (("kind", "kernel_login"),))] == 1
    assert got[("userseg_apply_seconds_count", (("kind", "login"),))] == 1  # a failure took time too


def test_errors_and_reloads_are_counted_by_label() -> None:
    metrics = ServiceMetrics(lambda: DOC)
    metrics.errors.labels("reconcile").inc()
    metrics.reloads.labels("ok").inc()
    metrics.reloads.labels("rejected").inc(2)
    metrics.apply_seconds.labels("full").observe(0.003)
    got = samples(metrics)
    assert got[("userseg_errors_total", (("kind", "reconcile"),))] == 1
    assert got[("userseg_config_reloads_total", (("result", "rejected"),))] == 2
    assert got[("userseg_apply_seconds_bucket", (("kind", "full"), ("le", "0.005")))] == 1
    assert got[("userseg_apply_seconds_bucket", (("kind", "full"), ("le", "0.002")))] == 0


def test_a_status_that_cannot_be_read_still_answers_the_scrape() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("database is locked")

    metrics = ServiceMetrics(broken)
    metrics.apply_seconds.labels("full").observe(0.1)
    got = samples(metrics)
    assert got[("userseg_up", ())] == 1
    assert got[("userseg_errors_total", (("kind", "status"),))] == 1  # counted in the same scrape
    assert got[("userseg_apply_seconds_count", (("kind", "full"),))] == 1
    assert ("userseg_ready", ()) not in got  # unknown, so absent rather than guessed
    assert samples(metrics)[("userseg_errors_total", (("kind", "status"),))] == 2
