"""The mapping rules an admin configures per login source, and the checks that need no state.

Kept apart from the stateful book (`core/ingest.py`) so that `userseg test-parse`
can explain, line by line, why an event would be ignored without running the
pipeline, and so the rules can be unit-tested as plain functions.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from userseg.events.model import EventKind, LoginEvent
from userseg.model import AddressRange, IPAddress, canonical

DEFAULT_TTL = 45 * 60
DEFAULT_IGNORE_USERS = ("*$", "krbtgt", "ANONYMOUS LOGON")
# 0 system, 4 batch, 5 service: never a person at a keyboard.
DEFAULT_IGNORE_LOGON_TYPES = frozenset({0, 4, 5})
# Logoffs (4634) are honoured only for sessions a person ends; a type-3 logoff on a
# DC is the end of one SMB/LDAP session, not of the user's presence at the machine.
DEFAULT_LOGOFF_LOGON_TYPES = frozenset({2, 7, 10, 11})
USER_LOGOFF_EVENT = 4647  # "user initiated logoff": always a person


@dataclass(frozen=True)
class SourceRules:
    """What one source's events may do; defaults are the product's documented defaults."""

    name: str
    ttl: int = DEFAULT_TTL  # seconds a mapping lives after its latest logon event
    ignore_users: tuple[str, ...] = DEFAULT_IGNORE_USERS
    ignore_logon_types: frozenset[int] = DEFAULT_IGNORE_LOGON_TYPES
    logoff_logon_types: frozenset[int] = DEFAULT_LOGOFF_LOGON_TYPES
    include_networks: tuple[AddressRange, ...] = ()  # empty: every address
    exclude_networks: tuple[AddressRange, ...] = ()
    _ignore_re: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)
    _verdicts: dict[tuple[str, str], str | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ignore_re", ignore_pattern(self.ignore_users))

    def ignored_user(self, event: LoginEvent) -> str | None:
        """The glob that makes this account ignored, or None (memoised: accounts repeat)."""
        key = (event.user, event.domain)
        verdicts = self._verdicts
        if key in verdicts:
            return verdicts[key]
        found = None
        if self._ignore_re is not None:
            for form in account_forms(event.user, event.domain):
                if self._ignore_re.fullmatch(form):
                    found = next(g for g in self.ignore_users if _glob_matches(g, form))
                    break
        if len(verdicts) >= 100_000:
            verdicts.clear()  # bounded; refilled from the accounts actually seen
        verdicts[key] = found
        return found


@dataclass(frozen=True)
class IngestRules:
    """Rules shared by every source, plus each source's own."""

    sources: Mapping[str, SourceRules]
    shared_threshold: int = 3  # distinct users on one IP within shared_window -> shared
    shared_window: int = 600  # seconds
    dedupe_window: int = 2  # seconds: a repeat within this is a duplicate (Samba logs a kinit twice)
    max_clock_skew: int = 300  # seconds an event may lie in the future (later times are clamped)
    kernel_refresh: int = 60  # a refresh re-arms the kernel timeout only when it gains this much
    default: SourceRules = field(default_factory=lambda: SourceRules("default"))

    def for_source(self, name: str) -> SourceRules:
        return self.sources.get(name) or self.default


def account_forms(user: str, domain: str) -> tuple[str, ...]:
    """The spellings an ignore glob may be written against: user, DOMAIN\\user, user@domain."""
    if not domain:
        return (user.lower(),)
    u, d = user.lower(), domain.lower()
    return (u, f"{d}\\{u}", f"{u}@{d}")


def ignore_pattern(globs: Sequence[str]) -> re.Pattern[str] | None:
    """One compiled regex for all globs (case-insensitive): one match call per event at 20k/s."""
    if not globs:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(g.lower())[:-2]})" for g in globs), re.S)


def _glob_matches(glob: str, form: str) -> bool:
    return fnmatch.fnmatchcase(form, glob.lower())


def canonical_user(event: LoginEvent) -> str:
    """The directory name a mapping is made for (sAMAccountName, lower case)."""
    return canonical(event.user)


def check_event(rules: SourceRules, event: LoginEvent, now: datetime) -> tuple[str, str] | None:
    """Stateless reasons to ignore an event, as (category, reason); None when it may proceed."""
    if event.kind is EventKind.FAILURE:
        return ("failure", f"failed logon ({_status(event)}) never maps")
    if not event.user.strip():
        return ("no_user", "no account name")
    glob = rules.ignored_user(event)
    if glob is not None:
        return ("ignored_user", f"account {event.user!r} matches ignore glob {glob!r}")
    if (
        event.kind is EventKind.LOGON
        and event.logon_type is not None
        and event.logon_type in rules.ignore_logon_types
    ):
        return ("logon_type", f"logon type {event.logon_type} is ignored for source {rules.name!r}")
    if event.ip is not None:
        reason = network_reason(rules, event.ip)
        if reason is not None:
            return ("network", reason)
    elif event.kind is EventKind.LOGON:
        return ("no_address", "logon without a client address")
    if event.kind is EventKind.LOGON and event.time + timedelta(seconds=event_ttl(rules, event)) <= now:
        return ("stale", f"event from {event.time.isoformat()} had expired before it arrived")
    return None


def network_reason(rules: SourceRules, ip: IPAddress) -> str | None:
    for net in rules.exclude_networks:
        if net.contains(ip):
            return f"{ip} is in excluded network {net}"
    if rules.include_networks and not any(n.contains(ip) for n in rules.include_networks):
        return f"{ip} is outside the client networks of source {rules.name!r}"
    return None


def event_ttl(rules: SourceRules, event: LoginEvent) -> int:
    return event.ttl if event.ttl is not None else rules.ttl


def _status(event: LoginEvent) -> str:
    for k, v in event.detail:
        if k == "status":
            return v
    return f"event {event.event_id}" if event.event_id is not None else "failure"
