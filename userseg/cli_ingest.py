"""Commands about login events: `mappings --why`, `test-parse`, `ignore-suggestions`, `token new`.

`test-parse` and `token new` need neither the database nor the firewall, so an
admin can try a forwarder's output on a laptop before pointing it at the
gateway.  Everything else reads the store only.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from userseg import cli_output as out
from userseg.config import ConfigError, load_config
from userseg.core.ingest import Ignored, MappingBook, MarkShared, Remove, Upsert
from userseg.core.ingest_rules import IngestRules, SourceRules
from userseg.events.model import LoginEvent, ParseResult, Rejected, Skipped
from userseg.model import IPAddress, ip
from userseg.runtime import Runtime
from userseg.store.codec import mapping_doc

MAX_TEST_PARSE_BYTES = 256 << 20


def add_parsers(sub: Any) -> None:
    tp = sub.add_parser(
        "test-parse",
        help="show what each line of a log sample becomes (event, or why it is ignored)",
        description=(
            "Parse FILE as FORMAT and run every event through the mapping rules of the config "
            "(or the defaults), as if each line arrived when it was logged.  Nothing is stored."
        ),
    )
    tp.add_argument("format", help="samba, nxlog, winlogbeat, snare, xml or auto")
    tp.add_argument("file", type=Path, help="the sample ('-' for stdin)")
    tp.add_argument("--syslog", action="store_true", help="lines carry a syslog header (RFC 5424/3164)")
    tp.add_argument("--source", help="apply this configured source's rules (default: the [ingest] defaults)")
    tp.add_argument("--json", action="store_true")

    ig = sub.add_parser(
        "ignore-suggestions",
        help="accounts seen on many IPs (service accounts that would overwrite real users)",
    )
    ig.add_argument("--hours", type=float, default=24.0, help="look back this many hours (default 24)")
    ig.add_argument("--min-ips", type=int, default=5, help="distinct IPs that make an account suspect")
    ig.add_argument("--json", action="store_true")

    tk = sub.add_parser("token", help="HTTP push API tokens").add_subparsers(
        dest="token_command", required=True
    )
    tn = tk.add_parser("new", help="create a bearer token for an http source; prints its config line")
    tn.add_argument("name", help="the source name the token will belong to")


# ---------------------------------------------------------------- mappings --why


def cmd_why(rt: Runtime, text: str, as_json: bool) -> int:
    try:
        addr = ip(text)
    except ValueError as exc:
        raise out.UsageError(f"--why: {exc}") from None
    now = rt.clock.now()
    found = rt.store.mappings(ip=addr, active_at=now)
    shared = [s for s in rt.store.shared_marks() if s.ip == addr]
    history = [a for a in rt.store.audit(limit=500) if a.entity == "mapping" and a.name == str(addr)][:5]
    if as_json:
        out.emit_json(
            {
                "ip": str(addr),
                "mapping": mapping_doc(found[0]) if found else None,
                "shared": {"users": list(shared[0].users), "since": shared[0].since.isoformat()}
                if shared
                else None,
                "audit": [
                    {"at": a.at.isoformat(), "actor": a.actor, "action": a.action, "before": a.before}
                    for a in history
                ],
            }
        )
        return 0
    if found:
        m = found[0]
        p = dict(m.provenance)
        print(f"{addr} -> {m.user}")
        rows = [
            ("source", m.source),
            ("event", _event_line(p)),
            ("reported by", p.get("host", "")),
            ("event time", p.get("time", "")),
            ("first seen", m.first_seen.isoformat()),
            ("last seen", m.last_seen.isoformat()),
            ("expires", m.expires_at.isoformat()),
            ("replaced", p.get("replaced", "nobody")),
        ]
        extra = {k: v for k, v in p.items() if k not in _SHOWN}
        rows += sorted(extra.items())
        for k, v in rows:
            if v:
                print(f"  {k + ':':<13}{v}")
    else:
        print(f"{addr}: no active mapping (only what unknown clients may reach)")
    if shared:
        s = shared[0]
        print(f"  shared since {s.since.isoformat()}: {', '.join(s.users)} logged on within the window")
    for a in history:
        before = f" (was {a.before.get('user')})" if a.before else ""
        after = f" -> {a.after.get('user')}" if a.after else ""
        print(f"  audit {a.at.isoformat()}: {a.action} by {a.actor}{before}{after}")
    return 0


_SHOWN = {"source", "event_id", "logon_type", "host", "time", "replaced", "kind", "service", "auth"}


def _event_line(p: dict[str, str]) -> str:
    parts = [p.get("kind", "")]
    if "event_id" in p:
        parts.append(f"event {p['event_id']}")
    if "logon_type" in p:
        parts.append(f"logon type {p['logon_type']}")
    how = " / ".join(v for v in (p.get("service"), p.get("auth")) if v)
    if how:
        parts.append(f"({how})")
    return " ".join(x for x in parts if x)


# ---------------------------------------------------------------- status


def ingest_status(rt: Runtime) -> dict[str, Any]:
    """Per source: when it last delivered an event and its counters (as last committed)."""
    configured = {s.name: s for s in rt.config.ingest.sources} if rt.config.ingest else {}
    states = rt.store.source_states()
    now = rt.clock.now()
    out: dict[str, Any] = {}
    for name in sorted(set(configured) | set(states)):
        st = states.get(name)
        src = configured.get(name)
        last = st.last_event_at if st else None
        out[name] = {
            "type": src.kind.value if src else None,
            "configured": src is not None,
            "last_event_at": last.isoformat() if last else None,
            "last_event_age_seconds": round((now - last).total_seconds(), 1) if last else None,
            "updated_at": st.updated_at.isoformat() if st else None,
            "counters": st.counters if st else {},
        }
    return out


def print_ingest_status(ingest: dict[str, Any]) -> None:
    for name, s in ingest.items():
        c = s["counters"]
        age = (
            "no event yet"
            if s["last_event_age_seconds"] is None
            else f"last event {s['last_event_age_seconds']:g} s ago"
        )
        gone = "" if s["configured"] else " (no longer configured)"
        print(
            f"source {name} ({s['type'] or '?'}){gone}: {age}; received {c.get('received', 0)}, "
            f"mapped {c.get('mapped', 0) + c.get('replaced', 0)}, ignored {c.get('ignored', 0)}, "
            f"rejected {c.get('rejected', 0)}, dropped {c.get('dropped', 0)}"
        )


# ---------------------------------------------------------------- test-parse


def cmd_test_parse(args: argparse.Namespace) -> int:
    from userseg.events.formats import FORMATS, parse

    if args.format not in FORMATS:
        raise out.UsageError(f"unknown format {args.format!r}; one of {', '.join(FORMATS)}")
    rules = _rules_for(args)
    book = MappingBook(rules)
    source = args.source or "test"
    counts: Counter[str] = Counter()
    results: list[dict[str, Any]] = []
    from datetime import UTC, datetime

    received = datetime.now(UTC)
    for number, chunk in _chunks(args.file, args.format):
        payload: str | bytes = chunk
        if args.syslog:
            from userseg.events.syslog_frame import parse_header

            header = parse_header(chunk, received=received)
            if isinstance(header, Rejected):
                result: ParseResult = header
            else:
                result = parse(args.format, header.message, source=source, received=received)
        else:
            result = parse(args.format, payload, source=source, received=received)
        outcome, why = _outcome(book, result)
        counts[outcome] += 1
        results.append({"line": number, "outcome": outcome, "reason": why, "event": _event_doc(result)})
        if not args.json:
            print(f"{number}: {outcome}: {why}")
    if args.json:
        out.emit_json({"results": results, "summary": dict(counts)})
    else:
        print("summary: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return 0


def _rules_for(args: argparse.Namespace) -> IngestRules:
    """The configured rules if a config file is readable, else the documented defaults."""
    try:
        config = load_config(args.config)
    except (ConfigError, OSError) as exc:
        if args.source:
            raise out.UsageError(f"--source needs a readable config: {exc}") from None
        print(f"userseg: note: using default rules ({str(exc).splitlines()[0]})", file=sys.stderr)
        return IngestRules(sources={}, default=SourceRules("test"))
    if config.ingest is None:
        return IngestRules(sources={}, default=SourceRules("test", ttl=config.default_ttl))
    rules = config.ingest.rules
    if args.source and args.source not in rules.sources:
        raise out.UsageError(f"no source {args.source!r} in {config.source}")
    return rules


def _chunks(path: Path, fmt: str) -> Iterator[tuple[int, bytes]]:
    data = sys.stdin.buffer.read(MAX_TEST_PARSE_BYTES) if str(path) == "-" else _read(path)
    if fmt == "xml" and b"\n<Event" not in data and data.count(b"<Event") <= 1:
        yield 1, data  # one (possibly pretty-printed) event
        return
    for number, line in enumerate(data.split(b"\n"), 1):
        if line.strip():
            yield number, line.rstrip(b"\r")


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(MAX_TEST_PARSE_BYTES)
    except OSError as exc:
        raise out.UsageError(f"cannot read {path}: {exc.strerror}") from None


def _outcome(book: MappingBook, result: ParseResult) -> tuple[str, str]:
    if isinstance(result, Rejected):
        return "rejected", result.reason
    if isinstance(result, Skipped):
        return "skipped", result.reason
    e = result
    who = f"{e.kind.value} {e.user}" + (f"@{e.domain}" if e.domain else "") + f" ip={e.ip or '-'}"
    if e.event_id is not None:
        who += f" event={e.event_id}"
    if e.logon_type is not None:
        who += f" type={e.logon_type}"
    effects = book.apply(e, e.time + timedelta(seconds=1))
    ignored = [x for x in effects if isinstance(x, Ignored)]
    if ignored:
        return f"ignored ({ignored[0].category})", f"{who}: {ignored[0].reason}"
    if any(isinstance(x, Upsert) and x.duplicate for x in effects):
        return "duplicate", f"{who}: a repeat of the same logon within the dedupe window"
    what = []
    for x in effects:
        if isinstance(x, Upsert):
            what.append(
                f"replaces {x.replaced.user}" if x.replaced else "refreshes" if not x.kernel else "maps"
            )
        elif isinstance(x, Remove):
            what.append(f"removes {x.mapping.user} ({x.reason})")
        elif isinstance(x, MarkShared):
            what.append(f"marks {x.mark.ip} shared")
    return "event", f"{who}: {', '.join(what) or 'no change'}"


def _event_doc(result: ParseResult) -> dict[str, Any] | None:
    if not isinstance(result, LoginEvent):
        return None
    return {
        "user": result.user,
        "domain": result.domain,
        "ip": str(result.ip) if result.ip else None,
        "time": result.time.isoformat(),
        "kind": result.kind.value,
        "event_id": result.event_id,
        "logon_type": result.logon_type,
        "host": result.host,
        "logon_id": result.logon_id,
        "detail": dict(result.detail),
    }


# ---------------------------------------------------------------- ignore-suggestions


def cmd_ignore_suggestions(rt: Runtime, args: argparse.Namespace) -> int:
    if args.hours <= 0 or args.min_ips < 2:
        raise out.UsageError("--hours must be positive and --min-ips at least 2")
    now = rt.clock.now()
    by_user: dict[str, dict[str, Any]] = {}
    for s in rt.store.sightings_since(now - timedelta(hours=args.hours)):
        u = by_user.setdefault(s.user, {"ips": set(), "events": 0, "last_seen": s.last_seen})
        u["ips"].add(s.ip)
        u["events"] += s.events
        u["last_seen"] = max(u["last_seen"], s.last_seen)
    suspects = sorted(
        ((name, u) for name, u in by_user.items() if len(u["ips"]) >= args.min_ips),
        key=lambda item: (-len(item[1]["ips"]), item[0]),
    )
    if args.json:
        out.emit_json(
            [
                {
                    "account": name,
                    "ips": len(u["ips"]),
                    "events": u["events"],
                    "last_seen": u["last_seen"].isoformat(),
                    "sample": sorted(u["ips"], key=_ip_key)[:5],
                }
                for name, u in suspects
            ]
        )
        return 0
    if not suspects:
        print(f"no account logged on from {args.min_ips} or more IPs in the last {args.hours:g} h")
        return 0
    print(
        out.table(
            ["ACCOUNT", "IPS", "EVENTS", "LAST SEEN", "SOME IPS"],
            [
                [
                    name,
                    len(u["ips"]),
                    u["events"],
                    u["last_seen"],
                    " ".join(sorted(u["ips"], key=_ip_key)[:3]),
                ]
                for name, u in suspects
            ],
        )
    )
    names = ", ".join(f'"{name}"' for name, _ in suspects)
    print(f"\nTo ignore them, add to [ingest] (or a source):\n  extra_ignore_users = [{names}]")
    return 0


def _ip_key(text: str) -> tuple[int, int]:
    a: IPAddress = ip(text)
    return (a.version, int(a))


# ---------------------------------------------------------------- token new


def cmd_token_new(args: argparse.Namespace) -> int:
    from userseg.web.tokens import new_token, token_hash

    token = new_token()
    print(f"token for source {args.name!r} (shown once; give it to the sender, store it nowhere else):")
    print(f"  {token}")
    print("config (the hash only):")
    print("  [[ingest.sources]]")
    print(f'  name = "{args.name}"')
    print('  type = "http"')
    print(f'  token_hash = "{token_hash(token)}"')
    return 0
