"""The command line end to end against a lab gateway: store, config, kernel and packets."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scenario.cli_helpers import userseg, write_config
from tests.scenario.world import ALICE, BOB, FIN, HR
from userseg.lab import Lab, probe_tcp

pytestmark = pytest.mark.netns


def _table(lab: Lab) -> str:
    """Our table as text, without the ticking `expires` countdowns."""
    text = lab.run("gateway", ["nft", "list", "table", "inet", "userseg"]).stdout
    return re.sub(r" expires \S+", "", text)


@pytest.fixture
def cfg(lab: Lab, tmp_path: Path) -> Iterator[Path]:
    path = write_config(tmp_path, lab)
    userseg(path, "db", "upgrade")
    userseg(path, "directory", "import", str(tmp_path / "directory.json"))
    yield path
    lab.run("gateway", ["nft", "delete", "table", "inet", "userseg"], check=False)


def test_map_add_simulate_mappings_status_and_del(lab: Lab, cfg: Path) -> None:
    userseg(cfg, "map", "add", "Alice", ALICE, "--ttl", "600")
    assert probe_tcp(lab, "c1", ALICE, FIN, 443) == "open"
    assert probe_tcp(lab, "c1", ALICE, HR, 443) == "refused"

    sim = json.loads(userseg(cfg, "simulate", ALICE, f"{FIN}:443/tcp", "--json").stdout)
    assert sim["verdict"] == "allow" and sim["rule"] == "finance-web" and sim["user"] == "alice"
    sim = json.loads(userseg(cfg, "simulate", "bob", f"{FIN}:443", "--json").stdout)
    assert sim["verdict"] == "deny" and sim["rule"] == "default"

    rows = json.loads(userseg(cfg, "mappings", "--json").stdout)
    assert [(r["ip"], r["user"], r["source"]) for r in rows] == [(ALICE, "alice", "cli")]
    assert "alice" in userseg(cfg, "mappings", "--user", "alice").stdout

    status = json.loads(userseg(cfg, "status", "--json").stdout)
    assert status["in_sync"] is True and status["active_mappings"] == 1
    assert "nothing to do" in userseg(cfg, "reconcile", "--dry-run").stdout

    userseg(cfg, "map", "add", "bob", ALICE)  # the latest mapping of an IP wins
    assert probe_tcp(lab, "c1", ALICE, HR, 443) == "open"
    assert probe_tcp(lab, "c1", ALICE, FIN, 443) == "refused"
    userseg(cfg, "map", "del", ALICE)
    assert probe_tcp(lab, "c1", ALICE, HR, 443) == "refused"


def test_drift_is_reported_by_status_and_repaired_by_reconcile(lab: Lab, cfg: Path) -> None:
    userseg(cfg, "map", "add", "bob", BOB)
    lab.run("gateway", ["nft", "flush", "map", "inet", "userseg", "user4"])
    assert probe_tcp(lab, "c1", BOB, HR, 80) == "refused"
    status = userseg(cfg, "status", "--json", check=False)
    assert status.returncode == 3 and json.loads(status.stdout)["in_sync"] is False
    plan = json.loads(userseg(cfg, "reconcile", "--dry-run", "--json").stdout)
    assert plan["bulk"] == ["add 1 element(s) to user4"]
    userseg(cfg, "reconcile")
    assert probe_tcp(lab, "c1", BOB, HR, 80) == "open"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["map", "add", "alice", "198.18.10.300"], "bad IP address '198.18.10.300'"),
        (["map", "add", "alice", ALICE, "--ttl", "0"], "--ttl must be a positive"),
        (["map", "del", "198.18.10.99"], "no mapping for 198.18.10.99"),
        (["simulate", "alice", "198.18.20.10"], "needs a port for tcp"),
        (["simulate", "alice", "198.18.20.10:99999"], "port must be 0-65535"),
        (["simulate", "alice", "198.18.20.10:80/sctp"], "bad destination"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(cfg: Path, args: list[str], message: str) -> None:
    proc = userseg(cfg, *args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_bad_config_is_rejected_with_every_error_and_nothing_reaches_the_kernel(lab: Lab, cfg: Path) -> None:
    userseg(cfg, "map", "add", "alice", ALICE)
    before = _table(lab)
    broken = cfg.parent / "broken.toml"
    broken.write_text(
        cfg.read_text() + '\n[[policies]]\nname = "oops"\nsubjects = ["group:X"]\n'
        'application = "no-such-app"\naction = "allow"\nmode = "audit"\n'
    )
    proc = userseg(broken, "check-config", check=False)
    assert proc.returncode == 2 and "mode" in proc.stderr
    ghost = cfg.parent / "ghost.toml"
    ghost.write_text(
        cfg.read_text() + '\n[[policies]]\nname = "ghost"\nsubjects = ["group:X"]\n'
        'application = "no-such-app"\naction = "allow"\n'
    )
    proc = userseg(ghost, "reconcile", check=False)
    assert proc.returncode == 2
    assert "policy 'ghost' refers to application 'no-such-app'" in proc.stderr
    assert _table(lab) == before


def test_corrupt_store_row_is_named_and_nothing_reaches_the_kernel(lab: Lab, cfg: Path) -> None:
    import sqlite3
    from datetime import UTC, datetime

    from userseg.model import AddressRange, Application, Service
    from userseg.store import Store

    userseg(cfg, "map", "add", "alice", ALICE)
    store = Store(f"sqlite:///{cfg.parent}/userseg.db")
    app = Application("wiki", (AddressRange.parse("198.18.20.30"),), (Service.parse("tcp/443"),))
    store.put_application(app, actor="test", now=datetime.now(UTC))
    store.close()
    before = _table(lab)
    with sqlite3.connect(cfg.parent / "userseg.db") as db:
        db.execute("UPDATE applications SET destinations = ? WHERE name = 'wiki'", ('["198.18.20.300"]',))
    proc = userseg(cfg, "reconcile", check=False)
    assert proc.returncode == 2
    assert "applications" in proc.stderr and "wiki" in proc.stderr and "198.18.20.300" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert _table(lab) == before


def test_access_expires_in_the_kernel_with_no_daemon_running(lab: Lab, cfg: Path) -> None:
    """The dead-man switch: the map element's own timeout ends access, nothing else runs."""
    import time

    userseg(cfg, "map", "add", "bob", BOB, "--ttl", "2")
    assert probe_tcp(lab, "c1", BOB, HR, 80) == "open"
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline and probe_tcp(lab, "c1", BOB, HR, 80) == "open":
        time.sleep(0.2)  # polling the dataplane with a deadline
    assert probe_tcp(lab, "c1", BOB, HR, 80) == "refused"
