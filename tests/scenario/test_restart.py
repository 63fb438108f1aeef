"""Restarting the enforcer under continuous traffic: zero allowed connections refused,
zero forbidden ones let through, and the table is never flushed."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.scenario.cli_helpers import start_enforcer, userseg, write_config
from tests.scenario.world import ALICE, FIN, HR
from userseg.lab import ContinuousTraffic, Lab, probe_tcp

pytestmark = pytest.mark.netns


def test_restart_under_traffic_drops_nothing(lab: Lab, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, lab)
    userseg(cfg, "db", "upgrade")
    userseg(cfg, "directory", "import", str(tmp_path / "directory.json"))
    userseg(cfg, "map", "add", "alice", ALICE, "--no-apply")
    enforcer = start_enforcer(cfg)
    traffic = ContinuousTraffic(lab, "c1", ALICE, [(FIN, 443), (HR, 443)], rate=200).start()
    try:
        for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGKILL):
            assert traffic.wait_for(lambda s: s.total("open") >= 100, 10)
            before = traffic.snapshot().total("open")
            enforcer.send_signal(sig)
            enforcer.wait(10)
            enforcer = start_enforcer(cfg)
            assert traffic.wait_for(lambda s, b=before: s.total("open") >= b + 100, 10)
        stats = traffic.stop()
    finally:
        traffic.close()
        enforcer.kill()
        enforcer.wait(10)
        lab.run("gateway", ["nft", "delete", "table", "inet", "userseg"], check=False)
    allowed = next(s for t, s in stats.per_target.items() if t.dst_ip == FIN)
    forbidden = next(s for t, s in stats.per_target.items() if t.dst_ip == HR)
    assert allowed.attempts > 300
    assert allowed.refused == 0 and allowed.timeout == 0, allowed.failures[:5]
    assert forbidden.open == 0 and forbidden.refused == forbidden.attempts


def test_enforcer_repairs_drift_within_the_resync_interval(lab: Lab, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, lab)  # resync_interval = 2 s
    userseg(cfg, "db", "upgrade")
    userseg(cfg, "directory", "import", str(tmp_path / "directory.json"))
    userseg(cfg, "map", "add", "alice", ALICE, "--no-apply")
    enforcer = start_enforcer(cfg)
    try:
        assert probe_tcp(lab, "c1", ALICE, FIN, 443) == "open"
        lab.run("gateway", ["nft", "delete", "table", "inet", "userseg"])  # e.g. `nft flush ruleset`
        assert probe_tcp(lab, "c1", ALICE, HR, 443) == "open"  # nothing enforced any more
        deadline = time.monotonic() + 2 + 5  # resync interval plus slack
        while time.monotonic() < deadline and probe_tcp(lab, "c1", ALICE, HR, 443) == "open":
            time.sleep(0.1)  # polling the dataplane with a deadline, not synchronising
        assert probe_tcp(lab, "c1", ALICE, HR, 443) == "refused"
        assert probe_tcp(lab, "c1", ALICE, FIN, 443) == "open"
    finally:
        enforcer.kill()
        enforcer.wait(10)
        lab.run("gateway", ["nft", "delete", "table", "inet", "userseg"], check=False)
