"""SIGHUP / `systemctl reload`: re-read the config, or keep the running one and say why.

The new config must parse and validate completely, must not change what
needs a restart (the database, the network namespace), and its services
must start; any failure puts the old config back, with its services, and is
reported in the journal, in systemd's STATUS= and in `userseg status`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from userseg.config import Config, ConfigError, load_config
from userseg.service.logs import setup_logging

if TYPE_CHECKING:
    from userseg.service.serve import Service

log = logging.getLogger("userseg.serve")

RESTART_KEYS = ("database_url", "netns")  # changing these needs a restart, not a reload


def reload_config(svc: Service) -> bool:
    assert svc.rt is not None and svc.enforcer is not None
    svc.notifier.notify(
        "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
    )
    old = svc.rt.config
    try:
        new = load_config(svc.config_path)
        changed = [k for k in RESTART_KEYS if getattr(new, k) != getattr(old, k)]
        if changed:
            raise ConfigError(
                [f"{k} changed: needs a restart (systemctl restart userseg)" for k in changed], new.source
            )
    except ConfigError as exc:
        _done(svc, False, exc.errors)
        return False
    svc.enforcer.stop_services()
    svc.beats.unregister("ingest")
    _swap(svc, new)
    try:
        svc.enforcer.start_directory()
        svc._start_ingest_strict()
    except Exception as exc:
        log.error("new config could not start its services (%s); going back to the old one", exc)
        svc.enforcer.stop_services()
        _swap(svc, old)
        svc.enforcer.start_directory()
        svc._start_ingest()
        _done(svc, False, [f"starting with the new config failed: {exc}"])
        return False
    setup_logging(new.service.log_format)
    svc.enforcer.request_full_sync()
    _done(svc, True, [])
    return True


def _swap(svc: Service, config: Config) -> None:
    assert svc.rt is not None
    svc.rt.reset_directory()
    svc.rt.config = config


def _done(svc: Service, ok: bool, errors: list[str]) -> None:
    svc.metrics.reloads.labels("ok" if ok else "rejected").inc()
    svc.last_reload = {"at": time.time(), "ok": ok, "errors": errors}
    if ok:
        log.info("config reloaded from %s", svc.config_path)
    else:
        for e in errors:
            log.error("config reload rejected, the old config keeps running: %s", e)
    status = "reloaded" if ok else f"reload rejected: {'; '.join(errors)[:200]}"
    svc.notifier.notify("READY=1", f"STATUS={status}")
