"""AD changes reach real traffic: a Samba DC, `userseg enforce`, and packets through the gateway.

Each test gets its own database, enforcer and freshly created AD user and
group (unique names), while the DC and the lab are shared by the session.
The scheduled incremental sync is an hour away, so every change seen here was
carried by the AD change notification.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ad_fixtures import unique_name
from tests.scenario.ad_helpers import APP, CLIENT_IP, Enforcer, poll, write_ad_config
from tests.scenario.cli_helpers import userseg
from userseg.lab import Lab, probe_tcp
from userseg.lab.flows import LongConnection
from userseg.lab.samba import SambaDC

pytestmark = pytest.mark.netns

NOTIFY_TIMEOUT = 20.0  # Samba's notification retry cycle is 5 s; leave room for a loaded CI machine


@pytest.fixture
def ad_case(ad_lab: Lab, samba_dc: SambaDC, tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    user, group = unique_name("u"), unique_name("g")
    samba_dc.samba_tool("user", "create", user, "--random-password")
    samba_dc.samba_tool("group", "add", group)
    cfg = write_ad_config(tmp_path, ad_lab, [samba_dc], group)
    userseg(cfg, "db", "upgrade")
    try:
        yield user, group, cfg
    finally:
        ad_lab.run("gateway", ["nft", "delete", "table", "inet", "userseg"], check=False)
        ad_lab.run("gateway", ["conntrack", "-F"], check=False)


def _reach(lab: Lab) -> str:
    return probe_tcp(lab, "c1", CLIENT_IP, APP, 443, timeout=0.5)


def test_membership_changes_reach_traffic_without_a_scheduled_sync(
    ad_lab: Lab, samba_dc: SambaDC, ad_case: tuple[str, str, Path]
) -> None:
    user, group, cfg = ad_case
    sync = json.loads(userseg(cfg, "sync", "--json").stdout)
    assert sync["ok"] and sync["kind"] == "full" and sync["users"] >= 1
    userseg(cfg, "map", "add", user, CLIENT_IP, "--no-apply")
    enforcer = Enforcer(cfg)
    try:
        enforcer.wait_for("kernel in step")
        assert _reach(ad_lab) == "refused"

        samba_dc.samba_tool("group", "addmembers", group, user)
        poll(lambda: _reach(ad_lab) == "open", NOTIFY_TIMEOUT)
        shown = json.loads(userseg(cfg, "users", user, "--json").stdout)
        assert group.casefold() in shown["groups"]
        assert [a["verdict"] for a in shown["access"] if a["application"] == "app"] == ["allow"]

        conn = LongConnection(ad_lab, "c1", CLIENT_IP, APP, 443)
        try:
            samba_dc.samba_tool("group", "removemembers", group, user)
            died = conn.wait_dead(NOTIFY_TIMEOUT)
            assert died is not None, "the open connection survived the group removal"
        finally:
            conn.close()
        assert _reach(ad_lab) == "refused"
    finally:
        enforcer.stop()


def test_nested_group_membership_counts(
    ad_lab: Lab, samba_dc: SambaDC, ad_case: tuple[str, str, Path]
) -> None:
    user, group, cfg = ad_case
    child, grandchild = unique_name("gc"), unique_name("gg")
    samba_dc.samba_tool("group", "add", child)
    samba_dc.samba_tool("group", "add", grandchild)
    samba_dc.samba_tool("group", "addmembers", group, child)
    samba_dc.samba_tool("group", "addmembers", child, grandchild)
    samba_dc.samba_tool("group", "addmembers", grandchild, user)
    userseg(cfg, "sync", "--full")
    userseg(cfg, "map", "add", user, CLIENT_IP)
    assert _reach(ad_lab) == "open"
    shown = json.loads(userseg(cfg, "users", user, "--json").stdout)
    assert {group.casefold(), child.casefold(), grandchild.casefold(), "domain users"} <= set(shown["groups"])


def test_disabling_the_account_removes_its_mappings_and_cuts_traffic(
    ad_lab: Lab, samba_dc: SambaDC, ad_case: tuple[str, str, Path]
) -> None:
    user, group, cfg = ad_case
    samba_dc.samba_tool("group", "addmembers", group, user)
    userseg(cfg, "sync")
    userseg(cfg, "map", "add", user, CLIENT_IP, "--no-apply")
    enforcer = Enforcer(cfg)
    try:
        enforcer.wait_for("kernel in step")
        assert _reach(ad_lab) == "open"
        conn = LongConnection(ad_lab, "c1", CLIENT_IP, APP, 443)
        try:
            samba_dc.samba_tool("user", "disable", user)
            assert conn.wait_dead(NOTIFY_TIMEOUT) is not None, "the disabled user's connection survived"
        finally:
            conn.close()
        assert _reach(ad_lab) == "refused"
        assert json.loads(userseg(cfg, "mappings", "--user", user, "--json").stdout) == []
        audit = userseg(cfg, "users", user, "--json")
        assert json.loads(audit.stdout)["disabled"] is True
    finally:
        enforcer.stop()


def test_dc_down_keeps_the_last_state_and_recovers(
    ad_lab: Lab, samba_dc: SambaDC, ad_case: tuple[str, str, Path]
) -> None:
    """A DC that is unreachable at start and during syncs revokes nobody; its return is noticed."""
    user, group, cfg = ad_case
    samba_dc.samba_tool("group", "addmembers", group, user)
    userseg(cfg, "sync")
    userseg(cfg, "map", "add", user, CLIENT_IP, "--no-apply")
    samba_dc.stop()
    try:
        failed = userseg(cfg, "sync", check=False)
        assert failed.returncode == 4 and "nothing changed" in failed.stderr
        enforcer = Enforcer(cfg)
        try:
            enforcer.wait_for("kernel in step")
            enforcer.wait_for("sync failed; keeping the last good state")
            assert _reach(ad_lab) == "open"
            status = json.loads(userseg(cfg, "status", "--json").stdout)
            directory = status["directory"]
            assert directory["servers"][0]["last_error"], directory
            assert directory["servers"][0]["last_success"] is not None
            # Ready (the kernel holds the last good state) but degraded; /readyz?strict=1 says 503.
            poll(lambda: _service(cfg)["health"]["status"] == "degraded", 10)
            health = _service(cfg)["health"]
            assert health["ready"] is True
            assert any("directory: last sync failed" in r for r in health["reasons"]), health
            assert _get(cfg, "/readyz")[0] == 200
            assert _get(cfg, "/readyz?strict=1")[0] == 503
            samba_dc.start()
            poll(lambda: _service(cfg)["health"]["status"] == "ok", 60)
            assert not _service(cfg)["directory"]["servers"][0]["last_error"]
            assert _get(cfg, "/readyz?strict=1")[0] == 200
            assert _reach(ad_lab) == "open"
        finally:
            enforcer.stop()
    finally:
        if not samba_dc.is_running():
            samba_dc.start()


def test_kill_9_during_a_directory_sync_converges_after_restart(
    ad_lab: Lab, samba_dc: SambaDC, ad_case: tuple[str, str, Path]
) -> None:
    """A sync interrupted by kill -9 leaves nothing half-written; the restarted service converges."""
    user, group, cfg = ad_case
    samba_dc.samba_tool("group", "addmembers", group, user)
    db = cfg.parent / "userseg.db"
    landed = False
    for _attempt in range(5):
        for f in cfg.parent.glob("userseg.db*"):
            f.unlink()
        userseg(cfg, "db", "upgrade")
        userseg(cfg, "map", "add", user, CLIENT_IP, "--no-apply")
        enforcer = Enforcer(cfg)
        try:
            enforcer.wait_for("first directory sync")
            enforcer.proc.kill()  # the sync is running (it takes ~100 ms here)
        finally:
            enforcer.stop()
        directory = json.loads(userseg(cfg, "status", "--json", check=False).stdout)["directory"]
        if not directory["servers"]:  # killed before the sync committed: nothing written
            landed = True
            assert json.loads(userseg(cfg, "users", "--json").stdout) == []
            break
    assert landed, "no kill landed during the sync; the test proves nothing"
    assert db.exists()
    enforcer = Enforcer(cfg)
    try:
        enforcer.wait_for("kernel in step")
        assert _reach(ad_lab) == "open"
        assert _service(cfg)["health"]["status"] == "ok"
    finally:
        enforcer.stop()


def test_a_corrupt_database_is_rebuilt_from_ad_and_the_kernel_without_revoking_anyone(
    ad_lab: Lab, samba_dc: SambaDC, ad_case: tuple[str, str, Path]
) -> None:
    user, group, cfg = ad_case
    samba_dc.samba_tool("group", "addmembers", group, user)
    userseg(cfg, "sync")
    userseg(cfg, "map", "add", user, CLIENT_IP, "--no-apply")
    enforcer = Enforcer(cfg)
    try:
        enforcer.wait_for("kernel in step")
        assert _reach(ad_lab) == "open"
    finally:
        enforcer.stop()
    db = cfg.parent / "userseg.db"
    with db.open("r+b") as f:
        f.truncate(max(4096, db.stat().st_size // 2))
    for side in ("-wal", "-shm"):
        Path(f"{db}{side}").unlink(missing_ok=True)
    enforcer = Enforcer(cfg)
    try:
        enforcer.wait_for("DATABASE CORRUPT")
        enforcer.wait_for("kernel in step")
        assert _reach(ad_lab) == "open"  # users from a full read of AD, the mapping from the kernel
        mapped = json.loads(userseg(cfg, "mappings", "--json").stdout)
        assert [(m["ip"], m["user"], m["source"]) for m in mapped] == [
            (CLIENT_IP, user.casefold(), "kernel-recovery")
        ]
        shown = json.loads(userseg(cfg, "users", user, "--json").stdout)
        assert group.casefold() in shown["groups"]
        doc = _service(cfg)
        assert doc["health"]["status"] == "degraded" and "rebuilt" in doc["database_rebuilt"]
    finally:
        enforcer.stop()


def _service(cfg: Path) -> dict[str, Any]:
    doc = json.loads(userseg(cfg, "status", "--json", check=False).stdout)["service"]
    assert doc is not None, "no running service reported"
    return dict(doc)


def _get(cfg: Path, path: str) -> tuple[int, str]:
    host, port = _service(cfg)["ops"]["address"]
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_failover_to_the_second_dc_when_the_first_is_down(
    ad_lab: Lab, samba_dc: SambaDC, samba_dc2: SambaDC, tmp_path: Path
) -> None:
    """Both DCs configured by address, each with its own certificate name (server_names)."""
    user, group = unique_name("fo"), unique_name("fog")
    samba_dc.samba_tool("user", "create", user, "--random-password")
    samba_dc.samba_tool("group", "add", group)
    samba_dc.samba_tool("group", "addmembers", group, user)
    cfg = write_ad_config(tmp_path, ad_lab, [samba_dc, samba_dc2], group)
    userseg(cfg, "db", "upgrade")
    first = json.loads(userseg(cfg, "sync", "--json").stdout)
    assert first["ok"] and first["server"] == samba_dc.url
    group_dn = f"CN={group},CN=Users,{samba_dc.base_dn}"
    poll(lambda: samba_dc2.exists(group_dn), 30)  # replicated (members come with the same change)
    samba_dc.stop()
    try:
        # dc1 is gone: the cursor belongs to dc1's database, so dc2 is read in full.
        second = json.loads(userseg(cfg, "sync", "--json", "--no-apply").stdout)
        assert second["ok"] and second["server"] == samba_dc2.url and second["kind"] == "full"
        shown = json.loads(userseg(cfg, "users", user, "--json").stdout)
        assert group.casefold() in shown["groups"]
        servers = {
            s["server"]: s
            for s in json.loads(userseg(cfg, "status", "--json").stdout)["directory"]["servers"]
        }
        assert servers[samba_dc2.url]["last_success"] is not None and not servers[samba_dc2.url]["last_error"]
    finally:
        samba_dc.start()
