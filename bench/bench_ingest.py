"""Login-event ingestion: sustained rate per source, and Samba log line -> kernel element latency.

Run as root: `.venv/bin/python -m bench.bench_ingest` (builds and deletes its own lab).

Everything runs as separate processes, as on an appliance: `userseg enforce`
(the product, with a samba-log, a syslog UDP, a syslog TCP and an http source),
writer/sender processes producing real Samba `auth_json_audit` lines, and
`nft monitor` in the gateway namespace, which timestamps each map element
the moment the kernel commits it.

1. Rate per source: --events events (Samba 4624 lines; a pool of --pool client
   IPs, each with its own user, so the first pass creates mappings and later
   events refresh them) through each source in turn; events/s from the first
   to the last committed batch, read from the sources' counters in the store.
2. Latency: a background writer appends --background lines/s (refreshes and
   new logons) to the Samba log while a probe writer appends one logon for a
   never-seen IP every 1/--probe-rate s; for each probe, the time from its
   write() returning to `nft monitor` printing its element.  Run with
   --preload mappings already in the store and the kernel.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.world import client_ip
from userseg.lab import ClientSpec, Lab, LabSpec, ServerSpec
from userseg.lab.audit_lines import samba_line
from userseg.model import Mapping
from userseg.netns import NetnsWorker
from userseg.store import Store
from userseg.web.tokens import new_token, token_hash

ROOT = Path(__file__).resolve().parents[1]
PY = str(ROOT / ".venv" / "bin" / "python")
GROUPS = 50


def service_toml(url: str, lab: Lab, api_port: int = 18443) -> str:
    """The config head the service benches share: the lab's gateway, a big ingest queue,
    the push API on loopback inside the gateway namespace (login sources follow)."""
    return f"""
[database]
url = "{url}"
[gateway]
client_interfaces = ["{lab.client_if}"]
netns = "{lab.gateway_ns}"
resync_interval = 3600
[mappings]
default_ttl = 2700
[ingest]
queue_size = 100000
[ingest.api]
listen = "127.0.0.1:{api_port}"
max_body = 4194304
"""


def user_of(i: int, users: int) -> str:
    return f"bu{i % users:06d}"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, lab: Lab) -> None:
        self.args, self.tmp, self.lab = args, tmp, lab
        self.log = tmp / "auth_audit.log"
        self.log.touch()
        self.token = new_token()
        self.cfg = tmp / "userseg.toml"
        self.cfg.write_text(
            service_toml(f"sqlite:///{tmp}/userseg.db", lab)
            + f"""
[[ingest.sources]]
name = "samba"
type = "samba-log"
path = "{self.log}"
start = "beginning"
[[ingest.sources]]
name = "udp"
type = "syslog"
listen = "udp://127.0.0.1:10514"
format = "samba"
[[ingest.sources]]
name = "tcp"
type = "syslog"
listen = "tcp://127.0.0.1:10601"
format = "samba"
[[ingest.sources]]
name = "http"
type = "http"
token_hash = "{token_hash(self.token)}"
[[applications]]
name = "app"
destinations = ["198.18.20.30"]
services = ["tcp/443"]
"""
            + "".join(
                f'[[policies]]\nname = "p{g}"\nsubjects = ["group:bg{g}"]\n'
                'application = "app"\naction = "allow"\n'
                for g in range(0, GROUPS, 2)
            )
        )
        self.userseg("db", "upgrade")
        users = [{"name": user_of(i, args.users), "groups": [f"bg{i % GROUPS}"]} for i in range(args.users)]
        (tmp / "dir.json").write_text(json.dumps({"users": users}))
        self.userseg("directory", "import", str(tmp / "dir.json"))
        self.proc: subprocess.Popen[str] | None = None

    def userseg(self, *argv: str) -> str:
        return subprocess.run(
            [PY, "-m", "userseg.cli", "--config", str(self.cfg), *argv],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip

    def preload(self, count: int) -> None:
        now = datetime.now(UTC)
        until = now + timedelta(hours=2)
        users = self.args.users
        ms = [Mapping(client_ip(100_000 + i), user_of(i, users), "b", now, now, until) for i in range(count)]
        with Store(f"sqlite:///{self.tmp}/userseg.db") as store:
            store.put_mappings(ms)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [PY, "-m", "userseg.cli", "--config", str(self.cfg), "enforce"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 300
        started = enforcing = False
        while time.monotonic() < deadline and not (started and enforcing):
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("userseg enforce exited")
            started |= "login sources started" in line
            enforcing |= "kernel in step" in line
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if "WARNING" in line or "ERROR" in line or "Traceback" in line:
                sys.stderr.write("  [enforce] " + line)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def counters(self, source: str) -> tuple[dict[str, int], datetime | None]:
        with Store(f"sqlite:///{self.tmp}/userseg.db") as store:
            st = store.source_states().get(source)
        return (st.counters, st.updated_at) if st else ({}, None)

    def wait_received(self, source: str, total: int, timeout: float = 600) -> float:
        """Seconds until the source's committed `received` counter reaches total."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            c, _ = self.counters(source)
            if c.get("received", 0) + c.get("dropped", 0) >= total:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise RuntimeError(f"{source}: only {self.counters(source)[0]} of {total} after {timeout} s")

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ rate


def events(n: int, pool: int, users: int, offset: int = 0) -> list[tuple[str, str]]:
    return [(user_of(i % pool, users), str(client_ip(offset + i % pool))) for i in range(n)]


def timed_lines(b: Bench, n: int, offset: int) -> str:
    """Events 1 ms apart ending now: later ones refresh the mappings the first pass made."""
    start = datetime.now(UTC) - timedelta(milliseconds=n)
    return "".join(
        samba_line(u, a, start + timedelta(milliseconds=i), i)
        for i, (u, a) in enumerate(events(n, b.args.pool, b.args.users, offset))
    )


def rate_samba(b: Bench, n: int, offset: int) -> None:
    data = timed_lines(b, n, offset)
    cpu0 = b.cpu_seconds()
    t0 = time.monotonic()
    with b.log.open("a") as f:
        f.write(data)
    took = b.wait_received("samba", n)
    report("samba-log (file)", n, took, b.cpu_seconds() - cpu0, b.counters("samba")[0])
    del t0


SENDER = r"""
import socket, sys, time, json
kind, host, port, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
lines = open(path, 'rb').read().split(b'\n')[:-1]
hdr = b'<38>1 2026-11-22T08:00:00Z dc1 samba - - - '
if kind == 'udp':
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pace = float(sys.argv[5]); t0 = time.monotonic()
    for i, l in enumerate(lines):
        s.sendto(hdr + l, (host, port))
        if pace:
            ahead = i / pace - (time.monotonic() - t0)
            if ahead > 0.001: time.sleep(ahead)
else:
    s = socket.create_connection((host, port))
    buf = []
    for l in lines:
        m = hdr + l
        buf.append(b'%d %s' % (len(m), m))
        if len(buf) == 500:
            s.sendall(b''.join(buf)); buf = []
    s.sendall(b''.join(buf))
    s.shutdown(socket.SHUT_WR); s.recv(1)
"""


def rate_syslog(b: Bench, kind: str, port: int, n: int, offset: int, pace: float = 0) -> None:
    path = b.tmp / f"{kind}.lines"
    path.write_text(timed_lines(b, n, offset))
    cpu0 = b.cpu_seconds()
    t0 = time.monotonic()
    sender = subprocess.Popen(
        ["ip", "netns", "exec", b.lab.gateway_ns, PY, "-c", SENDER, kind, "127.0.0.1", str(port),
         str(path), str(pace)]
    )  # fmt: skip
    try:
        if kind == "udp":
            sender.wait(600)
            time.sleep(1.0)  # let the last datagrams be read; anything not counted by then was lost
            c, _ = b.counters(kind)
            took = time.monotonic() - t0 - 1.0
            got = c.get("received", 0)
            dropped = c.get("dropped", 0)
            print(
                f"  syslog udp, sender paced at {pace or 'max'} msg/s: {got:,} of {n:,} received, "
                f"{dropped:,} dropped by the queue, {n - got - dropped:,} lost in the socket; "
                f"{got / took:,.0f} events/s over {took:.1f} s"
            )
            return
        took = b.wait_received(kind, n)
    finally:
        sender.wait(60)
    report(f"syslog {kind}", n, took, b.cpu_seconds() - cpu0, b.counters(kind)[0])


HTTP_SENDER = r"""
import http.client, json, sys
token, path, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [l.split() for l in open(path)]
conn = http.client.HTTPConnection('127.0.0.1', 18443)
for i in range(0, len(rows), batch):
    body = json.dumps({'events': [{'user': u, 'ip': a} for u, a in rows[i:i + batch]]})
    while True:
        headers = {'Authorization': 'Bearer ' + token, 'Content-Type': 'application/json'}
        conn.request('POST', '/api/v1/events', body, headers)
        r = conn.getresponse(); r.read()
        if r.status == 202: break
        if r.status != 503: raise SystemExit(f'HTTP {r.status}')
"""


def rate_http(b: Bench, n: int, offset: int) -> None:
    path = b.tmp / "http.rows"
    path.write_text("".join(f"{u} {a}\n" for u, a in events(n, b.args.pool, b.args.users, offset)))
    cpu0 = b.cpu_seconds()
    t0 = time.monotonic()
    sender = subprocess.Popen(
        ["ip", "netns", "exec", b.lab.gateway_ns, PY, "-c", HTTP_SENDER, b.token, str(path), "1000"]
    )
    try:
        took = b.wait_received("http", n)
    finally:
        sender.wait(600)
    del t0
    report("http push (batches of 1,000)", n, took, b.cpu_seconds() - cpu0, b.counters("http")[0])


def report(name: str, n: int, took: float, cpu: float, c: dict[str, int]) -> None:
    print(
        f"  {name}: {n:,} events in {took:.2f} s = {n / took:,.0f} events/s "
        f"(userseg CPU {cpu:.1f} s = {cpu / took:.2f} cores; mapped {c.get('mapped', 0):,}, "
        f"refreshed {c.get('refreshed', 0):,}, duplicate {c.get('duplicate', 0):,}, "
        f"ignored {c.get('ignored', 0):,}, dropped {c.get('dropped', 0):,})"
    )


# ------------------------------------------------------------------ latency

WRITER = r"""
import sys, time, json
sys.path.insert(0, sys.argv[1])
from bench.bench_ingest import samba_line, user_of
from bench.world import client_ip
from datetime import datetime, UTC
log, rate, seconds, kind = sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
users, pool, first = int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
out = open(sys.argv[9], 'w') if kind == 'probe' else None
f = open(log, 'a', buffering=1)
t0 = time.monotonic(); i = 0
while time.monotonic() - t0 < seconds:
    if kind == 'probe':
        addr, user = str(client_ip(first + i)), user_of(2 * i, users)   # even users: groups with a policy
    else:  # background: 95% refreshes of the pool, 5% new IPs
        j = first + (i % pool if i % 20 else pool + i)
        addr, user = str(client_ip(j)), user_of(j, users)
    line = samba_line(user, addr, datetime.now(UTC), i)
    f.write(line)
    t = time.monotonic()
    if out: out.write(f'{addr} {t}\n')
    i += 1
    ahead = i / rate - (time.monotonic() - t0)
    if ahead > 0: time.sleep(ahead)
"""


def nft_events(ns: str) -> socket.socket:
    """A netlink socket in `ns` subscribed to nf_tables change events (what `nft monitor` reads).

    `nft monitor` itself refreshes libnftables' cache of the whole table on every change,
    which at 100k elements costs it far more than the change: it would measure itself.
    """

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        sock.bind((0, 0))
        sock.setsockopt(270, 1, 7)  # SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES
        return sock

    worker = NetnsWorker(ns)
    try:
        return worker.call(make)
    finally:
        worker.close()


def latency(b: Bench, seconds: float, preload: int) -> None:
    a = b.args
    seen: dict[bytes, float] = {}
    sock = nft_events(b.lab.gateway_ns)
    wanted = {client_ip(400_000 + i).packed for i in range(int(a.probe_rate * seconds) + 10)}

    def read() -> None:
        while True:
            try:
                msg = sock.recv(1 << 20)
            except OSError:
                return
            t = time.monotonic()
            if len(msg) < 65536:  # element batches; skip big table dumps
                for key in [k for k in wanted if k in msg]:
                    seen.setdefault(key, t)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    probes = b.tmp / "probes.txt"
    bg = subprocess.Popen(
        [PY, "-c", WRITER, str(ROOT), str(b.log), str(a.background), str(seconds + 2), "bg",
         str(a.users), str(a.background_pool), str(300_000), "-"]
    )  # fmt: skip
    time.sleep(1.0)
    cpu0 = b.cpu_seconds()
    probe = subprocess.Popen(
        [PY, "-c", WRITER, str(ROOT), str(b.log), str(a.probe_rate), str(seconds), "probe",
         str(a.users), str(a.pool), str(400_000), str(probes)]
    )  # fmt: skip
    probe.wait()
    cpu = b.cpu_seconds() - cpu0
    bg.wait()
    time.sleep(1.0)  # the last probes' elements
    sock.close()
    written = [line.split() for line in probes.read_text().splitlines()]
    packed = {addr: ipaddress.ip_address(addr).packed for addr, _ in written}
    lat = [(seen[packed[addr]] - float(t)) * 1000 for addr, t in written if packed[addr] in seen]
    missing = len(written) - len(lat)
    c, _ = b.counters("samba")
    print(
        f"  latency Samba line -> kernel element with {preload:,} mappings preloaded, background "
        f"{a.background:,.0f} lines/s: {len(lat):,} probes, p50 {statistics.median(lat):.2f} ms, "
        f"p90 {pct(lat, 0.90):.2f} ms, p99 {pct(lat, 0.99):.2f} ms, max {max(lat):.2f} ms, "
        f"{missing} not seen (userseg CPU {cpu / seconds:.2f} cores; samba source: {c.get('received', 0):,} "
        f"lines, {c.get('mapped', 0):,} mapped)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--pool", type=int, default=20_000, help="distinct client IPs in the rate test")
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--preload", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--background", type=float, default=1000.0)
    ap.add_argument("--background-pool", type=int, default=5_000, help="IPs the background refreshes")
    ap.add_argument("--probe-rate", type=float, default=50.0)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--only", choices=["rate", "latency"])
    args = ap.parse_args()
    spec = LabSpec(clients=[ClientSpec("c1", ["198.18.10.11"])], servers=[ServerSpec("app", "198.18.20.30")])
    print(f"bench_ingest: {args.users:,} users, {os.cpu_count()} CPUs")
    if args.only in (None, "rate"):
        with Lab(spec) as lab, tempfile.TemporaryDirectory() as tmp:
            b = Bench(args, Path(tmp), lab)
            b.start()
            try:
                print(f"rate per source ({args.events:,} events over {args.pool:,} IPs each):")
                rate_samba(b, args.events, 0)
                rate_syslog(b, "tcp", 10601, args.events, 0)
                rate_http(b, args.events, 0)
                rate_syslog(b, "udp", 10514, args.events, 0, pace=25_000)
            finally:
                b.stop()
    if args.only in (None, "latency"):
        for preload in args.preload:
            with Lab(spec) as lab, tempfile.TemporaryDirectory() as tmp:
                b = Bench(args, Path(tmp), lab)
                b.preload(preload)
                b.start()
                try:
                    latency(b, args.seconds, preload)
                finally:
                    b.stop()


if __name__ == "__main__":
    main()
