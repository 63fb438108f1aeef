"""The running service at 100k users / 250k mappings: restart to READY under traffic, and peak RSS.

Run as root: `.venv/bin/python -m bench.bench_service` (builds and deletes its own lab).

1. A SQLite store is written with the store API in bulk: 100,000 users in 1,000
   groups, 1,000 applications, 1,000 policies, 250,000 mappings (120k IPv4,
   130k IPv6) expiring hours from now, each with the times and provenance a
   Samba logon leaves, as a real store holds them (bench/world.py).  Two of the mapped
   IPs are addresses of the lab's client: 198.18.10.11, whose user's group
   the config grants the lab server's tcp/443, and 198.18.10.12, whose group
   it does not.
2. The service starts once (cold: it populates the empty kernel), then is
   restarted --restarts times: SIGTERM, wait for the exit, start again.  For
   each start: time from exec to READY (the systemd READY=1 datagram on
   $NOTIFY_SOCKET, or for `userseg enforce` its "kernel in step" line), with
   the phases measured inside the real process (bench/service_phases.py).
   During every restart both client IPs open TCP connections to the server
   continuously; the enforcement gap is the number of allowed connections
   refused or timed out plus forbidden ones let through, counted from the
   SIGTERM until traffic has run --settle seconds past READY.  A netlink
   socket in the gateway counts nf_tables change messages in the same window
   (an in-step restart writes nothing).
3. Peak RSS: VmHWM and VmRSS of the service (/proc/PID/status) at steady state
   after start-up, and after a burst of --burst logins for new IPs pushed
   through the HTTP API in batches of 1,000.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.bench_ingest import HTTP_SENDER, nft_events, service_toml
from bench.world import client_index, client_ip, world
from userseg.lab import ClientSpec, ContinuousTraffic, Lab, LabSpec, ServerSpec, TrafficStats
from userseg.store import Store
from userseg.web.tokens import new_token, token_hash

ROOT = Path(__file__).resolve().parents[1]
PY = str(ROOT / ".venv" / "bin" / "python")
# The command under test.  `userseg serve` signals READY=1 over $NOTIFY_SOCKET (the only
# READY it has: its log line about the kernel comes before the login sources start);
# `userseg enforce` has no sd_notify and is timed to READY_LINE.  Switch here.
SERVICE = ["serve"]
READY_LINE = "kernel in step with the desired state" if SERVICE == ["enforce"] else None

ALLOWED_IP, DENIED_IP = "198.18.10.11", "198.18.10.12"
SERVER_IP, PORT = "198.18.20.30", 443
API_PORT = 18443  # HTTP_SENDER's port, inside the gateway namespace


@dataclass
class Start:
    """One start of the service: when it was exec'd and what it reported."""

    proc: subprocess.Popen[str]
    t_exec: float
    ready_at: float | None = None
    ready_via: str = ""
    phases: list[tuple[str, float, float]] = field(default_factory=list)
    output: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    @property
    def seconds(self) -> float:
        assert self.ready_at is not None
        return self.ready_at - self.t_exec


class Service:
    """Starts, restarts and watches the real service process."""

    def __init__(self, tmp: Path, cfg: Path) -> None:
        self.tmp, self.cfg = tmp, cfg
        self.notify_path = str(tmp / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(0.2)
        self.current: Start | None = None
        self._lock = threading.Lock()
        self._closing = False
        threading.Thread(target=self._notifications, daemon=True).start()

    def start(self, timeout: float = 300) -> Start:
        env = {**os.environ, "NOTIFY_SOCKET": self.notify_path, "USERSEG_RUN_DIR": str(self.tmp / "run")}
        argv = [PY, "-m", "bench.service_phases", "--config", str(self.cfg), *SERVICE]
        t_exec = time.monotonic()
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
        )
        start = Start(proc, t_exec)
        with self._lock:
            self.current = start
        threading.Thread(target=self._read, args=(start,), daemon=True).start()
        if not start.ready.wait(timeout) or start.ready_at is None:
            proc.kill()
            proc.wait()
            tail = "".join(start.output[-20:])
            raise RuntimeError(f"service not READY within {timeout:.0f} s (exit {proc.returncode}):\n{tail}")
        return start

    def stop(self, timeout: float = 60) -> tuple[int, float]:
        """SIGTERM; returns the exit code and the seconds until the process was gone."""
        start = self.current
        assert start is not None
        t = time.monotonic()
        start.proc.send_signal(signal.SIGTERM)
        try:
            code = start.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            start.proc.kill()
            code = start.proc.wait()
        return code, time.monotonic() - t

    def close(self) -> None:
        self._closing = True
        if self.current is not None and self.current.proc.poll() is None:
            self.stop()
        self.notify.close()

    def status(self) -> dict[str, int]:
        """VmHWM, VmRSS etc. of the running service in kB."""
        assert self.current is not None
        out: dict[str, int] = {}
        for line in Path(f"/proc/{self.current.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.startswith("Vm") and value.strip().endswith("kB"):
                out[key] = int(value.split()[0])
        return out

    def _mark_ready(self, start: Start, via: str) -> None:
        if start.ready_at is None:
            start.ready_at, start.ready_via = time.monotonic(), via
            start.ready.set()

    def _read(self, start: Start) -> None:
        assert start.proc.stdout is not None
        for line in start.proc.stdout:
            if line.startswith("bench-phase "):
                label, t0, t1 = line[len("bench-phase ") :].rsplit(" ", 2)
                start.phases.append((label, float(t0), float(t1)))
                continue
            start.output.append(line)
            if READY_LINE is not None and READY_LINE in line:
                self._mark_ready(start, "stdout")
            elif "Traceback" in line or "ERROR" in line or "WARNING" in line:
                sys.stderr.write("  [service] " + line)
        start.ready.set()  # exited: wake start() (ready_at stays None if it never got there)

    def _notifications(self) -> None:
        while not self._closing:
            try:
                data = self.notify.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                start = self.current
            if start is not None and b"READY=1" in data.split(b"\n"):
                self._mark_ready(start, "sd_notify")


# ------------------------------------------------------------------ the world


def build(tmp: Path, a: argparse.Namespace, lab: Lab) -> tuple[Path, str]:
    """Write the store with the store API and the config; returns (config path, push API token)."""
    t0 = time.monotonic()
    snap = world(a.users, a.mappings, a.classes, a.apps, ttl=timedelta(hours=a.ttl_hours), logins=True)
    allowed_group = next(iter(snap.users[f"u{client_index(ALLOWED_IP) % a.users}"].groups))
    denied_group = next(iter(snap.users[f"u{client_index(DENIED_IP) % a.users}"].groups))
    assert allowed_group != denied_group
    now = datetime.now(UTC)
    url = f"sqlite:///{tmp}/userseg.db"
    with Store(url) as store:
        store.upgrade()
        store.replace_directory(snap.users.values(), [], now)
        for app in snap.applications.values():
            store.put_application(app, actor="bench", now=now)
        for p in snap.policies:
            store.put_policy(p, actor="bench", now=now)
        store.put_mappings(snap.mappings)
    token = new_token()
    cfg = tmp / "userseg.toml"
    cfg.write_text(
        service_toml(url, lab, API_PORT)
        + f"""
[[ingest.sources]]
name = "http"
type = "http"
token_hash = "{token_hash(token)}"
[[applications]]
name = "lab-web"
destinations = ["{SERVER_IP}"]
services = ["tcp/{PORT}"]
[[policies]]
name = "lab-web"
subjects = ["group:{allowed_group}"]
application = "lab-web"
action = "allow"
"""
    )
    print(
        f"  store written in {time.monotonic() - t0:.1f} s: {len(snap.users):,} users, "
        f"{len(snap.mappings):,} mappings, {len(snap.applications):,} applications, "
        f"{len(snap.policies):,} policies ({ALLOWED_IP}: group {allowed_group} allowed to "
        f"{SERVER_IP}:{PORT}; {DENIED_IP}: group {denied_group}, not allowed)"
    )
    return cfg, token


# ------------------------------------------------------------------ reporting


def breakdown(start: Start) -> str:
    """Phases before READY, as offsets from exec: 'label start+duration', in start order."""
    assert start.ready_at is not None
    parts = []
    for label, t0, t1 in sorted(start.phases, key=lambda p: p[1]):
        if t0 > start.ready_at:
            continue
        if label == "interpreter start":
            parts.append(f"interpreter {t0 - start.t_exec:.2f}")
        else:
            parts.append(f"{label} {t1 - t0:.2f} (at {t0 - start.t_exec:.2f})")
    return "; ".join(parts)


def phase_medians(starts: list[Start]) -> list[tuple[str, float]]:
    per: dict[str, list[float]] = {}
    for s in starts:
        assert s.ready_at is not None
        seen: dict[str, float] = {}
        for label, t0, t1 in s.phases:
            if t0 <= s.ready_at and label != "interpreter start":
                seen[label] = seen.get(label, 0.0) + (t1 - t0)
        first = min((t0 for label, t0, _ in s.phases if label == "interpreter start"), default=s.t_exec)
        seen["interpreter start"] = first - s.t_exec
        for label, v in seen.items():
            per.setdefault(label, []).append(v)
    order = {label: i for i, label in enumerate(["interpreter start", "imports"])}
    return sorted(
        ((label, statistics.median(v)) for label, v in per.items()),
        key=lambda kv: (order.get(kv[0], 9), -kv[1]),
    )


@dataclass
class Gap:
    allowed_attempts: int
    allowed_failed: int
    denied_attempts: int
    denied_open: int


def gap(before: tuple[TrafficStats, TrafficStats], after: tuple[TrafficStats, TrafficStats]) -> Gap:
    (a0, d0), (a1, d1) = before, after
    return Gap(
        a1.total() - a0.total(),
        (a1.total("refused") + a1.total("timeout")) - (a0.total("refused") + a0.total("timeout")),
        d1.total() - d0.total(),
        d1.total("open") - d0.total("open"),
    )


class KernelWrites:
    """Counts nf_tables change messages in the gateway (NEWSETELEM, DELRULE...)."""

    def __init__(self, ns: str) -> None:
        self.sock = nft_events(ns)
        self.count = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                msg = self.sock.recv(1 << 20)
            except OSError:
                return
            offset = 0
            while offset + 16 <= len(msg):  # nlmsghdr: len, type, flags, seq, pid
                length = int.from_bytes(msg[offset : offset + 4], sys.byteorder)
                if length < 16:
                    break
                self.count += 1
                offset += (length + 3) & ~3

    def close(self) -> None:
        self.sock.close()


# ------------------------------------------------------------------ the runs


def restarts(svc: Service, lab: Lab, a: argparse.Namespace, writes: KernelWrites) -> list[Start]:
    targets = [(SERVER_IP, PORT)]
    allowed = ContinuousTraffic(lab, "c1", ALLOWED_IP, targets, rate=a.rate, timeout=1.0).start()
    denied = ContinuousTraffic(lab, "c1", DENIED_IP, targets, rate=a.rate, timeout=1.0).start()
    starts: list[Start] = []
    try:

        def counts() -> tuple[TrafficStats, TrafficStats]:
            return allowed.snapshot(), denied.snapshot()

        # The kernel must already answer both ways before a restart can be judged.
        assert allowed.wait_for(lambda s: s.total("open") >= 50, 30), "allowed traffic does not pass"
        assert denied.wait_for(lambda s: s.total("refused") >= 50, 30), "denied traffic is not refused"
        print(f"restarts under traffic ({a.rate:.0f} connections/s from each of {ALLOWED_IP}, {DENIED_IP}):")
        for i in range(a.restarts):
            before, writes_before = counts(), writes.count
            code, stop_s = svc.stop()
            start = svc.start()
            target = allowed.snapshot().total() + int(a.settle * a.rate)
            allowed.wait_for(lambda s, t=target: s.total() >= t, a.settle + 10)
            g = gap(before, counts())
            starts.append(start)
            print(
                f"  restart {i + 1}: exit {code} in {stop_s:.2f} s; exec -> READY ({start.ready_via}) "
                f"{start.seconds:.2f} s; gap: {g.allowed_failed} of {g.allowed_attempts} allowed refused "
                f"or timed out, {g.denied_open} of {g.denied_attempts} forbidden admitted; "
                f"{writes.count - writes_before} nf_tables change messages"
            )
            print(f"    {breakdown(start)}")
    finally:
        allowed.close()
        denied.close()
    return starts


def memory(svc: Service, tmp: Path, lab: Lab, token: str, a: argparse.Namespace) -> None:
    time.sleep(a.settle)  # steady state: start-up garbage freed, pipeline idle
    idle = svc.status()
    rows = tmp / "burst.rows"
    rows.write_text(
        "".join(f"u{(a.mappings + i) % a.users} {client_ip(a.mappings + i)}\n" for i in range(a.burst))
    )
    t0 = time.monotonic()
    sender = subprocess.run(
        ["ip", "netns", "exec", lab.gateway_ns, PY, "-c", HTTP_SENDER, token, str(rows), "1000"],
        check=False, timeout=600,
    )  # fmt: skip
    if sender.returncode != 0:
        raise RuntimeError(f"HTTP sender exited {sender.returncode}")
    received = 0
    deadline = time.monotonic() + 300
    with Store(f"sqlite:///{tmp}/userseg.db") as store:
        while time.monotonic() < deadline:
            st = store.source_states().get("http")
            received = st.counters.get("received", 0) if st else 0
            mapped = st.counters.get("mapped", 0) if st else 0
            if received >= a.burst:
                break
            time.sleep(0.1)
    took = time.monotonic() - t0
    time.sleep(1.0)  # the last batch's kernel write
    burst = svc.status()
    print(
        f"peak RSS of the service: after start-up VmHWM {idle['VmHWM'] / 1024:.0f} MB "
        f"(steady VmRSS {idle['VmRSS'] / 1024:.0f} MB); after {a.burst:,} HTTP push logins for new IPs "
        f"({received:,} received, {mapped:,} mapped in {took:.1f} s) VmHWM {burst['VmHWM'] / 1024:.0f} MB "
        f"(VmRSS {burst['VmRSS'] / 1024:.0f} MB)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--mappings", type=int, default=250_000)
    ap.add_argument("--classes", type=int, default=1_000)
    ap.add_argument("--apps", type=int, default=1_000)
    ap.add_argument("--ttl-hours", type=float, default=6.0, help="mappings expire this far ahead")
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--rate", type=float, default=100.0, help="connections/s from each client IP")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds of traffic counted after READY")
    ap.add_argument("--burst", type=int, default=20_000)
    a = ap.parse_args()
    spec = LabSpec(
        clients=[ClientSpec("c1", [ALLOWED_IP, DENIED_IP])],
        servers=[ServerSpec("web", SERVER_IP, tcp_ports=[PORT])],
    )
    print(
        f"bench_service: {a.users:,} users, {a.mappings:,} mappings, {a.classes:,} classes, "
        f"{a.apps:,} apps; service = userseg {' '.join(SERVICE)}; {os.cpu_count()} CPUs"
    )
    with Lab(spec) as lab, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cfg, token = build(tmp, a, lab)
        svc = Service(tmp, cfg)
        writes = KernelWrites(lab.gateway_ns)
        try:
            cold = svc.start()
            print(
                f"cold start (empty kernel): exec -> READY {cold.seconds:.2f} s; "
                f"{writes.count:,} nf_tables change messages"
            )
            print(f"    {breakdown(cold)}")
            starts = restarts(svc, lab, a, writes)
            times = sorted(s.seconds for s in starts)
            print(
                f"restart -> READY over {len(times)} restarts: min {times[0]:.2f} s, "
                f"median {statistics.median(times):.2f} s, max {times[-1]:.2f} s"
            )
            print(
                "  median per phase: " + "; ".join(f"{label} {v:.2f}" for label, v in phase_medians(starts))
            )
            memory(svc, tmp, lab, token, a)
        finally:
            writes.close()
            svc.close()
            lab.run("gateway", ["nft", "delete", "table", "inet", "userseg"], check=False)


if __name__ == "__main__":
    main()
