"""`userseg sync`, `userseg users`, `userseg groups`: the directory as the gateway sees it.

`sync` talks to AD through the directory adapter built by the runtime (the
CLI itself never speaks LDAP) and then reconciles, so an operator who just
changed a group in AD can make it effective without waiting.  `users` and
`groups` read only the store: they work while the DC is down, and they show
what is enforced, which is what matters when someone asks "why can't I?".
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from userseg import cli_output as out
from userseg.core.access import access_by_application
from userseg.directory.model import DirectoryUser
from userseg.directory.sync import SyncOutcome, staleness
from userseg.model import SubjectKind, canonical

if TYPE_CHECKING:
    from userseg.runtime import Runtime

EXIT_SYNC_FAILED = 4  # the directory could not be read; nothing was changed


class _Progress:
    """Page counts on stderr: rewritten in place on a terminal, one line a second otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, what: str, count: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            sys.stderr.write(f"\rreading {what}: {count}    ")
            sys.stderr.flush()
        elif now - self.last >= 1.0:
            print(f"reading {what}: {count}", file=sys.stderr, flush=True)
            self.last = now

    def done(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def outcome_doc(o: SyncOutcome) -> dict[str, Any]:
    return {
        "kind": o.kind,
        "ok": o.ok,
        "server": o.server,
        "error": o.error,
        "users": o.users,
        "groups": o.groups,
        "changed": o.changed,
        "entries": o.entries,
        "lost_accounts": list(o.lost),
        "removed_mappings": o.removed_mappings,
        "seconds": round(o.seconds, 3),
        "problems": list(o.problems),
    }


def cmd_sync(rt: Runtime, args: argparse.Namespace, reconcile: Any) -> int:
    progress = _Progress(not args.json and not args.quiet)
    outcome = rt.directory_sync().run(
        full=args.full, progress=progress, allow_mass_delete=args.allow_mass_delete
    )
    progress.done()
    if args.json:
        out.emit_json(outcome_doc(outcome))
    if not outcome.ok:
        if not args.json:
            print(f"userseg: {outcome.kind} sync failed; nothing changed: {outcome.error}", file=sys.stderr)
        return EXIT_SYNC_FAILED
    if not args.json:
        print(
            f"{outcome.kind} sync from {outcome.server}: {outcome.users} user(s), {outcome.groups} "
            f"group(s), {outcome.entries} entr{'y' if outcome.entries == 1 else 'ies'} read, "
            f"{'changes stored' if outcome.changed else 'no change'} in {outcome.seconds:.2f} s"
        )
        if outcome.lost:
            print(
                f"accounts deleted or disabled: {', '.join(outcome.lost)}; "
                f"{outcome.removed_mappings} mapping(s) removed"
            )
        for problem in outcome.problems:
            print(f"warning: {problem}", file=sys.stderr)
    if not args.no_apply and (outcome.changed or outcome.removed_mappings):
        return int(reconcile(rt, quiet=args.json))
    return 0


def _image_user(rt: Runtime, name: str) -> DirectoryUser | None:
    image, _ = rt.store.directory_image()
    return next((u for u in image.users.values() if canonical(u.sam) == name), None)


def cmd_users(rt: Runtime, args: argparse.Namespace) -> int:
    now = rt.clock.now()
    if args.name is None:
        users = rt.store.users()
        ips: dict[str, list[str]] = {}
        for m in rt.store.mappings(active_at=now):
            ips.setdefault(m.user, []).append(str(m.ip))
        if args.json:
            out.emit_json(
                [
                    {
                        "name": u.name,
                        "display_name": u.display_name,
                        "disabled": u.disabled,
                        "groups": sorted(u.groups),
                        "ips": ips.get(u.name, []),
                    }
                    for u in sorted(users.values(), key=lambda u: u.name)
                ]
            )
            return 0
        rows = [
            [
                u.name,
                u.display_name,
                "yes" if u.disabled else "",
                len(u.groups),
                " ".join(ips.get(u.name, [])),
            ]
            for u in sorted(users.values(), key=lambda u: u.name)
        ]
        print(out.table(["USER", "DISPLAY NAME", "DISABLED", "GROUPS", "IPS"], rows))
        return 0
    name = canonical(args.name)
    user = rt.store.user(name)
    if user is None:
        raise out.UsageError(f"no user {args.name!r} in the directory (run `userseg sync` if it is new)")
    mappings = rt.store.mappings(user=name, active_at=now)
    snap = rt.snapshot()
    access = access_by_application(snap, None if user.disabled else user)
    raw = _image_user(rt, name)
    doc: dict[str, Any] = {
        "name": user.name,
        "display_name": user.display_name,
        "disabled": user.disabled,
        "upn": raw.upn if raw else None,
        "mail": raw.mail if raw else None,
        "sid": raw.sid if raw else None,
        "dn": raw.dn if raw else None,
        "groups": sorted(user.groups),
        "ips": [
            {"ip": str(m.ip), "source": m.source, "last_seen": m.last_seen, "expires_at": m.expires_at}
            for m in mappings
        ],
        "access": [
            {
                "application": a.application,
                "verdict": a.verdict,
                "decided_by": [{"rule": d.rule, "action": d.action.value} for d in a.decisions],
                "staged": list(a.staged),
            }
            for a in access
        ],
    }
    if args.json:
        out.emit_json(doc)
        return 0
    for key in ("name", "display_name", "upn", "mail", "sid", "dn"):
        if doc[key]:
            print(f"{key.replace('_', ' '):12}  {doc[key]}")
    print(f"{'disabled':12}  {'yes (its IPs are unknown clients)' if user.disabled else 'no'}")
    print(f"{'groups':12}  {', '.join(sorted(user.groups)) or '(none)'}")
    print(f"{'ips':12}  {', '.join(str(m.ip) for m in mappings) or '(not logged on)'}")
    print()
    rows = [
        [
            a.application,
            a.verdict.upper(),
            "; ".join(f"{d.action.value} by {d.rule}" for d in a.decisions),
            ", ".join(a.staged),
        ]
        for a in access
    ]
    print(out.table(["APPLICATION", "ACCESS", "DECIDED BY", "STAGED"], rows))
    return 0


def cmd_groups(rt: Runtime, args: argparse.Namespace) -> int:
    groups = rt.store.groups()
    members: dict[str, int] = {}
    for u in rt.store.users().values():
        for g in u.groups:
            members[g] = members.get(g, 0) + 1
    policies: dict[str, list[str]] = {}
    for p in rt.snapshot().ordered_policies():
        for s in p.subjects:
            if s.kind is SubjectKind.GROUP:
                policies.setdefault(s.name, []).append(p.name)
    ordered = sorted(groups.values(), key=lambda g: g.name)
    docs = [
        {
            "name": g.name,
            "display_name": g.display_name,
            "dn": g.dn,
            "members": members.get(g.name, 0),
            "policies": policies.get(g.name, []),
        }
        for g in ordered
    ]
    missing = sorted(set(policies) - set(groups))
    if args.json:
        out.emit_json({"groups": docs, "policy_groups_not_in_directory": missing})
        return 0
    print(
        out.table(
            ["GROUP", "MEMBERS", "POLICIES", "DN"],
            [[g.name, members.get(g.name, 0), ", ".join(policies.get(g.name, [])), g.dn] for g in ordered],
        )
    )
    for name in missing:
        print(f"warning: policies name group {name!r}, which is not in the directory", file=sys.stderr)
    return 0


def directory_status(rt: Runtime) -> dict[str, Any] | None:
    """The directory part of `userseg status`; None when no [directory] is configured."""
    settings = rt.config.directory
    if settings is None:
        return None
    statuses = rt.store.directory_status()
    st = staleness(settings, statuses, rt.clock.now())
    return {
        "last_success": st.last_success,
        "age_seconds": round(st.age.total_seconds()) if st.age is not None else None,
        "stale": st.stale,
        "max_staleness_seconds": settings.max_staleness,
        "on_stale": settings.on_stale.value,
        "fail_closed_active": st.fail_closed,
        "servers": [
            {
                "server": s.server,
                "last_attempt": s.last_attempt_at,
                "last_success": s.last_success_at,
                "last_kind": s.last_kind,
                "last_error": s.last_error,
                "users": s.users,
                "groups": s.groups,
                "milliseconds": s.milliseconds,
            }
            for s in statuses
        ],
    }


def add_parsers(sub: Any) -> None:
    sy = sub.add_parser("sync", help="read users and groups from AD now (incremental; --full for all)")
    sy.add_argument("--full", action="store_true", help="read everything, not only changes")
    sy.add_argument(
        "--allow-mass-delete",
        action="store_true",
        help="commit even if more than directory.max_delete_fraction of the users would disappear",
    )
    sy.add_argument("--no-apply", action="store_true", help="only write the store, do not reconcile")
    sy.add_argument("--quiet", action="store_true", help="no progress display")
    sy.add_argument("--json", action="store_true")
    us = sub.add_parser("users", help="users; with NAME: groups, IPs and access per application")
    us.add_argument("name", nargs="?", metavar="NAME")
    us.add_argument("--json", action="store_true")
    gr = sub.add_parser("groups", help="groups with member counts and the policies that name them")
    gr.add_argument("--json", action="store_true")
