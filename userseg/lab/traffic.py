"""Traffic probes and generators that speak from inside lab client namespaces.

Every socket is *created* on the lab's worker thread for the host's namespace
(`Lab.socket`), because a socket belongs to the namespace of the thread that
made it; after that the I/O runs on any thread. Sockets are bound to a chosen
source address, so one client namespace with many aliases can speak as many
users.

Outcomes are three-valued, which is what a policy test needs to tell apart:
- ``open``: TCP connected *and* the server's hello line arrived, or the UDP
  echo came back (a half-open path counts as nothing);
- ``refused``: a TCP reset / ECONNREFUSED or an ICMP unreachable: what
  ``reject`` gives, and it comes back at once;
- ``timeout``: nothing came back before the deadline: what ``drop`` gives.

One small nonblocking engine (selectors plus per-attempt deadlines) drives all
probes, so `probe_tcp`, `probe_many` and `ContinuousTraffic` classify alike.
The one blocking, long-lived flow, `LongConnection`, shares none of it and
lives in flows.py.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from userseg.lab.topology import Lab

Result = Literal["open", "refused", "timeout"]
Proto = Literal["tcp", "udp"]

#: errnos that mean "actively refused": TCP RST, ICMP port/host/net/admin unreachable
REFUSED_ERRNOS = frozenset(
    {errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES}
)
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_UDP_RESEND = 0.2  # UDP is lossy by design; resend within the deadline rather than misreport
_tokens = itertools.count(1)


@dataclass(frozen=True)
class Probe:
    client: str  # host name in the lab ("c1"); servers work too
    src_ip: str
    dst_ip: str
    port: int
    proto: Proto = "tcp"
    timeout: float = 1.0


class _Attempt:
    """One nonblocking probe: a tiny state machine the engine drives by readiness and time."""

    def __init__(self, lab: Lab, probe: Probe, now: float) -> None:
        self.probe = probe
        self.deadline = now + probe.timeout
        self.result: Result | None = None
        self._buf = b""
        family = socket.AF_INET6 if ipaddress.ip_address(probe.dst_ip).version == 6 else socket.AF_INET
        kind = socket.SOCK_STREAM if probe.proto == "tcp" else socket.SOCK_DGRAM
        self.sock = lab.socket(probe.client, family, kind)
        self._token = f"probe {next(_tokens)}\n".encode()
        self._resend_at = now + _UDP_RESEND
        self._connecting = probe.proto == "tcp"
        try:
            self.sock.setblocking(False)
            if probe.proto == "tcp":  # pick the port at connect: 4-tuple reuse, no bind exhaustion
                self.sock.setsockopt(socket.SOL_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            self.sock.bind((probe.src_ip, 0))
        except OSError as exc:
            self.sock.close()
            raise OSError(exc.errno, f"{probe}: cannot bind {probe.src_ip} in {probe.client}: {exc}") from exc

    def start(self) -> int:
        """Begin; returns the selector events to wait for (0 when already decided)."""
        err = self.sock.connect_ex((self.probe.dst_ip, self.probe.port))
        if self.probe.proto == "tcp":
            return self._error(err) if err not in (0, errno.EINPROGRESS) else selectors.EVENT_WRITE
        return self._error(err) if err else self._send()

    def ready(self) -> int:
        """The socket is readable/writable (or has an error): advance the state machine."""
        if self._connecting:
            self._connecting = False
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            return self._error(err) if err else selectors.EVENT_READ
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return selectors.EVENT_READ
        except OSError as exc:
            return self._error(exc.errno or 0)
        if self.probe.proto == "udp":
            return self._finish("open") if data == self._token else selectors.EVENT_READ
        if not data:
            return self._finish("refused")  # closed before greeting us
        self._buf += data
        return self._finish("open") if b"\n" in self._buf else selectors.EVENT_READ

    def tick(self, now: float) -> int:
        """Time passed: time out, or resend a UDP request."""
        if now >= self.deadline:
            return self._finish("timeout")
        if self.probe.proto == "udp" and now >= self._resend_at:
            self._resend_at = now + _UDP_RESEND
            return self._send()
        return -1  # unchanged

    def outcome(self) -> Result:
        assert self.result is not None, "attempt not decided yet"
        return self.result

    def wake_at(self) -> float:
        return min(self.deadline, self._resend_at) if self.probe.proto == "udp" else self.deadline

    def _send(self) -> int:
        try:
            self.sock.send(self._token)
        except BlockingIOError:
            pass
        except OSError as exc:
            return self._error(exc.errno or 0)
        return selectors.EVENT_READ

    def _error(self, err: int) -> int:
        if err in REFUSED_ERRNOS:
            return self._finish("refused")
        raise OSError(err, f"{self.probe}: {errno.errorcode.get(err, err)}")

    def _finish(self, result: Result) -> int:
        self.result = result
        return 0  # the engine unregisters, then closes the socket


class _Engine:
    """Runs many attempts concurrently on one thread with a selector and deadlines."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.live: set[_Attempt] = set()

    def add(self, attempt: _Attempt) -> list[_Attempt]:
        """Start it; returns [attempt] when it was decided at once, else [] (it runs here)."""
        done: list[_Attempt] = []
        try:
            events = attempt.start()
        except BaseException:
            attempt.sock.close()
            raise
        self._update(attempt, events, done, new=True)
        return done

    def step(self, until: float) -> list[_Attempt]:
        """Wait for readiness until `until` or the next attempt's wake-up; return those finished."""
        wake = min([until, *(a.wake_at() for a in self.live)])
        done: list[_Attempt] = []
        for key, _ in self.sel.select(max(0.0, wake - time.monotonic())):  # waits even when empty
            self._update(key.data, key.data.ready(), done)
        now = time.monotonic()
        for attempt in [a for a in self.live if a.wake_at() <= now]:
            self._update(attempt, attempt.tick(now), done)
        return done

    def _update(self, attempt: _Attempt, events: int, done: list[_Attempt], new: bool = False) -> None:
        if events == 0:  # decided
            if not new:
                self.sel.unregister(attempt.sock)
                self.live.discard(attempt)
            attempt.sock.close()
            done.append(attempt)
        elif new:
            self.live.add(attempt)
            self.sel.register(attempt.sock, events, attempt)
        elif events > 0:
            self.sel.modify(attempt.sock, events, attempt)

    def close(self) -> None:
        for attempt in self.live:
            self.sel.unregister(attempt.sock)
            attempt.sock.close()
        self.live.clear()
        self.sel.close()


def probe_many(lab: Lab, probes: Sequence[Probe], parallelism: int = 32) -> list[Result]:
    """Run the probes with at most `parallelism` in flight; results in the probes' order."""
    index: dict[_Attempt, int] = {}
    results: dict[int, Result] = {}
    pending = iter(enumerate(probes))
    engine = _Engine()
    try:
        while True:
            while len(engine.live) < max(1, parallelism) and (item := next(pending, None)) is not None:
                attempt = _Attempt(lab, item[1], time.monotonic())
                index[attempt] = item[0]
                finished = engine.add(attempt)
                results.update((index.pop(a), a.outcome()) for a in finished)
            if not engine.live:
                break
            results.update((index.pop(a), a.outcome()) for a in engine.step(time.monotonic() + 1.0))
    finally:
        engine.close()
    return [results[i] for i in range(len(probes))]


def probe_tcp(lab: Lab, client: str, src_ip: str, dst_ip: str, port: int, timeout: float = 1.0) -> Result:
    """Connect from src_ip in the client's namespace; "open" only once the hello line is read."""
    return probe_many(lab, [Probe(client, src_ip, dst_ip, port, "tcp", timeout)])[0]


def probe_udp(lab: Lab, client: str, src_ip: str, dst_ip: str, port: int, timeout: float = 1.0) -> Result:
    """Send a datagram from src_ip; the echo means "open", an ICMP unreachable "refused"."""
    return probe_many(lab, [Probe(client, src_ip, dst_ip, port, "udp", timeout)])[0]


@dataclass(frozen=True)
class Target:
    dst_ip: str
    port: int
    proto: Proto = "tcp"


@dataclass
class TargetStats:
    attempts: int = 0
    open: int = 0
    refused: int = 0
    timeout: int = 0
    failures: list[tuple[float, Result]] = field(default_factory=list)  # (time.monotonic(), result)


@dataclass
class TrafficStats:
    per_target: dict[Target, TargetStats]
    duration: float

    def total(self, result: Result | None = None) -> int:
        """All attempts, or those with this result, over every target."""
        return sum(s.attempts if result is None else getattr(s, result) for s in self.per_target.values())


class ContinuousTraffic:
    """Opens short connections (or UDP requests) round-robin over targets at a fixed total rate.

    Used to prove that allowed traffic sees *zero* refusals or timeouts while the enforcer
    restarts or reloads; every failure carries its time so a test can say when it happened.
    ``stop()`` stops starting new attempts and waits for those in flight to be decided.
    """

    def __init__(
        self,
        lab: Lab,
        client: str,
        src_ip: str,
        targets: Iterable[Target | tuple[str, int] | tuple[str, int, Proto]],
        *,
        rate: float = 200.0,
        timeout: float = 1.0,
        max_inflight: int = 256,
    ) -> None:
        self.targets = [t if isinstance(t, Target) else Target(*t) for t in targets]
        if not self.targets or rate <= 0:
            raise ValueError("ContinuousTraffic needs at least one target and a positive rate")
        self._lab, self._client, self._src = lab, client, src_ip
        self._rate, self._timeout, self._max_inflight = rate, timeout, max_inflight
        self._stats = {t: TargetStats() for t in self.targets}
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._started = self._ended = 0.0
        self._thread = threading.Thread(target=self._run, name=f"traffic-{client}", daemon=True)
        lab.on_close(self.close)

    def start(self) -> ContinuousTraffic:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def snapshot(self) -> TrafficStats:
        with self._changed:
            per = {t: replace(s, failures=list(s.failures)) for t, s in self._stats.items()}
        return TrafficStats(per, (self._ended or time.monotonic()) - self._started if self._started else 0.0)

    def wait_for(self, predicate: Callable[[TrafficStats], bool], timeout: float) -> bool:
        """Wait (woken by each verdict, no polling) until predicate(snapshot) holds; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.snapshot()):
                if not self._thread.is_alive() or not self._changed.wait(deadline - time.monotonic()):
                    return predicate(self.snapshot())
        return True

    def stop(self) -> TrafficStats:
        """Stop, wait for in-flight attempts, and return the counts; re-raises a generator error."""
        self.close()
        if self._error is not None:
            raise self._error
        return self.snapshot()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> ContinuousTraffic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _record(self, attempts: Iterable[_Attempt]) -> None:
        with self._changed:
            for attempt in attempts:
                p, result = attempt.probe, attempt.outcome()
                stats = self._stats[Target(p.dst_ip, p.port, p.proto)]
                setattr(stats, result, getattr(stats, result) + 1)
                if result != "open":
                    stats.failures.append((time.monotonic(), result))
            self._changed.notify_all()

    def _run(self) -> None:
        engine, k = _Engine(), 0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                while self._started + k / self._rate <= now and len(engine.live) < self._max_inflight:
                    t = self.targets[k % len(self.targets)]
                    k += 1
                    with self._changed:
                        self._stats[t].attempts += 1
                    probe = Probe(self._client, self._src, t.dst_ip, t.port, t.proto, self._timeout)
                    self._record(engine.add(_Attempt(self._lab, probe, now)))
                full = len(engine.live) >= self._max_inflight  # then wake on progress, not schedule
                self._record(engine.step(now + 0.05 if full else self._started + k / self._rate))
            while engine.live:  # drain: every started attempt gets its verdict
                self._record(engine.step(time.monotonic() + 0.1))
        except BaseException as exc:
            self._error = exc
        finally:
            engine.close()
            self._ended = time.monotonic()
            with self._changed:
                self._changed.notify_all()
