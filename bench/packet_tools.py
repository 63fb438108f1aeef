"""Building blocks for `bench.bench_packet_path`: load generator, counters, rulesets, latency.

Everything here acts only inside the namespaces of a `userseg.lab.Lab` (addresses in
198.18.0.0/15), and every load run is bounded by a duration or a packet count.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from userseg.lab import Lab
from userseg.netns import NetnsWorker

#: tool -> Debian package that provides it (the bench checks for these up front)
REQUIRED_TOOLS = {
    "hping3": "hping3",
    "nft": "nftables",
    "conntrack": "conntrack",
    "taskset": "util-linux",
    "timeout": "coreutils",
    "ip": "iproute2",
}

Dest = tuple[str, str, int]  # (IPv4 address, "tcp"/"udp", port)


def missing_tools() -> list[str]:
    """Human-readable list of required tools that are not installed ("hping3 (apt: hping3)")."""
    return [f"{tool} (apt: {pkg})" for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None]


# ------------------------------------------------------------------------------------------ counting


class ServerCounter:
    """Counts (and drops) benchmark datagrams where they arrive: at the server's NIC ingress.

    A netdev ingress hook sees the packet before the IP stack, so the server namespace
    spends almost nothing per packet and never answers: every flood datagram stays an
    unreplied flow, i.e. in conntrack state NEW at the gateway, and is policed in full.
    Counters are read through libnftables (no process spawn), from a thread in the
    server's namespace, so reading is cheap enough to bracket a measurement window.
    """

    TABLE = "bench"

    def __init__(self, lab: Lab, server: str, ports: dict[str, int]) -> None:
        import nftables  # the system libnftables binding the product uses as well

        host = lab.servers[server]
        self._worker = NetnsWorker(host.ns, thread_name=f"bench-count-{host.ns}")
        self._ports = dict(ports)

        def make() -> Any:
            ctx = nftables.Nftables()
            ctx.set_json_output(True)
            return ctx

        self._ctx: Any = self._worker.call(make)
        counters = "".join(f"  counter {name} {{ }}\n" for name in ports)
        rules = "".join(f"    udp dport {port} counter name {name} drop\n" for name, port in ports.items())
        self._cmd(
            f"table netdev {self.TABLE} {{\n{counters}  chain ingress {{\n"
            f"    type filter hook ingress device {host.ifname} priority 0; policy accept;\n"
            f"{rules}  }}\n}}\n"
        )

    def _cmd(self, text: str) -> str:
        rc, out, err = self._worker.call(lambda: self._ctx.cmd(text))
        if rc != 0:
            raise RuntimeError(f"nft in the server namespace failed: {err.strip()}")
        return str(out)

    def read(self, name: str) -> int:
        """Packets counted so far by the named counter."""
        doc = json.loads(self._cmd(f"list counter netdev {self.TABLE} {name}"))
        for item in doc["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise RuntimeError(f"counter {name} not found")

    def close(self) -> None:
        self._ctx = None
        self._worker.close()


# ------------------------------------------------------------------------------------------ generating


@dataclass(frozen=True)
class FloodResult:
    received: int  # datagrams counted at the server inside the window
    seconds: float  # length of the window
    sent: int  # datagrams hping3 reported for its whole run (window plus ramp-up/down)
    sent_seconds: float  # hping3's whole run

    @property
    def rate(self) -> float:
        return self.received / self.seconds

    @property
    def loss(self) -> float:
        """Fraction of what was sent that never arrived (veth backlog drops, refusals)."""
        offered = self.sent / self.sent_seconds if self.sent_seconds else 0.0
        return max(0.0, 1.0 - self.rate / offered) if offered else 0.0


_SENT_RE = re.compile(r"(\d+) packets transmitted")


def _hping(
    lab: Lab, client: str, dst: str, port: int, extra: Sequence[str], cpu: int | None, limit: float
) -> subprocess.Popen[str]:
    """Start hping3 in the client's namespace; `timeout` bounds it even if we die."""
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    argv = ["ip", "netns", "exec", lab.ns_of(client), *pin, "timeout", "-s", "INT", "-k", "2"]
    argv += [f"{limit:.3f}", "hping3", "--udp", "-q", "-p", str(port), "-d", "18", *extra, dst]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _reap(procs: Iterable[subprocess.Popen[str]], grace: float) -> int:
    """Wait for the hping3 processes (killing stragglers) and add up what they sent."""
    sent = 0
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        m = _SENT_RE.search(out or "")
        if m is None:
            raise RuntimeError(f"hping3 printed no statistics (exit {proc.returncode}): {out.strip()!r}")
        sent += int(m.group(1))
    return sent


def flood(
    lab: Lab,
    client: str,
    dst: str,
    port: int,
    counter: ServerCounter,
    name: str,
    seconds: float,
    generators: int,
    warmup: float = 0.5,
) -> FloodResult:
    """UDP flood of 46-byte IP packets (64-byte frames), a new source port per datagram.

    `generators` hping3 processes, each pinned to its own CPU (0, 1, ...) and starting at
    its own source-port base, so their flows never collide. The rate is counted at the
    server inside a window that starts after `warmup` (process start-up is excluded) and
    lasts `seconds`.
    """
    cpus = os.cpu_count() or 1
    total = warmup + seconds + 0.5
    procs = []
    started = time.monotonic()
    try:
        for k in range(generators):
            base = 10000 + k * (50000 // max(1, generators))
            procs.append(_hping(lab, client, dst, port, ["--flood", "-s", str(base)], k % cpus, total))
        time.sleep(warmup)
        c0, t0 = counter.read(name), time.monotonic()
        time.sleep(seconds)
        c1, t1 = counter.read(name), time.monotonic()
    except BaseException:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
        _reap(procs, 5)
        raise
    sent = _reap(procs, total + 5)
    return FloodResult(c1 - c0, t1 - t0, sent, time.monotonic() - started)


def burst(lab: Lab, client: str, dst: str, port: int, counter: ServerCounter, name: str, count: int) -> int:
    """Send `count` datagrams at ~10k/s (new source port each); returns how many the server saw."""
    before = counter.read(name)
    proc = _hping(lab, client, dst, port, ["-c", str(count), "-i", "u100"], None, 5 + count / 5000)
    _reap([proc], 10 + count / 5000)
    time.sleep(0.05)  # the last datagrams are still on their way through softirq
    return counter.read(name) - before


# ------------------------------------------------------------------------------------------ latency


def connect_latencies(lab: Lab, client: str, src: str, dst: str, port: int, samples: int) -> list[float]:
    """Milliseconds per TCP handshake from a fresh socket (new source port = a new flow each time).

    Only the SYN of each connection is policed (the rest is `ct established`), so this is
    the delay a new flow sees, SYN -> SYN/ACK, answered by the server's kernel (no user-space
    server on the timed path). Sockets close with RST (SO_LINGER 0): no TIME_WAIT build-up.
    """

    def run() -> list[float]:
        out: list[float] = []
        linger = (1).to_bytes(4, sys.byteorder) + (0).to_bytes(4, sys.byteorder)
        for _ in range(samples):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.settimeout(2.0)
                sock.bind((src, 0))
                t0 = time.perf_counter()
                sock.connect((dst, port))
                out.append((time.perf_counter() - t0) * 1000)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            finally:
                sock.close()
        return out

    return lab.worker(client).call(run)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# ------------------------------------------------------------------------------------------ rulesets


def nft_file(lab: Lab, text: str) -> float:
    """Load an nft script into the gateway namespace with `nft -f`; returns seconds taken."""
    with tempfile.NamedTemporaryFile("w", suffix=".nft", prefix="userseg-bench-") as fh:
        fh.write(text)
        fh.flush()
        t0 = time.perf_counter()
        lab.run(lab.gateway_ns, ["nft", "-f", fh.name])
        return time.perf_counter() - t0


def delete_table(lab: Lab, family: str, name: str) -> None:
    """Delete one table from the gateway namespace if it is there (the lab's own namespace)."""
    listing = lab.run(lab.gateway_ns, ["nft", "list", "tables"]).stdout.split()
    pairs = set(zip(listing[1::3], listing[2::3], strict=False))
    if (family, name) in pairs:
        lab.run(lab.gateway_ns, ["nft", "delete", "table", family, name])


def flush_conntrack(lab: Lab) -> None:
    """Forget the gateway's tracked flows so every run starts from the same state."""
    lab.run(lab.gateway_ns, ["conntrack", "-F"], check=False)


def conntrack_only_ruleset(client_if: str) -> str:
    """A stateful gateway without any policy: conntrack cost alone, for reference."""
    return (
        "table inet ctonly {\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f'    iifname "{client_if}" ct state established,related accept\n'
        "  }\n"
        "}\n"
    )


def _elements(items: Iterable[str]) -> str:
    """` elements = { a, b };` or nothing (nft refuses an empty element list)."""
    text = ", ".join(items)
    return f" elements = {{ {text} }};" if text else ""


def naive_ruleset(
    client_if: str,
    groups: Sequence[Iterable[str]],
    apps: Sequence[Iterable[Dest]],
    rules: Sequence[tuple[int, int]],
) -> str:
    """What other products do: one rule per (group, application) policy, tried in order.

    `rules` holds (group index, application index) pairs; rule k is
    `ip saddr @g<group> ip daddr . meta l4proto . th dport @a<app> accept`. A packet that
    matches none is rejected like userseg rejects it. Established flows are accepted first,
    exactly as in userseg, so the difference is the policy walk of new flows. Plain hash
    sets (exact elements) make each lookup as cheap as nftables allows.
    """
    lines = ["table inet naive {"]
    for i, members in enumerate(groups):
        lines.append(f"  set g{i} {{ type ipv4_addr;{_elements(members)} }}")
    for i, dests in enumerate(apps):
        elems = _elements(f"{addr} . {proto} . {port}" for addr, proto, port in dests)
        lines.append(f"  set a{i} {{ type ipv4_addr . inet_proto . inet_service;{elems} }}")
    lines += [
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        f'    iifname "{client_if}" jump police',
        "  }",
        "  chain police {",
        "    ct state established,related accept",
    ]
    lines += [f"    ip saddr @g{g} ip daddr . meta l4proto . th dport @a{a} accept" for g, a in rules]
    lines += [
        "    meta l4proto tcp reject with tcp reset",
        "    reject with icmpx type admin-prohibited",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def inside(
    nets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network], addresses: Iterable[str]
) -> list[str]:
    """Those of `addresses` that fall inside any of `nets`."""
    nets = list(nets)
    return [a for a in addresses if any(ipaddress.ip_address(a) in n for n in nets)]
