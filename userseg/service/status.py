"""The service's status document and its degraded reasons, gathered from the live objects.

One document feeds /status, the status file behind `userseg status`, the
systemd STATUS= line and /metrics, so they always agree.  Reads only: counters
and a few small store queries (per-DC sync rows, per-source positions).
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from userseg import cli_directory, cli_ingest

if TYPE_CHECKING:
    from userseg.service.serve import Service

QUEUE_WARN = 0.9  # a queue this full is reported as degraded (back-pressure is on)
DROP_WINDOW = 60.0  # events dropped within this many seconds make the service degraded


def degraded_reasons(svc: Service, directory: dict[str, Any] | None = None) -> list[str]:
    """`directory`: cli_directory.directory_status(rt) if the caller has it already."""
    reasons: list[str] = []
    e, rt = svc.enforcer, svc.rt
    if rt is None or e is None:
        return reasons
    if svc.rebuilt is not None:
        reasons.append(svc.rebuilt.reason())
    if e.hold_reason is not None:
        reasons.append(e.hold_reason)
    if e.service is not None and e.service.last_outcome is not None and not e.service.last_outcome.ok:
        error = e.service.last_outcome.error
        reasons.append(f"directory: last sync failed, serving from the persisted directory: {error}")
    if rt.config.directory is not None:
        d = directory if directory is not None else cli_directory.directory_status(rt)
        if d is not None and d["stale"]:
            extra = "; FAIL-CLOSED: every client is treated as unknown" if d["fail_closed_active"] else ""
            limit = d["max_staleness_seconds"]
            reasons.append(f"directory stale: last success {d['age_seconds']} s ago (max {limit:g} s){extra}")
    if svc.ingest_error is not None:
        reasons.append(f"login sources not running: {svc.ingest_error}")
    if svc.ops_error is not None:
        reasons.append(svc.ops_error)
    if e.ingest is not None:
        p = e.ingest.pipeline
        capacity = rt.config.ingest.queue_size if rt.config.ingest is not None else 0
        if capacity and p.queue_depth >= QUEUE_WARN * capacity:
            reasons.append(f"ingest queue {p.queue_depth}/{capacity}: back-pressure on the sources")
        dropped = sum(c.get("dropped", 0) for c in p.counters().values())
        last = svc._drops_seen
        now = time.monotonic()
        if dropped > last[0]:
            svc._drops_seen = last = (dropped, now)
        if last[1] and now - last[1] < DROP_WINDOW:
            reasons.append(
                f"login events dropped in the last {DROP_WINDOW:.0f} s (queue full); total {dropped}"
            )
    return reasons


def status_doc(svc: Service) -> dict[str, Any]:
    rt, e = svc.rt, svc.enforcer
    assert rt is not None and e is not None
    mono = time.monotonic()
    report = e.last_report
    ingest = e.ingest
    d = cli_directory.directory_status(rt)  # read once: for the health reasons and the document
    doc: dict[str, Any] = {
        "pid": os.getpid(),
        "config": rt.config.source,
        "started_at": datetime.fromtimestamp(svc.started_at, UTC).isoformat(timespec="seconds"),
        "uptime_seconds": round(time.time() - svc.started_at, 1),
        "health": svc.health(d).doc(),
        "loops": svc.beats.ages(mono),
        "kernel": {
            "in_step": report is not None and e.last_error is None and e.hold_reason is None,
            "held": e.hold_reason,
            "last_error": e.last_error,
            "reconciles": e.reconciled,
            "last_reconcile_age_seconds": round(mono - svc.last_reconcile_mono, 1)
            if svc.last_reconcile_mono
            else None,
            "mappings": len(ingest.pipeline.book.mappings)
            if ingest is not None
            else (report.mappings if report else 0),
            "classes": report.classes if report else 0,
        },
        "ingest": None,
        "directory": None,
        "database_rebuilt": svc.rebuilt.reason() if svc.rebuilt is not None else None,
        "last_reload": svc.last_reload,
        "ops": {"address": list(svc._ops.address) if svc._ops is not None else None, "error": svc.ops_error},
    }
    if rt.config.ingest is not None:
        persisted = cli_ingest.ingest_status(rt)
        live = ingest.pipeline.counters() if ingest is not None else {}
        running = {s.name: s for s in ingest.status()} if ingest is not None else {}
        sources = {}
        for name, s in persisted.items():
            r = running.get(name)
            sources[name] = {
                **s,
                "counters": live.get(name, s["counters"]),
                "where": r.where if r is not None else None,
                "reader": r.stats if r is not None else None,  # the source's own counters
            }
        doc["ingest"] = {
            "running": ingest is not None,
            "error": svc.ingest_error,
            "queue_depth": ingest.pipeline.queue_depth if ingest is not None else 0,
            "queue_capacity": rt.config.ingest.queue_size,
            "commit_retries": ingest.pipeline.commit_retries if ingest is not None else 0,
            "sources": sources,
        }
    if d is not None:
        now = rt.clock.now()
        for s in d["servers"]:
            s["age_seconds"] = round((now - s["last_success"]).total_seconds()) if s["last_success"] else None
        svc_dir = e.service
        d["notifications"] = svc_dir.notifications if svc_dir is not None else 0
        d["sync_pending"] = svc_dir.pending if svc_dir is not None else False
        doc["directory"] = d
    return doc


def status_line(svc: Service) -> str:
    """The one line systemd shows in `systemctl status` (STATUS=)."""
    h = svc.health()
    e = svc.enforcer
    parts = [h.condition.value]
    if e is not None and e.last_report is not None:
        parts.append(f"{e.last_report.mappings} mappings, {e.last_report.classes} classes")
    if h.reasons:
        parts.append(h.reasons[0][:120])
    return "; ".join(parts)
