"""Health and readiness, decided from facts (pure: the caller gathers them, passes `now`).

Why a separate, pure module: /healthz, /readyz, `userseg status`, the
WATCHDOG=1 pings and the metrics must all tell the same story, and the rules
are easier to test as a function of facts than through a running service.

Semantics (documented in the README):
- **live** (/healthz 200): every loop of the service made progress within its
  deadline.  A stuck loop makes the service not live; systemd's watchdog then
  restarts it (we stop pinging), which is the right fix for a hang.
- **ready** (/readyz 200): live, start-up finished (kernel read back, store
  loaded, first directory sync attempted, first reconcile applied) and the last
  reconcile succeeded, so the kernel holds the desired state.
- **degraded**: ready, but serving from older data (every DC unreachable at the
  last attempt, directory past max_staleness, database rebuilt and waiting for
  AD, a source that failed, events dropped recently).  /readyz answers 200 with
  the reasons, or 503 when asked with `?strict=1`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from enum import Enum


class Condition(Enum):
    STARTING = "starting"
    OK = "ok"
    DEGRADED = "degraded"
    FAILING = "failing"  # not ready: kernel not in step, or a loop is stuck


@dataclass(frozen=True)
class HealthFacts:
    started: bool
    stuck_loops: tuple[str, ...] = ()
    reconcile_error: str | None = None  # the last reconcile failed with this
    degraded: tuple[str, ...] = ()  # reasons gathered by the caller


@dataclass(frozen=True)
class Health:
    condition: Condition
    live: bool
    ready: bool
    reasons: tuple[str, ...]

    def doc(self) -> dict[str, object]:
        return {
            "status": self.condition.value,
            "live": self.live,
            "ready": self.ready,
            "reasons": list(self.reasons),
        }


def assess(f: HealthFacts) -> Health:
    live = not f.stuck_loops
    reasons = [f"loop not progressing: {name}" for name in f.stuck_loops]
    if not f.started:
        return Health(Condition.STARTING, live, False, (*reasons, "start-up not finished"))
    if f.reconcile_error is not None:
        reasons.append(f"kernel not in step: last reconcile failed: {f.reconcile_error}")
    if reasons:
        return Health(Condition.FAILING, live, False, (*reasons, *f.degraded))
    if f.degraded:
        return Health(Condition.DEGRADED, True, True, f.degraded)
    return Health(Condition.OK, True, True, ())


@dataclass
class Heartbeats:
    """Loops call beat(name, mono); stuck(now) names those silent past their deadline.

    Thread-safe; monotonic seconds are passed in, never read here.
    """

    _deadlines: dict[str, float] = field(default_factory=dict)
    _last: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def register(self, name: str, deadline: float, now: float) -> None:
        with self._lock:
            self._deadlines[name] = deadline
            self._last[name] = now

    def unregister(self, name: str) -> None:
        with self._lock:
            self._deadlines.pop(name, None)
            self._last.pop(name, None)

    def beat(self, name: str, now: float) -> None:
        with self._lock:
            if name in self._deadlines:
                self._last[name] = now

    def stuck(self, now: float) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted(n for n, d in self._deadlines.items() if now - self._last.get(n, now) > d))

    def ages(self, now: float) -> dict[str, float]:
        with self._lock:
            return {n: round(now - t, 3) for n, t in sorted(self._last.items())}
