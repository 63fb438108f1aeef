"""Event payload parsers: lines per second per format, on the real corpora (no root, no I/O).

Run: `.venv/bin/python -m bench.bench_parsers [--seconds 2] [--repeat 5]`.

For each format, the corpus inputs that parse to a LoginEvent (the hot path:
a real logon line) are parsed round-robin through the bound parser the
sources use (`formats.parser(fmt, source=...)`), as bytes like a socket or
file hands them over; the median of --repeat runs is reported, with the
"auto" detector on the same inputs next to it.  The JSON decoder in use is
printed: orjson, where installed, is picked up automatically (--stdlib-json
turns it off for comparison).

The ingest budget: >= 20,000 events/s on 2 cores for the whole pipeline, and
Python threads share one core's worth of the GIL, so parsing must leave most
of each 50 us for the mapping book, the store and the kernel.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from userseg.events.formats import common, parser
from userseg.events.model import LoginEvent

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "events"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CORPORA = {
    "samba": sorted(p for p in (DATA / "samba").glob("*.log")),
    "nxlog": sorted((DATA / "windows-samples" / "nxlog").glob("*.json")),
    "winlogbeat": sorted((DATA / "windows-samples" / "winlogbeat").glob("*.json"))
    + sorted((DATA / "winlogbeat-ecs").glob("*.json")),
    "snare": sorted((DATA / "windows-samples" / "snare").glob("*.log")),
    "xml": sorted((DATA / "windows-samples" / "xml").glob("*.xml")),
}


def inputs(fmt: str) -> list[bytes]:
    """The corpus inputs of `fmt` that give a LoginEvent (one per line for Samba, per file otherwise)."""
    p = parser(fmt, source="bench")
    out: list[bytes] = []
    for path in CORPORA[fmt]:
        raw = path.read_bytes()
        for item in raw.splitlines() if fmt == "samba" else [raw]:
            if isinstance(p(item, NOW), LoginEvent):
                out.append(item)
    return out


def rate(fmt: str, data: list[bytes], seconds: float) -> float:
    """Parses per CPU second of `data`, round-robin, for about `seconds` of CPU time.

    CPU time, not wall time: the reference machine's cores are shared, and a
    neighbour's load would otherwise show up as a slower parser.
    """
    p = parser(fmt, source="bench")
    n, started = 0, time.process_time()
    while time.process_time() - started < seconds:
        for item in data:
            p(item, NOW)
        n += len(data)
    return n / (time.process_time() - started)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=2.0, help="per run")
    ap.add_argument("--repeat", type=int, default=5, help="runs per format (the median is reported)")
    ap.add_argument("--stdlib-json", action="store_true", help="do not use orjson even where installed")
    args = ap.parse_args(argv)
    if args.stdlib_json:
        common._fast_loads = None
    decoder = "orjson" if common._fast_loads is not None else "json (stdlib)"
    print(f"JSON decoder: {decoder}")
    print("| format | inputs | avg bytes | lines/CPU-s (median) | us/line | auto: lines/CPU-s |")
    print("|---|---|---|---|---|---|")
    for fmt in CORPORA:
        data = inputs(fmt)
        size = sum(len(d) for d in data) / len(data)
        own = statistics.median(rate(fmt, data, args.seconds) for _ in range(args.repeat))
        auto = statistics.median(rate("auto", data, args.seconds) for _ in range(args.repeat))
        print(
            f"| {fmt} | {len(data)} | {size:.0f} | {own:,.0f} | {1e6 / own:.1f} | {auto:,.0f} |", flush=True
        )


if __name__ == "__main__":
    main()
