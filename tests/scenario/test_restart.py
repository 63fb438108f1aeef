"""Restarting the service under continuous traffic: zero allowed connections refused,
zero forbidden ones let through, and the table is never flushed."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.scenario.cli_helpers import userseg, write_config
from tests.scenario.service_helpers import SERVICE_SECTION, ServiceProcess
from tests.scenario.world import ALICE, FIN, HR
from userseg.lab import ContinuousTraffic, Lab

pytestmark = pytest.mark.netns


def test_restart_under_traffic_drops_nothing(lab: Lab, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, lab, SERVICE_SECTION)
    userseg(cfg, "db", "upgrade")
    userseg(cfg, "directory", "import", str(tmp_path / "directory.json"))
    userseg(cfg, "map", "add", "alice", ALICE, "--no-apply")
    svc = ServiceProcess(cfg, netns=lab.gateway_ns)
    svc.wait_ready()
    traffic = ContinuousTraffic(lab, "c1", ALICE, [(FIN, 443), (HR, 443)], rate=200).start()
    try:
        # kill -9 (a crash), SIGTERM (`systemctl restart`), kill -9 again right after READY.
        for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGKILL):
            assert traffic.wait_for(lambda s: s.total("open") >= 100, 10)
            before = traffic.snapshot().total("open")
            svc.signal(sig)
            assert svc.proc.wait(20) == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
            svc.close()
            svc = ServiceProcess(cfg, netns=lab.gateway_ns)
            svc.wait_ready()
            assert traffic.wait_for(lambda s, b=before: s.total("open") >= b + 100, 10)
        stats = traffic.stop()
        assert svc.stop() == 0
    finally:
        traffic.close()
        svc.kill()
        lab.run("gateway", ["nft", "delete", "table", "inet", "userseg"], check=False)
    allowed = next(s for t, s in stats.per_target.items() if t.dst_ip == FIN)
    forbidden = next(s for t, s in stats.per_target.items() if t.dst_ip == HR)
    assert allowed.attempts > 300
    assert allowed.refused == 0 and allowed.timeout == 0, allowed.failures[:5]
    assert forbidden.open == 0 and forbidden.refused == forbidden.attempts
