"""Prometheus metrics of `userseg serve`, computed at scrape time from the status document.

Why from the status document: /status, `userseg status` and /metrics then
cannot disagree, and nothing in the hot paths increments a metric object -
the pipeline's own counters are read when Prometheus asks.  Only what has no
counter elsewhere (apply latency, errors by kind, reloads) is recorded here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from time import perf_counter
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from userseg.events.pipeline import KernelMappings
from userseg.model import IPAddress

log = logging.getLogger("userseg.metrics")

APPLY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)


class ServiceMetrics:
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        # First, so that a failed status read counted during a scrape shows in that scrape.
        self.registry.register(_StatusCollector(status, lambda: self.errors.labels("status").inc()))
        self.apply_seconds = Histogram(
            "userseg_apply_seconds",
            "Time to bring the kernel in step: full reconcile, or one batch of login changes",
            ["kind"],
            buckets=APPLY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "userseg_errors", "Errors by where they happened", ["kind"], registry=self.registry
        )
        self.reloads = Counter(
            "userseg_config_reloads", "Config reloads by result", ["result"], registry=self.registry
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class TimedKernel:
    """The reconciler's fast path as the ingest pipeline sees it, timed into apply_seconds{kind=login}."""

    def __init__(self, inner: KernelMappings, metrics: ServiceMetrics) -> None:
        self._inner = inner
        self._observe = metrics.apply_seconds.labels("login").observe
        self._errors = metrics.errors.labels("kernel_login")

    def set_mappings(self, changes: Iterable[tuple[IPAddress, tuple[str, datetime] | None]]) -> bool:
        start = perf_counter()
        try:
            return self._inner.set_mappings(changes)
        except Exception:
            self._errors.inc()
            raise
        finally:
            self._observe(perf_counter() - start)


class _StatusCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, Any]], failed: Callable[[], None]) -> None:
        self._status = status
        self._failed = failed

    def collect(self) -> Iterator[Metric]:
        try:
            doc = self._status()
        except Exception as exc:
            # The status document reads the store, which can be locked or broken: the
            # scrape must still answer (up, errors, apply latency), not fail whole.
            log.warning("metrics: cannot read the service status: %s", exc)
            self._failed()
            yield GaugeMetricFamily("userseg_up", "The service is running", value=1)
            return
        health = doc["health"]
        for name, value, text in (
            ("userseg_up", 1, "The service is running"),
            (
                "userseg_ready",
                int(health["ready"]),
                "Ready: start-up done and the kernel holds the desired state",
            ),
            (
                "userseg_degraded",
                int(health["status"] == "degraded"),
                "Serving from older data (see /status)",
            ),
        ):
            yield GaugeMetricFamily(name, text, value=value)
        kernel = doc["kernel"]
        yield GaugeMetricFamily(
            "userseg_kernel_in_step", "The last reconcile succeeded", value=int(kernel["in_step"])
        )
        yield GaugeMetricFamily("userseg_mappings", "Active user -> IP mappings", value=kernel["mappings"])
        yield GaugeMetricFamily(
            "userseg_classes", "Entitlement classes in the kernel", value=kernel["classes"]
        )
        yield CounterMetricFamily(
            "userseg_reconciles", "Successful full reconciles", value=kernel["reconciles"]
        )
        if kernel["last_reconcile_age_seconds"] is not None:
            yield GaugeMetricFamily(
                "userseg_last_reconcile_age_seconds",
                "Seconds since the last successful full reconcile",
                value=kernel["last_reconcile_age_seconds"],
            )
        loops = GaugeMetricFamily(
            "userseg_loop_heartbeat_age_seconds", "Seconds since each loop last ran", labels=["loop"]
        )
        for name, age in doc["loops"].items():
            loops.add_metric([name], age)
        yield loops
        ingest = doc.get("ingest")
        if ingest is not None:
            yield GaugeMetricFamily(
                "userseg_ingest_queue_depth", "Events waiting", value=ingest["queue_depth"]
            )
            yield GaugeMetricFamily(
                "userseg_ingest_queue_capacity", "Queue bound", value=ingest["queue_capacity"]
            )
            events = CounterMetricFamily(
                "userseg_events",
                "Login events per source and outcome (received, mapped, ignored, dropped...)",
                labels=["source", "outcome"],
            )
            last = GaugeMetricFamily(
                "userseg_source_last_event_age_seconds",
                "Seconds since the source's last event",
                labels=["source"],
            )
            for source, s in ingest["sources"].items():
                for outcome, n in s["counters"].items():
                    events.add_metric([source, outcome], n)
                if s.get("last_event_age_seconds") is not None:
                    last.add_metric([source], s["last_event_age_seconds"])
            yield events
            yield last
        directory = doc.get("directory")
        if directory is not None:
            age = GaugeMetricFamily(
                "userseg_directory_sync_age_seconds",
                "Seconds since the last successful sync, per DC",
                labels=["server"],
            )
            ok = GaugeMetricFamily(
                "userseg_directory_last_attempt_ok",
                "Whether the last sync attempt against the DC worked",
                labels=["server"],
            )
            for s in directory["servers"]:
                if s["age_seconds"] is not None:
                    age.add_metric([s["server"]], s["age_seconds"])
                ok.add_metric([s["server"]], int(not s["last_error"]))
            yield age
            yield ok
            yield CounterMetricFamily(
                "userseg_directory_notifications",
                "AD change notifications received",
                value=directory["notifications"],
            )
