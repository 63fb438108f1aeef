"""`userseg serve` as systemd runs it: READY/WATCHDOG/STOPPING, health endpoints, metrics,
status, SIGHUP reloads (a bad config keeps the old one running) and SIGTERM leaving enforcement."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.scenario.cli_helpers import USERSEG, userseg, write_config
from tests.scenario.service_helpers import ServiceProcess, prepare
from tests.scenario.world import ALICE, BOB, FIN, HR
from userseg.lab import Lab, probe_tcp

pytestmark = pytest.mark.netns


def _cleanup(lab: Lab) -> None:
    lab.run("gateway", ["nft", "delete", "table", "inet", "userseg"], check=False)


def test_serve_signals_ready_serves_health_and_metrics_and_stops_leaving_enforcement(
    lab: Lab, tmp_path: Path
) -> None:
    cfg = prepare(lab, tmp_path)
    svc = ServiceProcess(cfg, netns=lab.gateway_ns, watchdog_usec=400_000)
    try:
        ready = svc.wait_ready()
        assert "STATUS=ok" in ready, ready
        # READY means enforced: no poll needed before the first probe.
        assert probe_tcp(lab, "c1", ALICE, FIN, 443) == "open"
        assert probe_tcp(lab, "c1", ALICE, HR, 443) == "refused"
        assert probe_tcp(lab, "c1", BOB, FIN, 443) == "refused"  # bob has no mapping
        # WATCHDOG=1 every WatchdogSec/2 while healthy.
        assert svc.wait_message(lambda d: d == "WATCHDOG=1", 5) is not None

        code, body = svc.get("/healthz")
        assert code == 200 and json.loads(body)["live"] is True
        code, body = svc.get("/readyz")
        assert code == 200 and json.loads(body)["status"] == "ok", body
        code, metrics = svc.get("/metrics")
        assert code == 200
        assert "userseg_ready 1.0" in metrics
        assert "userseg_mappings 1.0" in metrics
        assert "userseg_kernel_in_step 1.0" in metrics
        assert 'userseg_apply_seconds_count{kind="full"}' in metrics
        assert "alice" not in metrics  # counts, never who is where

        status = userseg(cfg, "status")
        assert "service     OK" in status.stdout, status.stdout
        doc = json.loads(userseg(cfg, "status", "--json").stdout)
        assert doc["service"]["kernel"]["in_step"] is True
        assert doc["service"]["health"]["ready"] is True

        assert svc.stop() == 0
        assert svc.count("STOPPING=1") == 1
        # Enforcement stays in the kernel after a clean stop.
        assert probe_tcp(lab, "c1", ALICE, FIN, 443) == "open"
        assert probe_tcp(lab, "c1", ALICE, HR, 443) == "refused"
        assert "not running" in userseg(cfg, "status", check=False).stdout
    finally:
        svc.kill()
        _cleanup(lab)


def test_sighup_applies_a_good_config_and_keeps_the_old_one_on_a_bad_one(lab: Lab, tmp_path: Path) -> None:
    cfg = prepare(lab, tmp_path)
    good = cfg.read_text()
    svc = ServiceProcess(cfg, netns=lab.gateway_ns)
    try:
        svc.wait_ready()
        assert probe_tcp(lab, "c1", ALICE, HR, 443) == "refused"

        # A broken config: rejected with its reasons, the old one keeps enforcing.
        cfg.write_text(
            good + '\n[[policies]]\nname = "broken"\nsubjects = ["group:Finance"]\naction = "maybe"\n'
        )
        before = svc.count("READY=1")
        svc.signal(signal.SIGHUP)
        m = svc.wait_message(lambda d: "reload rejected" in d, 20)
        assert m is not None and "RELOADING=1" in "\n".join(svc.messages), svc.messages
        assert svc.count("READY=1") == before + 1
        doc = svc.wait_status(lambda d: d["last_reload"] is not None)
        assert doc["last_reload"]["ok"] is False
        assert any("action" in e for e in doc["last_reload"]["errors"]), doc["last_reload"]
        assert svc.proc.poll() is None
        assert probe_tcp(lab, "c1", ALICE, FIN, 443) == "open"
        cfg.write_text(good)  # (the CLI itself refuses the broken file)
        assert "last reload REJECTED" in userseg(cfg, "status").stdout

        # A config naming another database needs a restart: rejected too.
        cfg.write_text(good.replace("userseg.db", "other.db"))
        svc.signal(signal.SIGHUP)
        assert svc.wait_message(lambda d: "needs a restart" in d, 20) is not None

        # A good change: Finance may now reach hr-web too.
        cfg.write_text(
            good
            + '\n[[policies]]\nname = "finance-hr"\nsubjects = ["group:Finance"]\n'
            + 'application = "hr-web"\naction = "allow"\n'
        )
        svc.signal(signal.SIGHUP)
        assert svc.wait_message(lambda d: "STATUS=reloaded" in d, 20) is not None
        svc.wait_status(
            lambda d: d["last_reload"]["ok"] and d["kernel"]["in_step"] and d["kernel"]["reconciles"] >= 2
        )
        assert probe_tcp(lab, "c1", ALICE, HR, 443) == "open"
        assert svc.stop() == 0
    finally:
        svc.kill()
        _cleanup(lab)


def test_a_bad_config_at_start_exits_2_with_the_reason(lab: Lab, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, lab, '\n[service]\nlisten = "nowhere"\n')
    proc = subprocess.run(
        [*USERSEG, "--config", str(cfg), "serve"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "service.listen" in proc.stderr and "HOST:PORT" in proc.stderr, proc.stderr


def test_a_stuck_loop_fails_healthz_and_stops_watchdog_pings(lab: Lab, tmp_path: Path) -> None:
    """Another process holds the reconcile lock forever: the enforce loop hangs at its next resync."""
    import fcntl
    import os
    import time

    cfg = prepare(lab, tmp_path)
    svc = ServiceProcess(cfg, netns=lab.gateway_ns, watchdog_usec=1_000_000)
    lock_path = tmp_path / "run" / f"reconcile-{lab.gateway_ns}.lock"
    fd = -1
    try:
        svc.wait_ready()
        assert svc.wait_message(lambda d: d == "WATCHDOG=1", 5) is not None
        fd = os.open(lock_path, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
        deadline = time.monotonic() + 30
        while svc.get("/healthz")[0] == 200 and time.monotonic() < deadline:
            time.sleep(0.2)  # polling the endpoint with a deadline
        code, body = svc.get("/healthz")
        assert code == 503 and "loop not progressing: enforce" in body, body
        assert svc.get("/readyz")[0] == 503
        pings = svc.count("WATCHDOG=1")
        time.sleep(1.5)  # three watchdog half-periods: a live service would have pinged
        assert svc.count("WATCHDOG=1") == pings
        fcntl.flock(fd, fcntl.LOCK_UN)
        assert svc.wait_message(lambda d: d == "WATCHDOG=1" and svc.count("WATCHDOG=1") > pings, 10)
        deadline = time.monotonic() + 10
        while svc.get("/healthz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert svc.get("/healthz")[0] == 200
        assert svc.stop() == 0
    finally:
        if fd >= 0:
            os.close(fd)
        svc.kill()
        _cleanup(lab)
