"""Packet path through the gateway: empty vs userseg (entitlement classes) vs the naive design.

Run as root: `.venv/bin/python -m bench.bench_packet_path` (needs hping3, nft, conntrack;
builds its own namespace labs and always deletes them; ~4 minutes, `--quick` ~1 minute).

What is measured, and why
-------------------------
Policy is evaluated only for packets of flows in conntrack state NEW; established
flows are accepted before any policy lookup. So the figure that tells designs apart is
how many new-flow packets the gateway forwards per second, and how long a new flow
waits. For every configuration of the gateway namespace:

* **new-flow rate**: hping3 (C) floods UDP datagrams from the lab client to the
  server, the source port stepping by one per datagram. The server counts them at its
  NIC ingress (netdev hook) and drops them, so nothing ever answers: every datagram
  belongs to an unreplied flow, which conntrack keeps in state NEW (checked: 100% of
  them match `ct state new`), so the gateway runs the full policy for each one. (Source
  ports wrap after 65,536 datagrams, so from then on conntrack finds its entry instead
  of creating one; the policy walk, the part that differs between designs, is the same.)
  Datagrams counted per second inside a fixed window (`--seconds`, after a warm-up), one
  window per config and round (`--rounds`); the table shows the median and the best
  window and compares medians (single windows of a shared machine stray both ways,
  typically by 10-20%; the median is the steadiest from run to run). Generator,
  forwarding softirq and counting share the machine's 2 cores (hping3 pinned to CPU 0,
  the softirq runs on its CPU), so the absolute rate is this machine's; the ratios are
  the figures to read.
* **new-flow latency**: TCP handshakes from fresh sockets (a new flow each), timed
  from connect() to established; only the SYN is policed and the server's kernel
  answers it, so no user-space server sits on the timed path. p50/p99 over `--samples`.

Every configuration gets a lab (gateway, client and server namespaces) of its own, so
all rulesets are loaded once and stay loaded; the rounds then visit every configuration
in a rotating order, so that drifts of a shared, noisy machine hit all of them alike:

* **empty**: no ruleset at all (stateless forwarding, no conntrack).
* **conntrack**: only `ct state established,related accept`: what statefulness alone
  costs, so the policy's own cost can be read off.
* **userseg**: the product's table, loaded by the real code path
  (`Reconciler(NftFirewall(netns=gw)).full_sync(snapshot)`) with 100,000 users mapped and
  100 policies / 100 classes, 1,000 / 1,000 and 10,000 / 1,000 (`--sizes`); the client's
  address is mapped to a user of the last class, whose policies allow the benchmark target.
* **naive**: the same policies the way other products enforce them: one rule per
  (group, application) policy, `ip saddr @g_i ip daddr . meta l4proto . th dport @a_i
  accept`, tried in order, then reject; the client sits in the group of the *last*
  rule so every new flow walks all of them (loaded with `nft -f`).

Before measuring, every configuration is checked: the target is reachable over TCP and
UDP, flood datagrams arrive, and where a policy is loaded a forbidden TCP port is refused
and datagrams to a forbidden UDP port never arrive, so a broken path cannot be measured
by mistake (the bench stops with an error instead); all checks run again after the last round.

Addresses: synthetic mappings come from `bench.world` (198.18.1.0 - 198.19.135.x),
applications from 198.19.240.0/20; the lab's client and server networks are
198.19.200.0/24 and 198.19.210.0/24, which the bench checks do not collide.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import NamedTuple

from bench.packet_tools import (
    Dest,
    ServerCounter,
    burst,
    connect_latencies,
    conntrack_only_ruleset,
    flood,
    flush_conntrack,
    inside,
    median,
    missing_tools,
    naive_ruleset,
    nft_file,
    percentile,
)
from bench.world import NOW, world
from userseg.adapters.firewall.nft import NftFirewall
from userseg.lab import ClientSpec, Lab, LabSpec, ServerSpec, probe_tcp, probe_udp
from userseg.lab.topology import LAB_NET4, LAB_NET6
from userseg.model import (
    Action,
    AddressRange,
    Application,
    GatewaySettings,
    Mapping,
    Policy,
    Service,
    Snapshot,
    Subject,
    SubjectKind,
)
from userseg.reconciler import Reconciler

CLIENT_NET = "198.19.200.0/24"
SERVER_NET = "198.19.210.0/24"
TCP_PORT = 8080  # listener; allowed: connect latency and the reachability check
FORBIDDEN_TCP = 8081  # listener too, so "refused" can only come from the gateway
ECHO_PORT = 7  # UDP echo listener; allowed
FLOOD_PORT = 9000  # allowed; counted and dropped at the server's ingress
FORBIDDEN_UDP = 9001  # not allowed; counted at the server's ingress (must stay 0 when policed)
BURST = 300  # datagrams per sanity burst
TARGET_APP = "bench-target"


class SanityError(RuntimeError):
    """A configuration does not behave as its ruleset says: its numbers would be meaningless."""


class FixedClock:
    """The world's `now`: mapping expiries are 45 min after it, so kernel timeouts are 45 min."""

    def now(self) -> datetime:
        return NOW


# ------------------------------------------------------------------------------------------ worlds


class Size(NamedTuple):
    policies: int  # = applications; policy j grants group j % classes application j
    classes: int  # = groups; user i is in group i % classes

    @classmethod
    def parse(cls, text: str) -> Size:
        """`1000` (1,000 policies, one class per policy) or `10000/1000` (policies/classes)."""
        p, _, c = text.partition("/")
        size = cls(int(p), int(c or p))
        if not 1 <= size.classes <= size.policies:
            raise ValueError(f"bad size {text!r}: need 1 <= classes <= policies")
        return size


def bench_snapshot(lab: Lab, users: int, size: Size) -> Snapshot:
    """bench.world with `users` users, one mapping each, and `size` policies and classes,
    plus the lab client and its target.

    The client is mapped to the user u{C-1} of the last group g{C-1}; one more policy
    (the last, `p-bench`) grants that group the benchmark target on the server.
    """
    policies, classes = size
    if users < classes:
        raise ValueError("need at least one user per class")
    base = world(users=users, mappings=users, classes=classes, apps=policies, policies=policies)
    client = ipaddress.ip_address(lab.clients["c1"].addresses[0])
    server = lab.servers["s1"].address
    target = Application(
        TARGET_APP,
        (AddressRange.parse(server),),
        (Service.parse(f"tcp/{TCP_PORT}"), Service.parse(f"udp/{ECHO_PORT},{FLOOD_PORT}")),
    )
    group = f"g{classes - 1}"
    grant = Policy("p-bench", policies, (Subject(SubjectKind.GROUP, group),), TARGET_APP, Action.ALLOW)
    expires = NOW + timedelta(minutes=45)
    mapping = Mapping(client, f"u{classes - 1}", "bench", NOW, NOW, expires)
    gateway = GatewaySettings(
        client_interfaces=(lab.client_if,),
        client_networks=(AddressRange.parse(str(lab.client_network)),),
        infrastructure=base.gateway.infrastructure,
    )
    snap = replace(
        base,
        mappings=(*base.mappings, mapping),
        applications={**base.applications, TARGET_APP: target},
        policies=(*base.policies, grant),
        gateway=gateway,
    )
    synthetic = [str(m.ip) for m in base.mappings]
    for app in base.applications.values():
        synthetic += [str(a) for d in app.destinations for a in (d.first_address(), d.last_address())]
    if clash := inside([lab.client_network, lab.server_network], synthetic):
        raise SanityError(f"synthetic addresses inside the lab's own networks: {clash[:5]}")
    if outside := set(synthetic) - set(inside([LAB_NET4, LAB_NET6], synthetic)):
        raise SanityError(f"synthetic addresses outside {LAB_NET4} / {LAB_NET6}: {sorted(outside)[:5]}")
    return snap


def naive_from(snap: Snapshot) -> tuple[list[list[str]], list[list[Dest]], list[tuple[int, int]]]:
    """The same policies as one (group set, application set) rule each, in policy order."""
    members: dict[str, list[str]] = {}
    for m in snap.mappings:
        user = snap.users.get(m.user)
        if user is None or m.ip.version != 4:
            continue
        for g in user.groups:
            members.setdefault(g, []).append(str(m.ip))
    group_index: dict[str, int] = {}
    app_index: dict[str, int] = {}
    groups: list[list[str]] = []
    apps: list[list[Dest]] = []
    rules: list[tuple[int, int]] = []
    for p in snap.ordered_policies():
        if p.action is not Action.ALLOW or [s.kind for s in p.subjects] != [SubjectKind.GROUP]:
            raise ValueError(f"naive translation handles single-group allow policies only: {p.name}")
        group = p.subjects[0].name
        if group not in group_index:
            group_index[group] = len(groups)
            groups.append(members.get(group, []))
        if p.application not in app_index:
            app_index[p.application] = len(apps)
            apps.append(_v4_dests(snap.applications[p.application]))
        rules.append((group_index[group], app_index[p.application]))
    return groups, apps, rules


def _v4_dests(app: Application) -> list[Dest]:
    """(address, protocol, port) triples of an application's single IPv4 destinations."""
    out: list[Dest] = []
    for d in app.destinations:
        if d.version != 4 or d.first != d.last:
            continue
        for svc in app.services:
            for r in svc.port_ranges():
                out += [
                    (str(d.first_address()), svc.proto.value, port) for port in range(r.first, r.last + 1)
                ]
    return out


# ------------------------------------------------------------------------------------------ configurations

LAB_SPEC = LabSpec(
    clients=[ClientSpec("c1")],
    servers=[ServerSpec("s1", tcp_ports=[TCP_PORT, FORBIDDEN_TCP], udp_ports=[ECHO_PORT])],
    ipv6=False,
    client_network=CLIENT_NET,
    server_network=SERVER_NET,
    prefix="usbp",
)


@dataclass
class Config:
    """One gateway ruleset, in a lab of its own so all of them stay loaded side by side."""

    name: str
    describe: str
    policed: bool  # a policy is loaded: forbidden traffic must be refused
    lab: Lab
    counter: ServerCounter
    load_seconds: float = 0.0
    rates: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    @property
    def src(self) -> str:
        return self.lab.clients["c1"].addresses[0]

    @property
    def dst(self) -> str:
        return self.lab.servers["s1"].address


def new_config(stack: contextlib.ExitStack, name: str, describe: str, policed: bool) -> Config:
    """A fresh lab (torn down with the stack, also on errors) with the server-side counters."""
    lab = stack.enter_context(Lab(LAB_SPEC))
    counter = ServerCounter(lab, "s1", {"flood": FLOOD_PORT, "forbidden": FORBIDDEN_UDP})
    lab.on_close(counter.close)
    return Config(name, describe, policed, lab, counter)


def load_userseg(lab: Lab, snap: Snapshot) -> float:
    """The product's own path: read back, compile, diff, apply through libnftables."""
    fw = NftFirewall(netns=lab.gateway_ns)
    try:
        t0 = time.perf_counter()
        report = Reconciler(fw, FixedClock()).full_sync(snap)
        seconds = time.perf_counter() - t0
    finally:
        fw.close()
    if not report.applied or report.mappings != len(snap.mappings):
        raise SanityError(f"userseg full sync applied={report.applied}, mappings={report.mappings}")
    return seconds


# ------------------------------------------------------------------------------------------ measuring


def check(cfg: Config) -> None:
    """Refuse to measure a path that does not do what the ruleset says."""
    lab, counter, src, dst = cfg.lab, cfg.counter, cfg.src, cfg.dst
    problems = []
    if (r := probe_tcp(lab, "c1", src, dst, TCP_PORT)) != "open":
        problems.append(f"allowed tcp/{TCP_PORT} is {r}")
    if (r := probe_udp(lab, "c1", src, dst, ECHO_PORT)) != "open":
        problems.append(f"allowed udp/{ECHO_PORT} is {r}")
    want = "refused" if cfg.policed else "open"
    if (r := probe_tcp(lab, "c1", src, dst, FORBIDDEN_TCP)) != want:
        problems.append(f"forbidden tcp/{FORBIDDEN_TCP} is {r}, expected {want}")
    if (n := burst(lab, "c1", dst, FLOOD_PORT, counter, "flood", BURST)) < BURST:
        problems.append(f"only {n} of {BURST} datagrams to allowed udp/{FLOOD_PORT} arrived")
    n = burst(lab, "c1", dst, FORBIDDEN_UDP, counter, "forbidden", BURST)
    if (n != 0) if cfg.policed else (n < BURST):
        problems.append(f"{n} of {BURST} datagrams to forbidden udp/{FORBIDDEN_UDP} arrived")
    flush_conntrack(lab)
    if problems:
        raise SanityError(f"{cfg.name}: " + "; ".join(problems))


def window(cfg: Config, seconds: float, generators: int, samples: int) -> float:
    """One measurement of one config: a flood window, then a batch of handshakes."""
    flush_conntrack(cfg.lab)
    try:
        res = flood(cfg.lab, "c1", cfg.dst, FLOOD_PORT, cfg.counter, "flood", seconds, generators)
        cfg.latencies += connect_latencies(cfg.lab, "c1", cfg.src, cfg.dst, TCP_PORT, samples)
    finally:
        flush_conntrack(cfg.lab)  # keep the (global) conntrack hash small for the next lab
    cfg.rates.append(res.rate)
    cfg.losses.append(res.loss)
    return res.rate


def cpu_times() -> tuple[int, int]:
    """(total, steal) jiffies of all CPUs: steal shows a host taking our cores away."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    return sum(fields[:8]), fields[7]


def report(configs: list[Config]) -> str:
    """The table; configs[0] is empty, configs[1] conntrack-only (the two references).

    Ratios compare medians: on a shared machine single windows stray both ways (other
    work slows one down; a quiet moment speeds one up), so neither the best nor a mean
    is steadier from run to run than the median. The best window is shown beside it.
    """
    empty, stateful = median(configs[0].rates), median(configs[1].rates)
    head = (
        f"{'config':<15} | {'rules / classes':<42} | {'median/s':>8} | {'best/s':>8} | "
        f"{'vs empty':>8} | {'vs ct':>5} | {'p50 ms':>6} | {'p99 ms':>6} | {'load s':>6}"
    )
    lines = [head, "-" * len(head)]
    for c in configs:
        rate = median(c.rates)
        lines.append(
            f"{c.name:<15} | {c.describe:<42} | {rate:>8,.0f} | {max(c.rates):>8,.0f} | "
            f"{rate / empty:>8.3f} | {rate / stateful:>5.2f} | {percentile(c.latencies, 50):>6.3f} | "
            f"{percentile(c.latencies, 99):>6.3f} | {c.load_seconds:>6.2f}"
        )
    return "\n".join(lines)


def build(stack: contextlib.ExitStack, args: argparse.Namespace, sizes: list[Size]) -> list[Config]:
    """Every configuration in its own lab, loaded and checked once, before any measurement."""
    configs: list[Config] = []

    def ready(cfg: Config, seconds: float) -> None:
        cfg.load_seconds = seconds
        check(cfg)
        configs.append(cfg)
        print(f"  {cfg.name:<15} loaded in {seconds:5.2f} s, checked ({cfg.lab.gateway_ns})", flush=True)

    ready(new_config(stack, "empty", "no ruleset", False), 0.0)
    cfg = new_config(stack, "conntrack", "1 rule (ct established accept)", False)
    ready(cfg, nft_file(cfg.lab, conntrack_only_ruleset(cfg.lab.client_if)))
    naive: list[tuple[Config, str]] = []
    wanted = set(args.naive_sizes)
    for size in sizes:
        name = f"userseg {size.policies:,}"
        describe = f"{size.policies + 1:,} policies, {size.classes:,} classes, {args.users // 1000}k maps"
        cfg = new_config(stack, name, describe, True)
        t0 = time.perf_counter()
        snap = bench_snapshot(cfg.lab, args.users, size)
        print(
            f"  world with {size.policies:,} policies built in {time.perf_counter() - t0:.1f} s", flush=True
        )
        ready(cfg, load_userseg(cfg.lab, snap))
        if size.policies in wanted:
            wanted.discard(size.policies)
            groups, apps, rules = naive_from(snap)  # addresses are the same in every lab
            addrs = sum(len(g) for g in groups)
            describe = f"{len(rules):,} rules, {len(groups):,} groups, {addrs // 1000}k addrs"
            ncfg = new_config(stack, f"naive {size.policies:,}", describe, True)
            naive.append((ncfg, naive_ruleset(ncfg.lab.client_if, groups, apps, rules)))
        del snap
    for ncfg, text in naive:
        ready(ncfg, nft_file(ncfg.lab, text))
    return configs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=2.0, help="flood window per round and config")
    ap.add_argument("--rounds", type=int, default=8, help="rounds (each measures every config once)")
    ap.add_argument("--samples", type=int, default=2000, help="TCP handshakes per config (all rounds)")
    ap.add_argument("--generators", type=int, default=1, help="hping3 processes, one per CPU")
    ap.add_argument("--users", type=int, default=100_000, help="synthetic users, one mapping each")
    ap.add_argument(
        "--sizes",
        default="100,1000,10000/1000",
        help="userseg worlds: POLICIES[/CLASSES], comma-separated (default: one class per policy)",
    )
    ap.add_argument(
        "--naive", default="100,1000", help="policy counts of the --sizes worlds to run the naive design on"
    )
    ap.add_argument("--quick", action="store_true", help="empty, conntrack, userseg/naive 1000; 2 x 2 s")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds, args.samples = 2.0, 2, 400
        args.sizes, args.naive = "1000", "1000"
    if os.geteuid() != 0:
        print("bench_packet_path: needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    if missing := missing_tools():
        print(f"bench_packet_path: missing tools: {', '.join(missing)}", file=sys.stderr)
        print("  install with: apt-get install -y hping3 nftables conntrack", file=sys.stderr)
        return 2
    try:
        sizes = [Size.parse(s) for s in args.sizes.split(",") if s]
        args.naive_sizes = [int(s) for s in args.naive.split(",") if s]
    except ValueError as exc:
        ap.error(str(exc))
    if not set(args.naive_sizes) <= {s.policies for s in sizes}:
        ap.error("--naive policy counts must be among --sizes")
    if args.rounds < 1 or args.seconds <= 0 or args.samples < args.rounds or args.generators < 1:
        ap.error("need rounds >= 1, seconds > 0, samples >= rounds, generators >= 1")

    started = time.monotonic()
    print(
        f"packet path bench: kernel {platform.release()}, {os.cpu_count()} CPUs, "
        f"{args.generators} hping3 generator(s), {args.rounds} round(s) of {args.seconds:g} s per config, "
        f"{args.samples} handshakes per config; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    Lab.cleanup_stale(LAB_SPEC.prefix)  # leftovers of a crashed earlier run (owner dead) only
    with contextlib.ExitStack() as stack:
        configs = build(stack, args, sizes)
        per_round = [
            args.samples // args.rounds + (r < args.samples % args.rounds) for r in range(args.rounds)
        ]
        total0, steal0 = cpu_times()
        for r in range(args.rounds):
            shift = r % len(configs)  # rotate the order: no config always follows the same one
            rates = {
                c.name: window(c, args.seconds, args.generators, per_round[r])
                for c in configs[shift:] + configs[:shift]
            }
            line = ", ".join(f"{c.name} {rates[c.name] / 1000:.1f}" for c in configs)
            print(f"  round {r + 1}/{args.rounds} (kpps): {line}", flush=True)
        total1, steal1 = cpu_times()
        for cfg in configs:
            check(cfg)  # still the path we meant to measure
        if lossy := [f"{c.name} {max(c.losses):.1%}" for c in configs if max(c.losses) > 0.01]:
            print(f"  note: generator datagrams lost on the way (max per round): {', '.join(lossy)}")
    steal = (steal1 - steal0) / (total1 - total0) if total1 > total0 else 0.0
    print()
    print(report(configs))
    print()
    print(
        "median/s, best/s: unreplied UDP datagrams (each a flow in state NEW, fully policed) counted "
        f"at the server per second: median and best window of {args.rounds} round(s); vs empty, vs ct: "
        "median relative to the empty and to the conntrack-only gateway (the policy's own cost); "
        "p50/p99: TCP handshake from a fresh socket (only the SYN is policed); load s: time to install "
        "the ruleset (userseg: Reconciler.full_sync from an empty kernel; naive: nft -f)."
    )
    print(
        f"total {time.monotonic() - started:.0f} s; CPU steal while measuring {steal:.1%}; "
        f"load average now {os.getloadavg()[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
