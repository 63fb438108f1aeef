"""Keeps the kernel in step with the desired state (Calico Felix's pattern).

* Full sync: compile the snapshot, read the kernel back, diff, apply.  The
  first sync of a process reads before it writes and never flushes, so a
  restart leaves enforcement untouched where nothing changed.
* Fast path: one mapping change is one map element (delete+add when it
  changes, also when only the user changes: the element's comment names
  the user), applied without recompiling, as long as the user's class exists.
* Revocation: after access shrinks, tracked flows of the affected sources that
  the new state would refuse are deleted, so established connections die while
  still-allowed ones survive.
* On any apply error the state is marked dirty; the next call does a full
  sync, which re-reads the kernel (the failed transaction changed nothing).
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address
from time import perf_counter

from userseg.core.compile import DesiredState, MapTarget, compile_state
from userseg.core.diff import diff
from userseg.core.render import CLIENTS, CLIENTS_IF, DENY, FORWARD, INFRA, POLICE, VMAP_KIND, render
from userseg.core.simulate import evaluate
from userseg.core.table import AddElements, DeleteElements, DeleteTable, MapElement, Plan, SetRules
from userseg.core.usermap import USER_MAP, element_comment
from userseg.model import Action, IPAddress, Snapshot
from userseg.ports import Clock, ConnectionTable, Firewall, Flow

log = logging.getLogger(__name__)


@dataclass
class SyncReport:
    plan: Plan
    applied: bool
    seconds: float
    flows_cut: int = 0
    classes: int = 0
    mappings: int = 0


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a full sync builds its state.

    Compiling 250k mappings allocates ~1M small acyclic objects; every allocation
    burst triggers generation scans over the whole heap (the snapshot included),
    which measured as 40% of the compute time.  Nothing built here is cyclic
    garbage, so pausing loses nothing; the collector resumes afterwards.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Reconciler:
    def __init__(
        self,
        firewall: Firewall,
        clock: Clock,
        connections: ConnectionTable | None = None,
        local_addresses: Callable[[], set[IPAddress]] | None = None,
    ) -> None:
        self._fw = firewall
        self._clock = clock
        self._conns = connections
        self._local = local_addresses or (lambda: set())
        self._lock = threading.RLock()
        self.desired: DesiredState | None = None
        self.dirty = True

    @property
    def lock(self) -> threading.RLock:
        """Held by every kernel write; a caller that must read its snapshot and sync it
        without a fast-path change slipping in between holds it around both."""
        return self._lock

    # ------------------------------------------------------------ full sync

    def plan(self, snapshot: Snapshot) -> Plan:
        """Dry run: what a full sync would do right now (reads, never writes)."""
        now = self._clock.now()
        return diff(render(compile_state(snapshot, now)), self._fw.read(), now)

    def full_sync(self, snapshot: Snapshot) -> SyncReport:
        with self._lock:
            start = perf_counter()
            now = self._clock.now()
            with gc_paused():
                desired = compile_state(snapshot, now)  # CompileError: nothing is touched
                spec = render(desired)
                actual = self._fw.read()
                # Timeouts count from the plan's `now`: a 250k read takes seconds, and timeouts
                # reckoned from before it would outlast their expiries by that much (beyond the
                # diff's tolerance, so the next sync would rewrite every replaced element again).
                plan = diff(spec, actual, self._clock.now())
            if not plan.is_empty:
                try:
                    self._fw.apply(plan)
                except Exception:
                    self.dirty = True
                    raise
            self.desired = desired
            self.dirty = False
            cut = self._revoke_after_full(plan, desired)
            return SyncReport(
                plan,
                not plan.is_empty,
                perf_counter() - start,
                cut,
                len(desired.classes),
                len(desired.mappings),
            )

    # ------------------------------------------------------------ fast path

    def set_mapping(self, ip: IPAddress, user: str, expires_at: datetime) -> bool:
        """Map ip -> user's class with one element; False if a full sync is needed
        (no desired state yet, dirty, or the user has no class instantiated)."""
        return self.set_mappings([(ip, (user, expires_at))])

    def remove_mapping(self, ip: IPAddress) -> bool:
        return self.set_mappings([(ip, None)])

    def set_mappings(self, changes: Iterable[tuple[IPAddress, tuple[str, datetime] | None]]) -> bool:
        """Apply many mapping changes (ip -> (user, expires_at), or None to unmap) as ONE
        transaction: the login pipeline hands over a whole batch, and every element
        transaction on a verdict map costs the kernel a validation pass over the table.

        Returns False, changing nothing, if any change needs a full sync (no desired
        state yet, dirty, or a user without an instantiated class).
        """
        with self._lock:
            desired = self.desired
            if desired is None or self.dirty:
                return False
            targets: dict[IPAddress, MapTarget | None] = {}
            for ip, change in changes:
                if change is None:
                    targets[ip] = None
                    continue
                user, expires_at = change
                cname = desired.user_class.get(user)
                if cname is None:
                    if user in desired.disabled_users:
                        targets[ip] = None  # as a full sync would: the IP is an unknown client
                        continue
                    # Not in the directory: authenticated, no groups - the same class for every
                    # such account not named by a policy (as compile_state decides).
                    cname = desired.groupless_class
                    if user in desired.named_users or cname not in desired.classes:
                        return False
                targets[ip] = MapTarget(user, cname, expires_at)
            return self._change_many(targets)

    def _change_many(self, targets: dict[IPAddress, MapTarget | None]) -> bool:
        assert self.desired is not None
        mappings = self.desired.mappings
        assert isinstance(mappings, dict)
        deletes: dict[int, list[MapElement]] = {4: [], 6: []}
        adds: dict[int, list[MapElement]] = {4: [], 6: []}
        cut: list[IPAddress] = []
        now = self._clock.now()
        for ip, target in targets.items():
            current = mappings.get(ip)
            if current is not None and current.expires_at <= now:
                current = None  # the kernel timed the element out: deleting it would fail (ENOENT)
            old = _element(ip, current) if current else None
            new = _element(ip, target) if target else None
            if old == new:
                continue
            if old is not None:
                deletes[ip.version].append(old)
                if new is None or new.target != old.target:
                    cut.append(ip)
            if new is not None:
                adds[ip.version].append(new)
        ops: list[AddElements | DeleteElements] = []
        for version in (4, 6):
            if deletes[version]:
                ops.append(DeleteElements(USER_MAP[version], VMAP_KIND[version], tuple(deletes[version])))
        for version in (4, 6):
            if adds[version]:
                ops.append(AddElements(USER_MAP[version], VMAP_KIND[version], tuple(adds[version])))
        if not ops:
            for ip, target in targets.items():
                if target is None:
                    mappings.pop(ip, None)
            return True
        try:
            self._fw.apply(Plan(now=now, main=tuple(ops)))
        except Exception:
            self.dirty = True
            raise
        for ip, target in targets.items():
            if target is None:
                mappings.pop(ip, None)
            else:
                mappings[ip] = target
        if cut:
            self._cut_forbidden(cut)
        return True

    # ------------------------------------------------------------ revocation

    def _revoke_after_full(self, plan: Plan, desired: DesiredState) -> int:
        if self._conns is None or plan.is_empty:
            return 0
        affected = affected_sources(plan, desired)
        if affected is EVERYONE:
            return self._cut_forbidden(None)
        assert isinstance(affected, set)
        return self._cut_forbidden(sorted(affected, key=str)) if affected else 0

    def _cut_forbidden(self, sources: Iterable[IPAddress] | None) -> int:
        """Delete tracked flows from these sources (None: all) the current state refuses."""
        if self._conns is None or self.desired is None:
            return 0
        desired = self.desired
        local = self._local()
        policed = desired.gateway.client_networks
        candidates = set(desired.mappings) | ({ip for ip in sources} if sources is not None else set())
        doomed: list[Flow] = []
        for flow in self._conns.flows_from(sources):
            if flow.daddr in local:
                continue  # traffic to the gateway itself is not forwarded, so not ours to police
            if (
                sources is None
                and flow.saddr not in candidates
                and not any(n.contains(flow.saddr) for n in policed)
            ):
                continue
            if evaluate(desired, flow.saddr, flow.daddr, flow.proto, flow.dport) is not Action.ALLOW:
                doomed.append(flow)
        if not doomed:
            return 0
        cut = self._conns.delete(doomed)
        log.info("revocation cut %d tracked flow(s)", cut)
        return cut


def _element(ip: IPAddress, target: MapTarget) -> MapElement:
    """The kernel element of a mapping, exactly as render() lays it out (comment included),
    so a fast-path change and the next full sync agree element for element."""
    return MapElement(int(ip), target.class_name, target.expires_at, element_comment(target.user))


class _Everyone:
    """Marker: the change may shrink access for any client (sweep every policed flow)."""


EVERYONE = _Everyone()
PER_SOURCE_SWEEP_LIMIT = 256


def affected_sources(plan: Plan, desired: DesiredState) -> set[IPAddress] | _Everyone:
    """Which client addresses may have lost access through this plan.

    Derived from the plan itself, so a restart whose plan is empty sweeps nothing,
    and a change sweeps exactly the sources whose element or class shrank.
    """
    shrunk_classes: set[str] = set()
    sources: set[IPAddress] = set()
    for op in plan.ops():
        if isinstance(op, DeleteTable):
            return EVERYONE
        if isinstance(op, SetRules):
            if op.chain in (FORWARD, POLICE, DENY):
                return EVERYONE
            if op.chain in desired.classes and op not in plan.prelude:
                shrunk_classes.add(op.chain)  # an existing class chain got other rules
            continue
        if not isinstance(op, AddElements | DeleteElements):
            continue
        if op.set_name in USER_MAP.values():
            # Deleted: the IP lost its class.  Added: it left the unknown class, whose
            # rules may have allowed what its user's class does not.
            sources.update(_address(e.addr, op.kind.version) for e in op.elements)  # type: ignore[attr-defined]
            continue
        if op.set_name in INFRA.values():
            if isinstance(op, DeleteElements):
                return EVERYONE
            continue
        if op.set_name == CLIENTS_IF or op.set_name in CLIENTS.values():
            if isinstance(op, AddElements) and op not in plan.bulk:
                return EVERYONE  # newly policed clients: their flows were never checked
            continue
        cls = desired.classes.get(op.set_name.rsplit("_", 1)[0])
        if cls is None or op.set_name.endswith(("_s4", "_s6")):
            continue
        narrows = (
            isinstance(op, DeleteElements)
            if cls.match_action is Action.ALLOW
            else isinstance(op, AddElements)
        )
        if narrows:
            shrunk_classes.add(cls.name)
    if desired.unknown_class in shrunk_classes:
        return EVERYONE
    if shrunk_classes:
        sources.update(ip for ip, t in desired.mappings.items() if t.class_name in shrunk_classes)
    # One full dump beats thousands of per-source dumps (each a kernel walk).
    return EVERYONE if len(sources) > PER_SOURCE_SWEEP_LIMIT else sources


def _address(value: int, version: int | None) -> IPAddress:
    return IPv4Address(value) if version == 4 else IPv6Address(value)
