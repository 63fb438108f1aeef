"""Directory sync against a real Samba AD DC: full-sync time and memory, AD change -> kernel latency.

Run as root: `.venv/bin/python -m bench.bench_directory` (builds and deletes its own lab).
1. Provisions a DC in a namespace and bulk-loads --users users and --groups groups
   over LDAPS (three nesting levels, every user in two leaf groups, one group
   with --big-group members so range retrieval is exercised).
2. Full sync: `userseg sync --full` in a child process into a fresh SQLite
   database, --repeat times; wall time and the child's peak RSS.
3. AD change -> kernel: the enforcer runs in-process with one user mapped to a
   client IP; --changes times that user is added to / removed from the policy
   group over LDAP.  For each change: seconds from the LDAP modify returning to
   the DC's change notification arriving, and from the notification to the
   reconcile that changed the kernel committing (and end to end).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from userseg.config import load_config
from userseg.directory.model import DirectorySource
from userseg.directory.sync import DirectorySync
from userseg.enforcer import Enforcer
from userseg.lab import ClientSpec, Lab, LabSpec, ServerSpec
from userseg.lab.ad_data import bulk_load, group_dn, groups_ldif, ou_ldif, user_dn, users_ldif
from userseg.lab.samba import DomainSpec, SambaDC, provision_dc
from userseg.reconciler import SyncReport
from userseg.runtime import open_runtime

CLIENT = "198.18.10.11"
DC_ADDR = "198.18.20.10"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load_directory(dc: SambaDC, users: int, groups: int, big: int, parallel: int) -> list[str]:
    """Bulk data: returns the user names.  Nesting: top <- mid <- leaf groups (3 levels)."""
    names = [f"bu{i:05d}" for i in range(users)]
    bulk_load(dc, ou_ldif(dc.base_dn, "Bench"))
    t0 = time.perf_counter()
    loaded = bulk_load(
        dc, users_ldif(dc.base_dn, names, ou="Bench"), **({"parallel": parallel} if parallel else {})
    )
    t_users = time.perf_counter() - t0
    dn = {n: user_dn(dc.base_dn, n, "Bench") for n in names}
    top, mid = max(1, groups // 100), max(1, groups // 10)
    leaf = max(1, groups - top - mid - 1)
    members: dict[str, list[str]] = {f"bt{i:04d}": [] for i in range(top)}
    members.update({f"bm{i:04d}": [] for i in range(mid)})
    members.update({f"bl{i:04d}": [] for i in range(leaf)})
    for i in range(mid):
        members[f"bt{i % top:04d}"].append(group_dn(dc.base_dn, f"bm{i:04d}", "Bench"))
    for i in range(leaf):
        members[f"bm{i % mid:04d}"].append(group_dn(dc.base_dn, f"bl{i:04d}", "Bench"))
    for j, n in enumerate(names):
        for k in {j % leaf, (j * 7 + 3) % leaf}:
            members[f"bl{k:04d}"].append(dn[n])
    members["bbig"] = [dn[n] for n in names[:big]]
    t0 = time.perf_counter()
    bulk_load(dc, groups_ldif(dc.base_dn, members, ou="Bench"))
    t_groups = time.perf_counter() - t0
    values = sum(len(v) for v in members.values())
    print(
        f"loaded {users} users in {t_users:.1f} s ({users / t_users:.0f}/s; {loaded}); "
        f"{len(members)} groups with {values} member values in {t_groups:.1f} s",
        flush=True,
    )
    return names


def write_config(tmp: Path, lab: Lab, dc: SambaDC, group: str) -> Path:
    pw = tmp / "bind.pw"
    pw.write_text(dc.admin_password)
    pw.chmod(0o600)
    cfg = tmp / "userseg.toml"
    cfg.write_text(f"""
[database]
url = "sqlite:///{tmp}/userseg.db"
[gateway]
client_interfaces = ["{lab.client_if}"]
netns = "{lab.gateway_ns}"
resync_interval = 3600
[[gateway.infrastructure]]
name = "dc"
destinations = ["{dc.address}"]
services = ["ad-dc"]
[directory]
servers = ["{dc.url}"]
bind_user = "{dc.admin_user}"
password_file = "{pw}"
ca_file = "{dc.ca_file}"
server_names = ["{dc.fqdn}"]
incremental_interval = 3600
full_interval = 86400
[[applications]]
name = "app"
destinations = ["198.18.20.30"]
services = ["tcp/443"]
[[policies]]
name = "app-users"
subjects = ["group:{group}"]
application = "app"
action = "allow"
""")
    return cfg


def full_sync(cfg: Path, repeat: int) -> None:
    walls, rss, reads = [], [], []
    for i in range(repeat):
        db = cfg.parent / "userseg.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        env = {**os.environ, "USERSEG_RUN_DIR": str(cfg.parent / "run")}
        base = [sys.executable, "-m", "userseg.cli", "--config", str(cfg)]
        subprocess.run([*base, "db", "upgrade"], check=True, capture_output=True, env=env)
        # A fresh child per run, so RUSAGE_CHILDREN's maximum is the sync's own peak.
        code = (
            "import resource, subprocess, sys, time, json\n"
            "t = time.perf_counter()\n"
            f"p = subprocess.run({[*base, 'sync', '--full', '--json', '--no-apply']!r}, capture_output=True,"
            " text=True)\n"
            "wall = time.perf_counter() - t\n"
            "print(json.dumps({'wall': wall, 'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
            " 'out': p.stdout, 'err': p.stderr, 'rc': p.returncode}))\n"
        )
        res = json.loads(
            subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env=env).stdout
        )
        if res["rc"] != 0:
            raise SystemExit(f"sync failed: {res['err']}")
        outcome = json.loads(res["out"])
        walls.append(res["wall"])
        rss.append(res["rss"] / 1024)
        reads.append(outcome["seconds"])
        print(
            f"full sync {i + 1}: {outcome['users']} users, {outcome['groups']} groups; "
            f"sync {outcome['seconds']:.2f} s, process wall {res['wall']:.2f} s, peak RSS {rss[-1]:.0f} MB"
        )
    print(
        f"FULL SYNC median: {statistics.median(reads):.2f} s "
        f"(process wall {statistics.median(walls):.2f} s), "
        f"peak RSS {statistics.median(rss):.0f} MB"
    )


class TimedSource:
    """Wraps the LDAP source to timestamp every change notification the DC sends."""

    def __init__(self, inner: DirectorySource) -> None:
        self.inner = inner
        self.notified: list[float] = []
        self.read_changes = inner.read_changes
        self.read_all = inner.read_all
        self.read_notified = inner.read_notified
        self.read_user = inner.read_user
        self.close = inner.close

    def watch(self, on_change: Callable[[str], None], stop: threading.Event) -> None:
        def stamped(dn: str) -> None:
            if dn:
                self.notified.append(time.perf_counter())
            on_change(dn)

        self.inner.watch(stamped, stop)


def latency(cfg: Path, lab: Lab, dc: SambaDC, user: str, group: str, changes: int) -> None:
    rt = open_runtime(load_config(cfg))
    rt.store.upgrade()
    source = TimedSource(rt.directory_source())
    assert rt.config.directory is not None
    rt._directory_sync = DirectorySync(source, rt.store, rt.config.directory, rt.clock)  # type: ignore[arg-type]
    subprocess.run(
        [sys.executable, "-m", "userseg.cli", "--config", str(cfg), "map", "add", user, CLIENT, "--no-apply"],
        check=True,
        capture_output=True,
        env={**os.environ, "USERSEG_RUN_DIR": str(cfg.parent / "run")},
    )
    applied: list[float] = []
    cond = threading.Condition()

    def reconciled(report: SyncReport) -> None:
        if report.applied:
            with cond:
                applied.append(time.perf_counter())
                cond.notify_all()

    enforcer = Enforcer(rt, say=lambda _line: None, on_reconciled=reconciled)
    runner = threading.Thread(target=enforcer.run, daemon=True)
    runner.start()
    conn = dc.ldap_connection()
    udn = user_dn(dc.base_dn, user, "Bench")
    gdn = group_dn(dc.base_dn, group, "Bench")
    deadline = time.monotonic() + 120
    while (enforcer.service is None or enforcer.service.completed < 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # let the start-up reconcile and the first notification settle (not a measurement)
    to_notify, notify_to_kernel, end_to_end = [], [], []
    rng = random.Random(7)
    for i in range(changes):
        # Changes at random phases of Samba's 5 s notification cycle, as admins make them;
        # back to back they would all lock onto the cycle and measure only its period.
        time.sleep(rng.uniform(0.0, 5.0))
        op = "add" if i % 2 == 0 else "delete"
        n_before, a_before = len(source.notified), len(applied)
        conn.modify(gdn, {"member": [("MODIFY_ADD" if op == "add" else "MODIFY_DELETE", [udn])]})
        t0 = time.perf_counter()
        with cond:
            if not cond.wait_for(lambda a=a_before: len(applied) > a, timeout=60):  # type: ignore[misc]
                print(f"change {i}: kernel did not change within 60 s")
                continue
            t_kernel = applied[a_before]
        t_note = next((t for t in source.notified[n_before:] if t >= t0 - 0.001), None)
        end_to_end.append(t_kernel - t0)
        if t_note is not None and t_note <= t_kernel:
            to_notify.append(t_note - t0)
            notify_to_kernel.append(t_kernel - t_note)
    enforcer.stop()
    runner.join(10)
    rt.close()

    def line(name: str, xs: list[float]) -> str:
        if not xs:
            return f"{name}: no samples"
        return f"{name}: p50 {pct(xs, 0.5) * 1000:.0f} ms, p95 {pct(xs, 0.95) * 1000:.0f} ms (n={len(xs)})"

    print(line("AD change -> notification arrives", to_notify))
    print(line("LATENCY notification -> kernel", notify_to_kernel))
    print(line("LATENCY AD change -> kernel (end to end)", end_to_end))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument("--groups", type=int, default=2000)
    ap.add_argument("--big-group", type=int, default=5000)
    ap.add_argument("--parallel", type=int, default=0, help="ldapadd processes (0: the loader's default)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--changes", type=int, default=24)
    ap.add_argument("--prefork-children", type=int, default=None, help="Samba's default when unset")
    args = ap.parse_args()
    spec = LabSpec(
        clients=[ClientSpec("c1", addresses=[CLIENT])],
        servers=[
            ServerSpec("dc1", address=DC_ADDR),
            ServerSpec("app", address="198.18.20.30", tcp_ports=[443]),
        ],
    )
    with tempfile.TemporaryDirectory(prefix="userseg-bench-dir-") as tmp_text, Lab(spec) as lab:
        tmp = Path(tmp_text)
        dc = provision_dc(lab, "dc1", tmp / "dc1", DomainSpec(prefork_children=args.prefork_children))
        names = load_directory(dc, args.users, args.groups, args.big_group, args.parallel or 0)
        cfg = write_config(tmp, lab, dc, "bl0000")
        full_sync(cfg, args.repeat)
        # bl0000 holds names[0] already (j % leaf == 0): use a user outside it for clean add/remove.
        latency(cfg, lab, dc, names[1], "bl0000", args.changes)
    print(f"peak RSS of this driver: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
