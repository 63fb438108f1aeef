"""`userseg` command line.  Talks to the store and the reconciler, never to nft or LDAP.

Exit codes: 0 ok, 1 the firewall refused a change, 2 bad input (arguments,
config or store contents) with one line naming the problem, 3 `status`: the
kernel is not in step, 4 `sync`: the directory could not be read (nothing
was changed).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from userseg import cli_directory, cli_ingest
from userseg import cli_output as out
from userseg.config import ConfigError, default_config_path, load_config
from userseg.core.compile import CompileError
from userseg.core.simulate import simulate
from userseg.enforcer import Enforcer
from userseg.events.service import IngestError
from userseg.model import IPAddress, Mapping, ModelError, Proto, User, canonical, ip
from userseg.ports import FirewallError
from userseg.runtime import RUN_DIR, Runtime, open_runtime, reconcile_lock
from userseg.service.statusfile import read_status, status_path
from userseg.store import StoreError
from userseg.store.codec import mapping_doc

UsageError = out.UsageError


def parse_destination(text: str) -> tuple[IPAddress, Proto, int | None]:
    """DEST[:PORT][/PROTO], IPv6 with a port as [ADDR]:PORT; tcp when no protocol is given."""
    rest = text.strip()
    proto_text = "tcp"
    if "/" in rest:
        rest, _, proto_text = rest.rpartition("/")
    port_text = ""
    if rest.startswith("["):
        addr_text, sep, tail = rest[1:].partition("]")
        if not sep or (tail and not tail.startswith(":")):
            raise UsageError(f"bad destination {text!r} (expected [IPV6]:PORT)")
        port_text = tail[1:]
    elif rest.count(":") == 1:
        addr_text, _, port_text = rest.partition(":")
    else:
        addr_text = rest  # IPv4 without a port, or bare IPv6
    try:
        dest = ip(addr_text)
        proto = Proto(proto_text.lower())
    except (ModelError, ValueError) as exc:
        if addr_text.count(":") > 1 and not rest.startswith("["):
            raise UsageError(f"bad destination {text!r}: write IPv6 with a port as [ADDR]:PORT") from None
        raise UsageError(f"bad destination {text!r}: {exc}") from None
    if port_text and not port_text.isdigit():
        raise UsageError(f"bad destination {text!r}: port {port_text!r} is not a number")
    port = int(port_text) if port_text else None
    if port is not None and not 0 <= port <= 65535:
        raise UsageError(f"bad destination {text!r}: port must be 0-65535")
    if proto is not Proto.ICMP and port is None:
        hint = " (write IPv6 with a port as [ADDR]:PORT)" if dest.version == 6 else ""
        raise UsageError(f"destination {text!r} needs a port for {proto.value}{hint}")
    return dest, proto, port


def _ip_arg(text: str) -> IPAddress:
    try:
        return ip(text)
    except ModelError as exc:
        raise UsageError(str(exc)) from None


# ---------------------------------------------------------------- commands


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    print(f"{cfg.source}: ok ({len(cfg.applications)} application(s), {len(cfg.policies)} policy(ies))")
    return 0


def cmd_db_upgrade(rt: Runtime, args: argparse.Namespace) -> int:
    rt.store.upgrade()
    print(f"database at revision {rt.store.current_revision()}")
    return 0


def _sync(rt: Runtime, quiet: bool = False) -> int:
    with reconcile_lock(rt.config.netns):
        report = rt.reconciler.full_sync(rt.snapshot())
    if not quiet:
        what = (
            f"applied {report.plan.element_count()} element change(s)"
            if report.applied
            else "already in sync"
        )
        print(
            f"{what}; {report.mappings} mapping(s), {report.classes} class(es); "
            f"{report.flows_cut} flow(s) cut; {report.seconds * 1000:.0f} ms"
        )
    return 0


def cmd_reconcile(rt: Runtime, args: argparse.Namespace) -> int:
    if args.dry_run:
        plan = rt.reconciler.plan(rt.snapshot())
        if args.json:
            out.emit_json(out.plan_json(plan))
        else:
            print("\n".join(out.plan_lines(plan)))
        return 0
    return _sync(rt)


def cmd_enforce(rt: Runtime, args: argparse.Namespace) -> int:
    """Foreground enforcer (userseg.enforcer): store changes, resync timer, directory sync."""
    logging.basicConfig(level=logging.INFO, format="userseg: %(name)s: %(message)s", stream=sys.stderr)
    # Login -> kernel latency: a thread waiting for the netlink worker or the ingest queue
    # should not wait out the default 5 ms GIL switch interval behind a busy parser thread.
    sys.setswitchinterval(0.0005)
    enforcer = Enforcer(
        rt,
        poll=args.poll,
        directory=not args.no_directory,
        ingest=not args.no_ingest,
        say=lambda line: print(line, flush=True),
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: enforcer.stop())
    enforcer.run(once=args.once)
    return 0


def cmd_map_add(rt: Runtime, args: argparse.Namespace) -> int:
    addr = _ip_arg(args.ip)
    ttl = args.ttl if args.ttl is not None else rt.config.default_ttl
    if ttl <= 0:
        raise UsageError("--ttl must be a positive number of seconds")
    now = rt.clock.now()
    user = canonical(args.user)
    if not user or any(c in user for c in "\x00\n\r"):
        raise UsageError(f"bad user name {args.user!r}")
    m = Mapping(addr, user, "cli", now, now, now + timedelta(seconds=ttl), {"operator": args.actor})
    replaced = rt.store.put_mapping(m, audit_actor=args.actor, now=now)
    if replaced is not None and replaced.user != user:
        print(f"{addr} was mapped to {replaced.user}; now {user}")
    if not args.no_apply:
        _sync(rt)
    return 0


def cmd_map_del(rt: Runtime, args: argparse.Namespace) -> int:
    addr = _ip_arg(args.ip)
    removed = rt.store.remove_mapping(addr, audit_actor=args.actor, now=rt.clock.now())
    if removed is None:
        raise UsageError(f"no mapping for {addr}")
    if not args.no_apply:
        _sync(rt)
    return 0


def cmd_mappings(rt: Runtime, args: argparse.Namespace) -> int:
    if args.why:
        return cli_ingest.cmd_why(rt, args.why, args.json)
    user = canonical(args.user) if args.user else None
    addr = _ip_arg(args.ip) if args.ip else None
    rows = rt.store.mappings(user=user, ip=addr, active_at=rt.clock.now())
    if args.json:
        out.emit_json([mapping_doc(m) for m in rows])
        return 0
    print(
        out.table(
            ["IP", "USER", "SOURCE", "LAST SEEN", "EXPIRES"],
            [[m.ip, m.user, m.source, m.last_seen, m.expires_at] for m in rows],
        )
    )
    return 0


def cmd_simulate(rt: Runtime, args: argparse.Namespace) -> int:
    who: str | IPAddress
    try:
        who = ipaddress.ip_address(args.who)
    except ValueError:
        who = args.who
    dest, proto, port = parse_destination(args.destination)
    r = simulate(rt.snapshot(), who, dest, proto, port, rt.clock.now())
    if args.json:
        out.emit_json(
            {
                "verdict": r.action.value,
                "rule": r.rule,
                "reason": r.reason,
                "user": r.user,
                "ip": str(r.ip) if r.ip else None,
                "class": r.class_name,
                "staged": {"policy": r.staged.policy, "verdict": r.staged.action.value} if r.staged else None,
                "applicable_policies": list(r.applicable),
            }
        )
    else:
        print(f"{r.action.value.upper()} by {r.rule}: {r.reason}")
        if r.class_name:
            print(f"entitlement class {r.class_name} (policies: {', '.join(r.applicable) or 'none'})")
    return 0


def cmd_status(rt: Runtime, args: argparse.Namespace) -> int:
    snap = rt.snapshot()
    plan = rt.reconciler.plan(snap)
    info: dict[str, Any] = {
        "config": rt.config.source,
        "database": make_url(rt.config.database_url).render_as_string(hide_password=True),
        "netns": rt.config.netns,
        "in_sync": plan.is_empty,
        "pending_element_changes": plan.element_count(),
        "users": len(snap.users),
        "active_mappings": len(snap.mappings),
        "applications": len(snap.applications),
        "policies": len(snap.policies),
        "default_action": snap.default_action.value,
    }
    directory = cli_directory.directory_status(rt)
    ingest = cli_ingest.ingest_status(rt)
    service = read_status(status_path(RUN_DIR, rt.config.netns))
    if args.json:
        out.emit_json({**info, "directory": directory, "ingest": ingest, "service": service})
    else:
        _print_service_status(service)
        width = max(len(k) for k in info)
        for k, v in info.items():
            print(f"{k.replace('_', ' '):{width}}  {v}")
        if directory is not None:
            _print_directory_status(directory)
        cli_ingest.print_ingest_status(ingest)
    return 0 if plan.is_empty else 3


def _print_service_status(doc: dict[str, Any] | None) -> None:
    """What the running `userseg serve` last reported (its status file), or that none runs."""
    if doc is None:
        print("service     not running (no live `userseg serve` for this gateway)")
        return
    h = doc["health"]
    print(f"service     {h['status'].upper()} (pid {doc['pid']}, up {doc['uptime_seconds']:.0f} s)")
    for reason in h["reasons"]:
        print(f"  - {reason}")
    k = doc["kernel"]
    age = k["last_reconcile_age_seconds"]
    print(
        f"kernel      {'in step' if k['in_step'] else 'NOT in step'}: {k['mappings']} mappings, "
        f"{k['classes']} classes, last full reconcile {'never' if age is None else f'{age:g} s ago'}"
        + (f"; last error: {k['last_error']}" if k["last_error"] else "")
    )
    ingest = doc.get("ingest")
    if ingest is not None:
        print(
            f"ingest      {'running' if ingest['running'] else 'NOT running'}; queue "
            f"{ingest['queue_depth']}/{ingest['queue_capacity']}"
            + (f"; {ingest['error']}" if ingest["error"] else "")
        )
    print("loops       " + ", ".join(f"{n} {a:.1f} s ago" for n, a in doc["loops"].items()))
    reload = doc.get("last_reload")
    if reload is not None and not reload["ok"]:
        print(f"last reload REJECTED: {'; '.join(reload['errors'])}")


def _print_directory_status(d: dict[str, Any]) -> None:
    age = "never synced" if d["age_seconds"] is None else f"last sync {d['age_seconds']} s ago"
    state = "STALE" if d["stale"] else "fresh"
    extra = "; FAIL-CLOSED: every client is treated as unknown" if d["fail_closed_active"] else ""
    print(
        f"directory   {state} ({age}; max {d['max_staleness_seconds']:g} s, on stale: {d['on_stale']}){extra}"
    )
    for s in d["servers"]:
        error = f"; last error: {s['last_error']}" if s["last_error"] else ""
        print(
            f"  {s['server']}: last success {out.cell(s['last_success']) or 'never'}, "
            f"{s['users']} users, {s['groups']} groups{error}"
        )


def cmd_directory_import(rt: Runtime, args: argparse.Namespace) -> int:
    """Load users and (effective) groups from a JSON file: for labs and AD-less sites."""
    try:
        data = json.loads(Path(args.file).read_text())
        users = [
            User(
                canonical(u["name"]),
                u.get("display_name", ""),
                bool(u.get("disabled", False)),
                frozenset(canonical(g) for g in u.get("groups", [])),
            )
            for u in data["users"]
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"cannot import directory from {args.file}: {exc!r}") from None
    from userseg.model import Group

    groups = {g for u in users for g in u.groups}
    rt.store.replace_directory(users, [Group(g, g) for g in sorted(groups)], now=rt.clock.now())
    print(f"imported {len(users)} user(s), {len(groups)} group(s)")
    return 0


# ---------------------------------------------------------------- parser


class _Sub:
    """Sub-command factory that gives every sub-command the common options."""

    def __init__(self, action: Any, common: argparse.ArgumentParser) -> None:
        self._action, self._common = action, common

    def add_parser(self, name: str, **kw: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self._action.add_parser(name, parents=[self._common], **kw)
        return parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="userseg", description="Active Directory user-segmentation gateway")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file (default $USERSEG_CONFIG or /etc/userseg/userseg.toml)",
    )
    # --config is accepted before or after the command (`userseg check-config --config F`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = _Sub(p.add_subparsers(dest="command", required=True, metavar="COMMAND"), common)

    sub.add_parser("check-config", help="validate the config file")
    db = _Sub(
        sub.add_parser("db", help="database maintenance").add_subparsers(dest="db_command", required=True),
        common,
    )
    db.add_parser("upgrade", help="create or migrate the database schema")

    r = sub.add_parser("reconcile", help="bring the kernel in step with the desired state")
    r.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    r.add_argument("--json", action="store_true")

    sub.add_parser(
        "serve",
        help="run the service: directory sync, login sources, enforcement, metrics (systemd Type=notify)",
    )
    e = sub.add_parser("enforce", help="keep reconciling in the foreground (store changes, resync timer)")
    e.add_argument("--poll", type=float, default=0.2, help="seconds between store change checks")
    e.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    e.add_argument("--no-directory", action="store_true", help="do not sync from AD even if configured")
    e.add_argument("--no-ingest", action="store_true", help="do not run the login sources even if configured")

    mp = _Sub(
        sub.add_parser("map", help="manual user -> IP mappings").add_subparsers(
            dest="map_command", required=True
        ),
        common,
    )
    ma = mp.add_parser("add", help="map USER to IP")
    ma.add_argument("user")
    ma.add_argument("ip")
    ma.add_argument("--ttl", type=int, default=None, help="seconds (default: mappings.default_ttl)")
    md = mp.add_parser("del", help="remove the mapping of IP")
    md.add_argument("ip")
    for x in (ma, md):
        x.add_argument("--no-apply", action="store_true", help="only write the store")
        x.add_argument("--actor", default="cli", help=argparse.SUPPRESS)

    m = sub.add_parser("mappings", help="list active mappings (--why IP: provenance of one)")
    m.add_argument("--user")
    m.add_argument("--ip")
    m.add_argument("--why", metavar="IP", help="where the mapping of IP came from and what it replaced")
    m.add_argument("--json", action="store_true")

    s = sub.add_parser("simulate", help="can USER or IP reach DEST[:PORT][/PROTO]?")
    s.add_argument("who", metavar="USER|IP")
    s.add_argument("destination", metavar="DEST[:PORT][/PROTO]")
    s.add_argument("--json", action="store_true")

    st = sub.add_parser("status", help="health and whether the kernel matches (exit 3 if not)")
    st.add_argument("--json", action="store_true")

    cli_directory.add_parsers(sub)
    cli_ingest.add_parsers(sub)

    d = _Sub(
        sub.add_parser("directory", help="directory data").add_subparsers(dest="dir_command", required=True),
        common,
    )
    di = d.add_parser("import", help="load users and groups from a JSON file")
    di.add_argument("file")
    return p


COMMANDS: dict[str, Callable[[Runtime, argparse.Namespace], int]] = {
    "reconcile": cmd_reconcile,
    "enforce": cmd_enforce,
    "mappings": cmd_mappings,
    "simulate": cmd_simulate,
    "status": cmd_status,
    "sync": lambda rt, args: cli_directory.cmd_sync(rt, args, _sync),
    "users": cli_directory.cmd_users,
    "groups": cli_directory.cmd_groups,
    "ignore-suggestions": cli_ingest.cmd_ignore_suggestions,
}


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "check-config":
        return cmd_check_config(args)
    if args.command == "serve":
        from userseg.service.serve import serve

        return serve(args.config)
    if args.command == "test-parse":
        return cli_ingest.cmd_test_parse(args)
    if args.command == "token":
        return cli_ingest.cmd_token_new(args)
    config = load_config(args.config)
    rt = open_runtime(config)
    try:
        if args.command == "db":
            return cmd_db_upgrade(rt, args)
        if args.command == "map":
            return (cmd_map_add if args.map_command == "add" else cmd_map_del)(rt, args)
        if args.command == "directory":
            return cmd_directory_import(rt, args)
        return COMMANDS[args.command](rt, args)
    finally:
        rt.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.config is None:
        args.config = default_config_path()
    try:
        return _dispatch(args)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"userseg: config error: {line}", file=sys.stderr)
        return 2
    except (UsageError, StoreError, CompileError, ModelError) as exc:
        print(f"userseg: error: {exc}", file=sys.stderr)
        return 2
    except FirewallError as exc:
        if "Operation not permitted" in str(exc):
            print(
                "userseg: error: the kernel refused netlink access (Operation not permitted): "
                f"run as root or with CAP_NET_ADMIN; nothing was changed ({exc})",
                file=sys.stderr,
            )
            return 1
        print(f"userseg: firewall refused the change (kernel unchanged): {exc}", file=sys.stderr)
        return 1
    except IngestError as exc:
        print(f"userseg: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `userseg users | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
