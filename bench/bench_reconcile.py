"""Full reconcile from an empty kernel and the incremental fast path, against real nftables.

Run as root: `.venv/bin/python -m bench.bench_reconcile` (creates and deletes its own netns).
Prints: full reconcile wall time and peak RSS for 250k mappings / 1k classes / 1k apps,
then single-mapping apply latency p50/p99 with 100k mappings loaded.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import subprocess
from datetime import UTC, datetime, timedelta
from time import perf_counter

from bench.world import NOW, client_ip, world
from userseg.adapters.firewall.nft import NftFirewall
from userseg.core.compile import compile_state
from userseg.core.diff import diff
from userseg.core.render import render
from userseg.reconciler import Reconciler, gc_paused


class WallClock:
    """The real time: the kernel counts element timeouts from the moment of the apply."""

    def now(self) -> datetime:
        return datetime.now(UTC)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def full(ns: str, mappings: int, classes: int, apps: int, users: int) -> None:
    snap = world(users=users, mappings=mappings, classes=classes, apps=apps)
    gc.collect()
    base = peak_rss_mb()
    fw = NftFirewall(netns=ns)
    t0 = perf_counter()
    now = WallClock().now()
    with gc_paused():  # as Reconciler.full_sync does
        desired = compile_state(snap, now)
        t1 = perf_counter()
        spec = render(desired)
        actual = fw.read()
        plan = diff(spec, actual, now)
    t2 = perf_counter()
    fw.apply(plan)
    t3 = perf_counter()
    print(
        f"full reconcile from empty kernel: {mappings:,} mappings, {len(desired.classes):,} classes, "
        f"{apps:,} apps, {users:,} users"
    )
    print(
        f"  compile {t1 - t0:.2f} s, render+read+diff {t2 - t1:.2f} s, apply {t3 - t2:.2f} s, "
        f"total {t3 - t0:.2f} s"
    )
    print(f"  peak RSS {peak_rss_mb():.0f} MB (world snapshot alone: {base:.0f} MB)")
    t4 = perf_counter()
    again = diff(spec, fw.read(), WallClock().now())
    print(f"  re-read + diff afterwards: {perf_counter() - t4:.2f} s, plan empty: {again.is_empty}")
    fw.close()


def incremental(ns: str, loaded: int, samples: int) -> None:
    snap = world(users=loaded, mappings=loaded, classes=100, apps=100)
    fw = NftFirewall(netns=ns)
    rec = Reconciler(fw, WallClock())
    rec.full_sync(snap)
    lat = []
    exp = NOW + timedelta(minutes=45)
    for i in range(samples):
        ip = client_ip(loaded + i)
        t0 = perf_counter()
        assert rec.set_mapping(ip, f"u{i}", exp)
        lat.append((perf_counter() - t0) * 1000)
    lat.sort()
    p50 = statistics.median(lat)
    p99 = lat[int(len(lat) * 0.99) - 1]
    print(
        f"incremental apply (one new mapping = one element) with {loaded:,} mappings loaded, "
        f"{samples} samples: p50 {p50:.3f} ms, p99 {p99:.3f} ms, max {lat[-1]:.3f} ms"
    )
    fw.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mappings", type=int, default=250_000)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--classes", type=int, default=1_000)
    ap.add_argument("--apps", type=int, default=1_000)
    ap.add_argument("--loaded", type=int, default=100_000)
    ap.add_argument("--samples", type=int, default=2_000)
    ap.add_argument("--only", choices=["full", "incremental"])
    a = ap.parse_args()
    for what in ("full", "incremental"):
        if a.only and a.only != what:
            continue
        ns = f"usbench{os.getpid() % 100000}{what[0]}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            if what == "full":
                full(ns, a.mappings, a.classes, a.apps, a.users)
            else:
                incremental(ns, a.loaded, a.samples)
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    main()
