"""Conntrack adapter against real tracked flows in a throwaway namespace.

TCP connections and a ping over loopback between 198.18.x / 2001:db8:: addresses;
conntrack is switched on in the namespace by a `ct` rule in a test-only table.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from userseg.adapters.firewall.conntrack import Conntrack
from userseg.netns import NetnsWorker
from userseg.ports import Flow

from . import needs_root, new_netns, run

pytestmark = [pytest.mark.netns, needs_root]

TRACK = """
table inet usfw_track {
    chain out { type filter hook output priority 0; policy accept; ct state new counter; }
}
"""
SERVER4, SERVER6 = "198.18.0.1", "2001:db8::1"
PORT = 5001
ICMP_ID = 0x4242


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


@dataclass
class Lab:
    ns: str
    worker: NetnsWorker
    sockets: list[socket.socket] = field(default_factory=list)

    def connect(self, src: str, dst: str) -> int:
        """An established TCP connection src -> dst:PORT; returns its source port."""

        def go() -> int:
            family = socket.AF_INET6 if ":" in src else socket.AF_INET
            c = socket.socket(family, socket.SOCK_STREAM)
            c.bind((src, 0))
            c.connect((dst, PORT))
            server = self.servers[family]
            peer, _ = server.accept()
            self.sockets += [c, peer]
            return int(c.getsockname()[1])

        return self.worker.call(go)

    def ping(self, src: str, dst: str) -> None:
        """One ICMP echo exchange (raw socket), waiting for the reply."""

        def go() -> None:
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            s.settimeout(5)
            s.bind((src, 0))
            header = struct.pack("!BBHHH", 8, 0, 0, ICMP_ID, 1) + b"usfw"
            packet = header[:2] + struct.pack("!H", _checksum(header)) + header[4:]
            s.sendto(packet, (dst, 0))
            while True:
                data, _ = s.recvfrom(1500)
                icmp = data[(data[0] & 0x0F) * 4 :]
                if icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ICMP_ID:
                    break
            s.close()

        self.worker.call(go)

    servers: dict[int, socket.socket] = field(default_factory=dict)


@pytest.fixture
def lab() -> Iterator[Lab]:
    with new_netns() as ns:
        for addr in ("198.18.0.1/32", "198.18.0.2/32", "198.18.0.3/32"):
            run("ip", "-n", ns, "addr", "add", addr, "dev", "lo")
        for addr in ("2001:db8::1/128", "2001:db8::2/128"):
            run("ip", "-n", ns, "addr", "add", addr, "dev", "lo", "nodad")
        run("ip", "netns", "exec", ns, "nft", "-f", "-", input=TRACK)
        worker = NetnsWorker(ns, thread_name="conntrack-test")
        lab = Lab(ns, worker)

        def listen() -> None:
            for family, addr in ((socket.AF_INET, SERVER4), (socket.AF_INET6, SERVER6)):
                s = socket.socket(family, socket.SOCK_STREAM)
                s.bind((addr, PORT))
                s.listen(16)
                lab.servers[family] = s

        try:
            worker.call(listen)
            yield lab
        finally:

            def close_all() -> None:
                for s in [*lab.sockets, *lab.servers.values()]:
                    s.close()

            worker.call(close_all)
            worker.close()


@pytest.fixture
def conntrack(lab: Lab) -> Iterator[Conntrack]:
    ct = Conntrack(lab.ns)
    try:
        yield ct
    finally:
        ct.close()


def A(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def test_lists_and_deletes_tracked_flows(lab: Lab, conntrack: Conntrack) -> None:
    p1 = lab.connect("198.18.0.2", SERVER4)
    p2 = lab.connect("198.18.0.2", SERVER4)
    p3 = lab.connect("198.18.0.3", SERVER4)
    p6 = lab.connect("2001:db8::2", SERVER6)
    lab.ping("198.18.0.3", SERVER4)

    mine = conntrack.flows_from([A("198.18.0.2")])
    assert sorted(mine, key=lambda f: f.sport) == sorted(
        [Flow(A("198.18.0.2"), A(SERVER4), 6, PORT, p1), Flow(A("198.18.0.2"), A(SERVER4), 6, PORT, p2)],
        key=lambda f: f.sport,
    )
    third = set(conntrack.flows_from([A("198.18.0.3"), A("198.18.0.3")]))
    assert third == {
        Flow(A("198.18.0.3"), A(SERVER4), 6, PORT, p3),
        Flow(A("198.18.0.3"), A(SERVER4), 1, 0, ICMP_ID),
    }
    assert conntrack.flows_from([A("2001:db8::2")]) == [Flow(A("2001:db8::2"), A(SERVER6), 6, PORT, p6)]
    everything = set(conntrack.flows_from(None))
    assert set(mine) | third | {Flow(A("2001:db8::2"), A(SERVER6), 6, PORT, p6)} <= everything
    assert conntrack.flows_from([A("198.18.0.77")]) == []

    victim = next(f for f in mine if f.sport == p1)
    assert conntrack.delete([victim]) == 1
    assert conntrack.flows_from([A("198.18.0.2")]) == [Flow(A("198.18.0.2"), A(SERVER4), 6, PORT, p2)]
    assert conntrack.delete([victim]) == 0  # already gone is fine

    icmp = Flow(A("198.18.0.3"), A(SERVER4), 1, 0, ICMP_ID)
    v6 = Flow(A("2001:db8::2"), A(SERVER6), 6, PORT, p6)
    assert conntrack.delete([icmp, v6]) == 2
    assert conntrack.flows_from([A("198.18.0.3")]) == [Flow(A("198.18.0.3"), A(SERVER4), 6, PORT, p3)]
    assert conntrack.flows_from([A("2001:db8::2")]) == []
    assert conntrack.delete([]) == 0
