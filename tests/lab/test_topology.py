"""The namespace lab itself: it builds fast, routes, and never leaves anything behind."""

from __future__ import annotations

import os
import secrets
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from tests.lab_fixtures import MakeLab
from userseg.lab import ClientSpec, Lab, LabCommandError, LabError, LabSpec, ServerSpec, probe_tcp, probe_udp
from userseg.lab.registry import REGISTRY_DIR
from userseg.netns import NETNS_RUN_DIR

pytestmark = pytest.mark.netns

THREE_BY_THREE = LabSpec(
    clients=[ClientSpec("c1", ["198.18.10.11", "198.18.10.12"]), ClientSpec("c2"), ClientSpec("c3")],
    servers=[
        ServerSpec("s1", tcp_ports=[80, 443], udp_ports=[53]),
        ServerSpec("s2", address="198.18.20.50", tcp_ports=[22]),
        ServerSpec("s3"),
    ],
)

# A child process that builds a lab, reports its run id, and waits to be killed.
CHILD = """
import signal, sys, threading
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if inherited ignored
from userseg.lab import Lab, LabSpec, ClientSpec, ServerSpec
lab = Lab(LabSpec(clients=[ClientSpec("c1")], servers=[ServerSpec("s1", tcp_ports=[80])]))
print(lab.run_id, lab.listeners["s1"].proc.pid, *lab.namespaces, flush=True)
threading.Event().wait()
"""


StartChild = Callable[[], tuple[subprocess.Popen[str], str, int, list[str]]]


def ns_exists(ns: str) -> bool:
    return os.path.exists(os.path.join(NETNS_RUN_DIR, ns))


def exits_within(pid: int, timeout: float) -> bool:
    """Wait for a process to exit via its pidfd: an event, not a polling loop or a sleep."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def test_build_and_close_leaves_nothing() -> None:
    with Lab(THREE_BY_THREE) as lab:
        assert lab.build_seconds < 2.0, f"3+3 lab took {lab.build_seconds:.2f}s"
        assert len(lab.namespaces) == 7 and all(map(ns_exists, lab.namespaces))
        assert lab.clients["c1"].addresses == ("198.18.10.11", "198.18.10.12")
        assert lab.clients["c1"].addresses6 == ("2001:db8:10::11", "2001:db8:10::12")
        assert lab.clients["c2"].addresses == ("198.18.10.10",)  # auto: first free from .10
        assert lab.servers["s1"].address == "198.18.20.10" and lab.servers["s2"].address == "198.18.20.50"
        assert len(lab.client_if) <= 15 and lab.client_if.startswith(lab.run_id)
        registry = os.path.join(REGISTRY_DIR, f"{lab.run_id}.json")
        assert os.path.exists(registry)
    assert not any(map(ns_exists, lab.namespaces))
    assert not os.path.exists(registry)
    lab.close()  # idempotent


def test_teardown_when_body_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"), Lab(LabSpec(clients=[ClientSpec("c1")])) as lab:
        raise RuntimeError("boom")
    assert not any(map(ns_exists, lab.namespaces))


@pytest.fixture
def run_id(monkeypatch: pytest.MonkeyPatch) -> str:
    """Fix the next lab's run id, so a test can look for its namespaces even when __init__ fails."""
    token = secrets.token_hex(3)
    monkeypatch.setattr("userseg.lab.topology.secrets.token_hex", lambda n: token)
    return f"us{token}"


def namespaces_of(run_id: str) -> list[str]:
    return [ns for ns in os.listdir(NETNS_RUN_DIR) if ns.startswith(f"{run_id}-")]


def test_half_built_lab_is_torn_down(run_id: str) -> None:
    """A listener that cannot start fails the build after namespaces and links exist."""
    with pytest.raises(LabError, match="bad port range"):
        Lab(LabSpec(clients=[ClientSpec("c1")], servers=[ServerSpec("s1", tcp_ports=[70000])]))
    assert namespaces_of(run_id) == []
    assert not os.path.exists(os.path.join(REGISTRY_DIR, f"{run_id}.json"))


@pytest.mark.parametrize(
    "spec",
    [
        LabSpec(clients=[ClientSpec("c1", ["10.0.0.5"])]),  # outside the lab network
        LabSpec(clients=[ClientSpec("c1", ["198.18.10.11"]), ClientSpec("c2", ["198.18.10.11"])]),
        LabSpec(clients=[ClientSpec("c1", ["198.18.10.1"])]),  # the gateway's address
        LabSpec(clients=[ClientSpec("c1"), ClientSpec("c1")]),
        LabSpec(servers=[ServerSpec("Bad Name")]),
        LabSpec(client_network="192.168.1.0/24"),  # not test address space
        LabSpec(server_network6="fd00::/64"),
    ],
)
def test_bad_specs_are_refused_before_building(spec: LabSpec, run_id: str) -> None:
    with pytest.raises((LabError, ValueError)):
        Lab(spec)
    assert namespaces_of(run_id) == []


def test_clients_reach_servers_across_the_gateway(make_lab: MakeLab) -> None:
    lab = make_lab(THREE_BY_THREE)
    s1 = lab.servers["s1"]
    assert s1.address6 is not None
    for src in lab.clients["c1"].addresses:  # every alias is usable as a source
        assert probe_tcp(lab, "c1", src, s1.address, 443) == "open"
    for src6 in lab.clients["c1"].addresses6:
        assert probe_tcp(lab, "c1", src6, s1.address6, 80) == "open"
    c3 = lab.clients["c3"].addresses[0]
    assert probe_udp(lab, "c3", c3, s1.address, 53) == "open"
    assert probe_tcp(lab, "c3", c3, lab.servers["s2"].address, 22) == "open"
    # client traffic enters the gateway on lab.client_if, leaves on lab.server_if
    route = lab.run("gateway", ["ip", "route", "get", c3]).stdout
    assert f"dev {lab.client_if}" in route
    assert f"dev {lab.server_if}" in lab.run("gateway", ["ip", "route", "get", s1.address]).stdout


def test_greeting_names_server_and_port(make_lab: MakeLab) -> None:
    lab = make_lab(THREE_BY_THREE)
    out = lab.run("c2", ["socat", "-T1", "-", "TCP:198.18.20.10:443,connect-timeout=1"], input="x\n").stdout
    assert out.splitlines() == ["hello from s1:443", "x"]


def test_stopped_server_refuses(make_lab: MakeLab) -> None:
    lab = make_lab(THREE_BY_THREE)
    src = lab.clients["c2"].addresses[0]
    lab.stop_server("s1")
    assert probe_tcp(lab, "c2", src, "198.18.20.10", 80) == "refused"
    assert probe_udp(lab, "c2", src, "198.18.20.10", 53) == "refused"


def test_run_errors_show_stderr(make_lab: MakeLab) -> None:
    lab = make_lab(LabSpec(clients=[ClientSpec("c1")]))
    with pytest.raises(LabCommandError, match="does not exist"):
        lab.run("c1", ["ip", "link", "show", "nosuchif0"])
    with pytest.raises(LabError, match="no host"):
        lab.run("nosuchhost", ["true"])


@pytest.fixture
def start_child() -> Iterator[StartChild]:
    """Start a child process owning a lab; it is killed (and its lab cleaned) whatever happens."""
    children: list[subprocess.Popen[str]] = []

    def start() -> tuple[subprocess.Popen[str], str, int, list[str]]:
        child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
        children.append(child)
        assert child.stdout is not None
        run_id, listener, *namespaces = child.stdout.readline().split()  # blocks until built or EOF
        assert namespaces and all(map(ns_exists, namespaces))
        return child, run_id, int(listener), namespaces

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    Lab.cleanup_stale()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_tears_the_lab_down(sig: signal.Signals, start_child: StartChild) -> None:
    child, _, listener, namespaces = start_child()
    child.send_signal(sig)
    assert child.wait(timeout=10) == -sig
    assert not any(map(ns_exists, namespaces))
    assert exits_within(listener, timeout=5)


def test_cleanup_stale_removes_only_dead_runs(make_lab: MakeLab, start_child: StartChild) -> None:
    live = make_lab(LabSpec(clients=[ClientSpec("c1")]))
    child, run_id, listener, namespaces = start_child()
    assert Lab.cleanup_stale() == []  # owner alive: nothing is stale
    child.kill()  # no chance to clean up
    child.wait(timeout=10)
    assert all(map(ns_exists, namespaces))
    assert sorted(Lab.cleanup_stale()) == sorted(namespaces)
    assert not any(map(ns_exists, namespaces))
    assert not os.path.exists(os.path.join(REGISTRY_DIR, f"{run_id}.json"))
    assert all(map(ns_exists, live.namespaces))  # a live lab is never touched
    # the orphaned listener saw EOF on stdin when its parent died, and exited
    assert exits_within(listener, timeout=5)
