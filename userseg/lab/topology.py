"""A throw-away gateway lab built from network namespaces.

Layout (one lab = one run id ``us`` + 6 hex, e.g. ``us3fa9c1``)::

    client ns <id>-c-c1 ─ veth ─┐                         ┌─ veth ─ server ns <id>-s-s1
    client ns <id>-c-c2 ─ veth ─┤   gateway ns <id>-gw    ├─ veth ─ server ns <id>-s-s2
                      bridge <id>cbr ─── routing ─── bridge <id>sbr
                      198.18.10.1/24                 198.18.20.1/24
                      2001:db8:10::1/64              2001:db8:20::1/64

Why Linux bridges *inside* the gateway namespace (rather than a separate switch
namespace): routed client traffic then enters the gateway on exactly one
interface, the client bridge ``lab.client_if``, so the firewall can police
``iifname`` just as on a VLAN interface of a real gateway; and one namespace
fewer keeps the build fast. Clients on one bridge reach each other at layer 2
without the gateway, as on a real access LAN. Each host's own interface is
``<id>e0``.

Safety rules enforced here: every address lies in 198.18.0.0/15 or
2001:db8::/32; every name carries the run id; nothing is created in the
caller's namespace; every namespace is deleted on ``close()``, when the build
fails half-way, at interpreter exit (atexit) and on SIGTERM/SIGHUP. A registry
file per run in /run/userseg-lab names the owner process, so
``Lab.cleanup_stale()`` deletes only namespaces of runs whose owner is dead.
The registry and the last-resort teardown live in registry.py, which needs
nothing of the layout; this module plans, builds, uses and closes one lab.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from userseg.lab import registry
from userseg.lab.registry import delete_namespaces, ip_batch
from userseg.lab.servers import Listener, ListenerError
from userseg.netns import NetnsWorker

LAB_NET4 = ipaddress.IPv4Network("198.18.0.0/15")
LAB_NET6 = ipaddress.IPv6Network("2001:db8::/32")
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_Nets = tuple[ipaddress.IPv4Network, ipaddress.IPv6Network]


class LabError(RuntimeError):
    """The lab could not be built, used or torn down as asked."""


class LabCommandError(subprocess.CalledProcessError):
    """A command in a namespace failed; unlike its base class, str() shows stderr."""

    def __str__(self) -> str:
        err = self.stderr.strip() if isinstance(self.stderr, str) else ""
        return f"{super().__str__()}{': ' + err if err else ''}"


@dataclass(frozen=True)
class ClientSpec:
    """A client host; extra addresses let one namespace speak as many users."""

    name: str
    addresses: Sequence[str] = ()  # empty: one address is picked from the client network


@dataclass(frozen=True)
class ServerSpec:
    """An application server; a listener process runs only when it has ports."""

    name: str
    address: str | None = None  # None: picked from the server network
    tcp_ports: Sequence[int] = ()
    udp_ports: Sequence[int] = ()


@dataclass(frozen=True)
class LabSpec:
    clients: Sequence[ClientSpec] = ()
    servers: Sequence[ServerSpec] = ()
    ipv6: bool = True  # IPv6 twins are derived: 198.18.10.11 -> 2001:db8:10::11
    client_network: str = "198.18.10.0/24"
    server_network: str = "198.18.20.0/24"
    client_network6: str = "2001:db8:10::/64"
    server_network6: str = "2001:db8:20::/64"
    prefix: str = "us"
    ready_timeout: float = 10.0


@dataclass(frozen=True)
class ClientHost:
    name: str
    ns: str
    ifname: str
    addresses: tuple[str, ...]
    addresses6: tuple[str, ...]


@dataclass(frozen=True)
class ServerHost:
    name: str
    ns: str
    ifname: str
    address: str
    address6: str | None
    tcp_ports: tuple[int, ...]
    udp_ports: tuple[int, ...]


def _v6_for(addr: ipaddress.IPv4Address, net4: ipaddress.IPv4Network, net6: ipaddress.IPv6Network) -> str:
    """Readable IPv6 twin: the host part's decimal digits reused as hex (.11 -> ::11)."""
    return str(net6.network_address + int(str(int(addr) - int(net4.network_address)), 16))


def _plan(
    spec: LabSpec, run_id: str, nets: dict[str, _Nets]
) -> tuple[dict[str, ClientHost], dict[str, ServerHost]]:
    """Validate names and pick addresses before anything is created (a bad spec builds nothing)."""
    for net4, net6 in nets.values():
        if not net4.subnet_of(LAB_NET4) or not net6.subnet_of(LAB_NET6) or net4.num_addresses < 16:
            raise LabError(f"lab networks {net4}, {net6} must lie inside {LAB_NET4} and {LAB_NET6}")
    if nets["c"][0].overlaps(nets["s"][0]) or nets["c"][1].overlaps(nets["s"][1]):
        raise LabError("client and server networks overlap")
    names = [c.name for c in spec.clients] + [s.name for s in spec.servers]
    if any(not _NAME_RE.fullmatch(n) for n in names) or len(set(names)) != len(names):
        raise LabError(f"host names must be unique and match {_NAME_RE.pattern}: {names}")
    used = {nets[k][0][1] for k in "cs"}  # the gateway addresses
    wanted = [a for c in spec.clients for a in c.addresses] + [s.address for s in spec.servers if s.address]
    reserved = {ipaddress.ip_address(a) for a in wanted}

    def take(kind: str, text: str | None) -> ipaddress.IPv4Address:
        net = nets[kind][0]
        if text is None:  # first free address from host .10 on
            free = (a for a in net.hosts() if int(a) - int(net[0]) >= 10 and a not in used | reserved)
            text = str(next(free, net.broadcast_address))
        addr = ipaddress.IPv4Address(text)
        if addr not in net or addr in (net.network_address, net.broadcast_address) or addr in used:
            raise LabError(f"{text} is not a free host address of {net} (used twice, or none left)")
        used.add(addr)
        return addr

    def six(kind: str, addrs: Sequence[ipaddress.IPv4Address]) -> tuple[str, ...]:
        return tuple(_v6_for(a, *nets[kind]) for a in addrs) if spec.ipv6 else ()

    clients: dict[str, ClientHost] = {}
    for c in spec.clients:
        v4 = [take("c", a) for a in c.addresses] or [take("c", None)]
        clients[c.name] = ClientHost(
            c.name, f"{run_id}-c-{c.name}", f"{run_id}e0", tuple(map(str, v4)), six("c", v4)
        )
    servers: dict[str, ServerHost] = {}
    for s in spec.servers:
        a4 = take("s", s.address)
        ports = tuple(sorted(set(s.tcp_ports))), tuple(sorted(set(s.udp_ports)))
        a6 = next(iter(six("s", [a4])), None)
        servers[s.name] = ServerHost(s.name, f"{run_id}-s-{s.name}", f"{run_id}e0", str(a4), a6, *ports)
    return clients, servers


def _finish(proc: subprocess.Popen[str], what: str) -> None:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise LabError(f"{what} failed (exit {proc.returncode}): {err.strip()}")


class Lab:
    """A running lab; ``with Lab(LabSpec(...)) as lab:`` builds it and always tears it down."""

    def __init__(self, spec: LabSpec) -> None:
        started = time.monotonic()
        if not re.fullmatch(r"[a-z]{1,4}", spec.prefix):
            raise LabError("prefix must be 1-4 lowercase letters (interface names are <= 15 chars)")
        self.spec = spec
        self.run_id = f"{spec.prefix}{secrets.token_hex(3)}"
        nets = {
            "c": (ipaddress.IPv4Network(spec.client_network), ipaddress.IPv6Network(spec.client_network6)),
            "s": (ipaddress.IPv4Network(spec.server_network), ipaddress.IPv6Network(spec.server_network6)),
        }
        self.clients, self.servers = _plan(spec, self.run_id, nets)
        self.client_network, self.client_network6 = nets["c"]
        self.server_network, self.server_network6 = nets["s"]
        self.gateway_client_ip, self.gateway_server_ip = str(nets["c"][0][1]), str(nets["s"][0][1])
        self.gateway_ns = f"{self.run_id}-gw"
        self.client_if = f"{self.run_id}cbr"  # client traffic enters the gateway here (iifname)
        self.server_if = f"{self.run_id}sbr"
        hosts: list[ClientHost | ServerHost] = [*self.clients.values(), *self.servers.values()]
        self.namespaces = [self.gateway_ns, *(h.ns for h in hosts)]
        self.build_seconds = 0.0
        self._lock = threading.RLock()
        self._workers: dict[str, NetnsWorker] = {}
        self._listeners: dict[str, Listener] = {}
        self._closers: list[Callable[[], None]] = []
        self._closed = False
        registry.track(self)
        try:
            self._build(nets, hosts)
        except BaseException:
            self.close()
            raise
        self.build_seconds = time.monotonic() - started

    def _build(self, nets: dict[str, _Nets], hosts: Sequence[ClientHost | ServerHost]) -> None:
        registry.register(self.run_id, self.namespaces)  # first, so a crash from here on is cleanable
        _finish(ip_batch(None, [f"netns add {ns}" for ns in self.namespaces]), "creating namespaces")
        v6 = self.spec.ipv6
        # all sysctls first: veth peers are born in the hosts' namespaces and inherit "default"
        nodad = {"ipv6/conf/default/accept_dad": "0", "ipv6/conf/all/accept_dad": "0"} if v6 else {}
        icmp = {"ipv4/icmp_ratelimit": "0", "ipv4/icmp_msgs_per_sec": "100000"}  # many UDP refusals
        icmp |= {"ipv6/icmp/ratelimit": "0"} if v6 else {}
        forward = {"ipv4/ip_forward": "1"} | ({"ipv6/conf/all/forwarding": "1"} if v6 else {})
        self._sysctl(self.gateway_ns, nodad | forward | icmp)
        client = {"ipv4/tcp_tw_reuse": "1", "ipv4/ip_local_port_range": "10000 65000"}
        for host in hosts:
            self._sysctl(host.ns, nodad | (client if isinstance(host, ClientHost) else icmp))
        gw = ["link set lo up"]
        for kind, bridge in (("c", self.client_if), ("s", self.server_if)):
            net4, net6 = nets[kind]
            gw += [
                f"link add {bridge} type bridge forward_delay 0",
                f"addr add {net4[1]}/{net4.prefixlen} dev {bridge}",
            ]
            gw += [f"addr add {net6[1]}/{net6.prefixlen} dev {bridge} nodad"] if v6 else []
        for i, host in enumerate(hosts):
            kind, bridge = ("c", self.client_if) if isinstance(host, ClientHost) else ("s", self.server_if)
            port = f"{self.run_id}{kind}{i}"
            gw += [f"link add {port} type veth peer name {host.ifname} netns {host.ns}"]
            gw += [f"link set {port} master {bridge} up"]
        gw += [f"link set {self.client_if} up", f"link set {self.server_if} up"]
        _finish(ip_batch(self.gateway_ns, gw), f"building gateway {self.gateway_ns}")
        procs = []
        for host in hosts:
            if isinstance(host, ClientHost):
                (net4, net6), v4s, v6s = nets["c"], host.addresses, host.addresses6
            else:
                (net4, net6), v4s, v6s = nets["s"], (host.address,), (host.address6,) if host.address6 else ()
            lines = ["link set lo up", *(f"addr add {a}/{net4.prefixlen} dev {host.ifname}" for a in v4s)]
            lines += [f"addr add {a}/{net6.prefixlen} dev {host.ifname} nodad" for a in v6s]
            lines += [f"link set {host.ifname} up", f"route add default via {net4[1]}"]
            lines += [f"route add default via {net6[1]}"] if v6s else []
            procs.append((host.ns, ip_batch(host.ns, lines)))  # all hosts configure in parallel
        for ns, proc in procs:
            _finish(proc, f"configuring {ns}")
        self._start_servers([s for s in self.servers.values() if s.tcp_ports or s.udp_ports])

    def _sysctl(self, ns: str, values: dict[str, str]) -> None:
        """Write net sysctls from the namespace's worker thread: /proc/sys/net follows the opener."""

        def write() -> None:
            for key, value in values.items():
                with open(f"/proc/sys/net/{key}", "w") as fh:
                    fh.write(value)

        self.worker(ns).call(write)

    def _start_servers(self, servers: Sequence[ServerHost]) -> None:
        """Start every listener at once, then wait for each READY line (deadline, no sleeps)."""
        for s in servers:
            binds = [a for a in (s.address, s.address6) if a]
            self._listeners[s.name] = Listener(s.ns, s.name, binds, s.tcp_ports, s.udp_ports)
        deadline = time.monotonic() + self.spec.ready_timeout
        try:
            for listener in self._listeners.values():
                listener.wait_ready(deadline)
        except ListenerError as exc:
            raise LabError(str(exc)) from exc

    # -- using --------------------------------------------------------------------------------------
    def ns_of(self, name: str) -> str:
        """Namespace of a host name ("c1", "s1", "gateway") or of a namespace name itself."""
        if name in self.namespaces:
            return name
        if name == "gateway":
            return self.gateway_ns
        host = self.clients.get(name) or self.servers.get(name)
        if host is None:
            raise LabError(f"no host or namespace {name!r} in lab {self.run_id}")
        return host.ns

    def worker(self, name: str) -> NetnsWorker:
        """The cached worker thread living in that namespace (created on first use)."""
        ns = self.ns_of(name)
        with self._lock:
            if self._closed:
                raise LabError(f"lab {self.run_id} is closed")
            if ns not in self._workers:
                self._workers[ns] = NetnsWorker(ns, thread_name=f"lab-{ns}")
            return self._workers[ns]

    def socket(self, host: str, family: int, kind: int) -> socket.socket:
        """A socket that belongs to the host's namespace (usable from any thread afterwards)."""
        return self.worker(host).call(lambda: socket.socket(family, kind))

    def run(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run argv in the namespace (host or ns name); check=True, text, output captured by default."""
        kw.setdefault("check", True)
        kw.setdefault("text", True)
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        try:
            return subprocess.run(["ip", "netns", "exec", self.ns_of(ns), *argv], **kw)
        except subprocess.CalledProcessError as exc:
            raise LabCommandError(exc.returncode, exc.cmd, exc.output, exc.stderr) from None

    def on_close(self, fn: Callable[[], None]) -> None:
        """Register cleanup (traffic generators, connections) to run before the namespaces go."""
        with self._lock:
            self._closers.append(fn)

    @property
    def listeners(self) -> Mapping[str, Listener]:
        """Running listener processes by server name."""
        return dict(self._listeners)

    def stop_server(self, name: str, timeout: float = 5.0) -> None:
        """Stop a server's listener and reap it ("the server is down" scenarios)."""
        listener = self._listeners.pop(name, None)
        if listener is not None:
            listener.stop(timeout)

    # -- tearing down -------------------------------------------------------------------------------
    def close(self) -> None:
        """Tear everything down; idempotent, safe on a half-built lab, re-entrant from a signal.

        Every step runs even when an earlier one fails, so a broken listener or closer never
        leaves namespaces behind; the first error is raised at the end.
        """
        with self._lock:
            self._closed = True
            closers, self._closers = self._closers, []
            workers, self._workers = self._workers, {}
            steps: list[Callable[[], None]] = [
                *reversed(closers),
                *(functools.partial(self.stop_server, n) for n in list(self._listeners)),
            ]
            steps += [w.close for w in workers.values()]
            errors: list[BaseException] = []
            for step in steps:
                try:
                    step()
                except Exception as exc:  # teardown must go on
                    errors.append(exc)
            if still := delete_namespaces(self.namespaces):
                errors.append(LabError(f"could not delete namespaces {still}"))
            else:
                registry.unregister(self.run_id)
                registry.forget(self)
            if errors:
                raise errors[0]

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @staticmethod
    def cleanup_stale(prefix: str = "us") -> list[str]:
        """Delete namespaces left by crashed lab runs with this prefix; returns those deleted.

        Only runs with a registry file whose owner process is gone are touched, and of those
        only namespaces matching our naming pattern: a live lab of a parallel test run, or a
        namespace someone else happened to name alike, is never deleted.
        """

        def ours(run_id: str, ns: str) -> bool:
            return re.fullmatch(rf"{re.escape(run_id)}-(gw|[cs]-{_NAME_RE.pattern})", ns) is not None

        return registry.cleanup_stale(prefix, ours)
