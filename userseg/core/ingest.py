"""The mapping book: decides what each login event does to the user -> IP map.

Pure (no I/O, `now` passed in): the pipeline feeds it events and carries out
the effects it returns (kernel element, store rows).  Decisions depend on the
events' own times, not on their arrival order, so a shuffled or duplicated
replay of the same events converges to the same mappings:

* per IP, the latest logon (by event time; ties broken by user name) wins, and
  an event older than the latest thing seen on that IP changes nothing;
* a logoff removes the mapping only if it is at least as new as the logon;
* an IP that saw `shared_threshold` distinct users within `shared_window`
  (measured back from its newest logon) is *shared*: it keeps no user, so it
  gets only what unknown clients get, until the window has passed.

Memory is bounded by the number of live IPs: per-IP history is forgotten once
it is older than every TTL and window that could still use it.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from userseg.core.ingest_rules import (
    USER_LOGOFF_EVENT,
    IngestRules,
    canonical_user,
    check_event,
    event_ttl,
)
from userseg.events.model import EventKind, LoginEvent
from userseg.model import IPAddress, Mapping

LOGON_ID_MEMORY = 100_000  # (host, logon id) pairs remembered to place logoffs that carry no address


@dataclass(frozen=True)
class Ignored:
    category: str  # failure, ignored_user, logon_type, network, no_address, stale, older, shared, ...
    reason: str


@dataclass(frozen=True)
class Upsert:
    """Create, replace or refresh the mapping of mapping.ip."""

    mapping: Mapping
    replaced: Mapping | None  # another user's mapping this one overwrote
    kernel: bool  # the kernel element must be (re)written: new user, or the timeout gained enough
    duplicate: bool = False  # a repeat of the same logon within the dedupe window
    refresh: bool = False  # the same user again on this IP (not a new mapping)


@dataclass(frozen=True)
class Remove:
    mapping: Mapping
    reason: str  # "logoff", "shared"


@dataclass(frozen=True)
class SharedMark:
    ip: IPAddress
    users: tuple[str, ...]
    since: datetime
    last_seen: datetime


@dataclass(frozen=True)
class MarkShared:
    mark: SharedMark


@dataclass(frozen=True)
class Unshare:
    ip: IPAddress


Effect = Ignored | Upsert | Remove | MarkShared | Unshare


@dataclass
class _Address:
    """What the book remembers about one IP beyond its mapping."""

    latest: datetime | None = None  # newest logon on this IP (logoffs do not order other users)
    latest_user: str = ""
    recent: dict[str, datetime] = field(default_factory=dict)  # user -> newest logon, within the window
    logoffs: dict[str, datetime] = field(default_factory=dict)  # user -> newest honoured logoff


class MappingBook:
    def __init__(
        self,
        rules: IngestRules,
        mappings: Iterable[Mapping] = (),
        shared: Iterable[SharedMark] = (),
    ) -> None:
        self.rules = rules
        self.mappings: dict[IPAddress, Mapping] = {}
        self.shared: dict[IPAddress, SharedMark] = {m.ip: m for m in shared}
        self._addr: dict[IPAddress, _Address] = {}
        self._logon_ids: dict[tuple[str, str], tuple[IPAddress, str, int | None]] = {}
        # (expires_at, ip) of every expiry ever set; stale entries are skipped when popped.
        # expire() then costs O(expired), not O(mappings), every second at 250k mappings.
        self._expiries: list[tuple[datetime, int, int, IPAddress]] = []
        self._next_sweep: datetime | None = None
        for m in mappings:
            self.mappings[m.ip] = m
            self._expiries.append((m.expires_at, m.ip.version, int(m.ip), m.ip))
            self._addr[m.ip] = _Address(latest=m.last_seen, latest_user=m.user)
        heapq.heapify(self._expiries)
        for mark in self.shared.values():
            a = self._addr.setdefault(mark.ip, _Address())
            a.recent = dict.fromkeys(mark.users, mark.last_seen)
            a.latest = max(a.latest or mark.last_seen, mark.last_seen)

    def reconfigure(self, rules: IngestRules) -> None:
        self.rules = rules

    def resync(self, mappings: Iterable[Mapping], shared: Iterable[SharedMark]) -> None:
        """Adopt the store's mappings after someone else changed them (CLI, directory)."""
        self.mappings = {m.ip: m for m in mappings}
        self.shared = {s.ip: s for s in shared}
        self._expiries = [(m.expires_at, m.ip.version, int(m.ip), m.ip) for m in self.mappings.values()]
        heapq.heapify(self._expiries)
        for m in self.mappings.values():
            a = self._addr.setdefault(m.ip, _Address())
            if a.latest is None or m.last_seen > a.latest:
                a.latest, a.latest_user = m.last_seen, m.user

    # ------------------------------------------------------------------ events

    def apply(self, event: LoginEvent, now: datetime) -> list[Effect]:
        rules = self.rules.for_source(event.source)
        skew = now + timedelta(seconds=self.rules.max_clock_skew)
        if event.time > skew:
            event = replace(event, time=now)  # a DC clock far ahead must not pin a mapping for hours
        why = check_event(rules, event, now)
        if why is not None:
            return [Ignored(*why)]
        if event.kind is EventKind.LOGOFF:
            return self._logoff(event, rules.logoff_logon_types)
        assert event.ip is not None  # check_event ignores logons without an address
        return self._logon(event, event.ip, event_ttl(rules, event), now)

    def _logon(self, event: LoginEvent, ip: IPAddress, ttl: int, now: datetime) -> list[Effect]:
        user = canonical_user(event)
        t = event.time
        a = self._addr.setdefault(ip, _Address())
        if event.logon_id and event.host:
            self._remember_logon_id(event, ip, user)
        effects: list[Effect] = []
        effects += self._note_recent(a, ip, user, t)
        current = self.mappings.get(ip)
        if current is not None and current.expires_at <= now:
            current = None  # timed out in the kernel already; the next expire() forgets it
        if (
            a.latest is not None
            and (t, user) < (a.latest, a.latest_user)
            and not (current is not None and current.user == user)
        ):
            who = a.latest_user or "a logoff"
            return [*effects, Ignored("older", f"{who} at {a.latest.isoformat()} is newer on {ip}")]
        if a.latest is None or (t, user) > (a.latest, a.latest_user):
            a.latest, a.latest_user = t, user
        off = a.logoffs.get(user)
        if off is not None and off >= t:
            # This logon superseded whoever held the IP before, then ended: in event order the
            # IP is unmapped now, whichever order the three events arrived in.
            if current is not None and current.user != user and current.last_seen < t:
                del self.mappings[ip]
                effects.append(Remove(current, "superseded"))
            return [
                *effects,
                Ignored("older", f"{user} logged off {ip} at {off.isoformat()}, after this logon"),
            ]
        if ip in self.shared:
            return [*effects, Ignored("shared", f"{ip} is shared ({', '.join(self.shared[ip].users)})")]
        expires = t + timedelta(seconds=ttl)
        if current is not None and current.user == user:
            return [*effects, self._refresh(current, event, expires)]
        provenance = _provenance(event)
        if current is not None:
            provenance = {**provenance, "replaced": _describe(current)}
        mapping = Mapping(ip, user, event.source, t, t, expires, provenance)
        self.mappings[ip] = mapping
        heapq.heappush(self._expiries, (expires, ip.version, int(ip), ip))
        return [*effects, Upsert(mapping, current, True)]

    def _refresh(self, current: Mapping, event: LoginEvent, expires: datetime) -> Effect:
        """Same user again: move last_seen; move the expiry only in steps of kernel_refresh.

        The mapping's expiry is exactly the kernel element's timeout (the reconciler's
        diff compares them), so re-arming it costs a kernel write; a storm of refreshes
        therefore touches only the store until the expiry would gain a whole step.
        The provenance names the event that made or last extended the mapping.
        """
        t = event.time
        last_seen = current.last_seen
        duplicate = abs((t - last_seen).total_seconds()) <= self.rules.dedupe_window
        gain = expires - current.expires_at >= timedelta(seconds=self.rules.kernel_refresh)
        if t <= last_seen and not gain:
            return Ignored("duplicate" if duplicate else "older", "nothing newer than the mapping")
        if gain:
            mapping = Mapping(
                current.ip,
                current.user,
                event.source if t >= last_seen else current.source,
                current.first_seen,
                max(t, last_seen),
                expires,
                _keep_replaced(current, _provenance(event)) if t >= last_seen else current.provenance,
            )
            heapq.heappush(self._expiries, (expires, mapping.ip.version, int(mapping.ip), mapping.ip))
        else:
            mapping = Mapping(
                current.ip,
                current.user,
                current.source,
                current.first_seen,
                t,
                current.expires_at,
                current.provenance,
            )
        self.mappings[current.ip] = mapping
        return Upsert(mapping, None, gain, duplicate, refresh=True)

    def _note_recent(self, a: _Address, ip: IPAddress, user: str, t: datetime) -> list[Effect]:
        """Track distinct users per IP; mark or clear `shared` (returns those effects)."""
        recent = a.recent
        if len(recent) <= 1 and (not recent or user in recent) and ip not in self.shared:
            if recent.get(user, t) <= t:  # the common case: one user on this IP, nothing to decide
                recent[user] = t
            return []
        window = timedelta(seconds=self.rules.shared_window)
        if a.recent.get(user, t) <= t:
            a.recent[user] = t
        newest = max(a.recent.values())
        a.recent = {u: s for u, s in a.recent.items() if s > newest - window}
        users = tuple(sorted(a.recent))
        effects: list[Effect] = []
        mark = self.shared.get(ip)
        if len(users) >= self.rules.shared_threshold:
            if mark is None or mark.users != users or mark.last_seen != newest:
                since = mark.since if mark is not None else t
                mark = SharedMark(ip, users, since, newest)
                self.shared[ip] = mark
                effects.append(MarkShared(mark))
            current = self.mappings.pop(ip, None)
            if current is not None:
                effects.append(Remove(current, "shared"))
        elif mark is not None:
            del self.shared[ip]
            effects.append(Unshare(ip))
        return effects

    def _logoff(self, event: LoginEvent, honoured_types: frozenset[int]) -> list[Effect]:
        user = canonical_user(event)
        ip = event.ip
        logon_type = event.logon_type
        if ip is None:
            found = self._logon_ids.get((event.host.lower(), event.logon_id)) if event.logon_id else None
            if found is None or found[1] != user:
                return [Ignored("no_address", "logoff without a client address or a matching logon id")]
            ip, _, remembered_type = found
            logon_type = logon_type if logon_type is not None else remembered_type
        if event.event_id not in (None, USER_LOGOFF_EVENT) and logon_type not in honoured_types:
            return [Ignored("logoff_type", f"logoff of a type-{logon_type} session is not honoured")]
        a = self._addr.setdefault(ip, _Address())
        t = event.time
        if a.logoffs.get(user, t) <= t:
            a.logoffs[user] = t
        current = self.mappings.get(ip)
        if current is None or current.user != user:
            return [Ignored("older", f"{ip} is not mapped to {user}")]
        if t < current.last_seen:
            return [Ignored("older", f"{user} logged on to {ip} again at {current.last_seen.isoformat()}")]
        del self.mappings[ip]
        return [Remove(current, "logoff")]

    def _remember_logon_id(self, event: LoginEvent, ip: IPAddress, user: str) -> None:
        if len(self._logon_ids) >= LOGON_ID_MEMORY:
            del self._logon_ids[next(iter(self._logon_ids))]  # oldest first (insertion order)
        self._logon_ids[(event.host.lower(), event.logon_id)] = (ip, user, event.logon_type)

    # ------------------------------------------------------------------ time

    def expire(self, now: datetime) -> list[Remove | Unshare]:
        """Drop mappings past their expiry, shared marks past their window, and history
        nothing can use any more (so memory follows the live IPs, not all IPs ever seen)."""
        effects: list[Remove | Unshare] = []
        heap = self._expiries
        while heap and heap[0][0] <= now:
            at, _, _, addr = heapq.heappop(heap)
            m = self.mappings.get(addr)
            if m is not None and m.expires_at == at:
                del self.mappings[addr]
                effects.append(Remove(m, "expired"))
        if self._next_sweep is not None and now < self._next_sweep:
            return effects
        # The rest walks everything: once a minute is plenty for marks and history.
        self._next_sweep = now + timedelta(seconds=60)
        if len(heap) > 4 * len(self.mappings) + 1024:  # re-arms left many stale entries
            self._expiries = [(m.expires_at, m.ip.version, int(m.ip), m.ip) for m in self.mappings.values()]
            heapq.heapify(self._expiries)
        window = timedelta(seconds=self.rules.shared_window)
        for mark in [s for s in self.shared.values() if s.last_seen + window <= now]:
            del self.shared[mark.ip]
            effects.append(Unshare(mark.ip))
        horizon = now - timedelta(seconds=self._longest_memory())
        for ip in [ip for ip, a in self._addr.items() if ip not in self.mappings and _older(a, horizon)]:
            del self._addr[ip]
        return effects

    def _longest_memory(self) -> int:
        ttls = [r.ttl for r in self.rules.sources.values()] + [self.rules.default.ttl]
        return max([*ttls, self.rules.shared_window])


def _older(a: _Address, horizon: datetime) -> bool:
    return a.latest is None or a.latest < horizon


def _provenance(event: LoginEvent) -> dict[str, str]:
    p = {"source": event.source, "time": event.time.isoformat(), "kind": event.kind.value}
    if event.event_id is not None:
        p["event_id"] = str(event.event_id)
    if event.logon_type is not None:
        p["logon_type"] = str(event.logon_type)
    if event.host:
        p["host"] = event.host
    if event.domain:
        p["domain"] = event.domain
    if event.logon_id:
        p["logon_id"] = event.logon_id
    for k, v in event.detail:
        p.setdefault(k, v)
    return p


def _keep_replaced(current: Mapping, provenance: dict[str, str]) -> dict[str, str]:
    """A refresh keeps what the original logon replaced: `--why` must still answer that."""
    replaced = current.provenance.get("replaced")
    return {**provenance, "replaced": replaced} if replaced else provenance


def _describe(m: Mapping) -> str:
    return f"{m.user} (via {m.source}, last seen {m.last_seen.isoformat()})"
