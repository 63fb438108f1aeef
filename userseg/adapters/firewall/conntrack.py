"""Connection tracking of the gateway, through pyroute2's ctnetlink support.

Removing a user's map element stops *new* connections only; established ones
keep flowing because `ct state established` is accepted first.  Revocation
therefore lists the user's flows here and deletes the now-forbidden ones.

pyroute2 0.9 is asyncio-based and its per-call synchronous wrapper spins an
event loop for every request (~1 ms per delete).  So this adapter keeps one
event loop and two ctnetlink sockets (IPv4, IPv6) on a NetnsWorker thread,
decodes only the original tuple of each entry, and pipelines deletes in
batches; the `conntrack` binary is not needed.

IPv4 listings are filtered by source in the kernel; IPv6 ones in Python (see
_list).  ICMP flows carry their echo identifier in Flow.sport (dport is 0), so that a
single ping session can be told apart from another between the same hosts.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

from pyroute2.conntrack import AsyncConntrack
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from userseg.model import IPAddress
from userseg.netns import NetnsWorker
from userseg.ports import Flow

T = TypeVar("T")

_PORT_PROTOS = frozenset({6, 17, 33, 132, 136})  # tcp, udp, dccp, sctp, udplite: tuples carry ports
_ICMP = {4: (1, "CTA_PROTO_ICMP_"), 6: (58, "CTA_PROTO_ICMPV6_")}


class ConntrackError(OSError):
    """The kernel refused a conntrack request (other than "already gone")."""


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


class Conntrack:
    """ConnectionTable port for one network namespace (None: the current one)."""

    def __init__(self, netns: str | None = None, batch: int = 128, timeout_s: float = 60.0) -> None:
        self.batch = batch
        self.timeout_s = timeout_s
        self._worker = NetnsWorker(netns, thread_name=f"conntrack-{netns or 'self'}")
        self._loop: asyncio.AbstractEventLoop = self._worker.call(asyncio.new_event_loop)
        self._socks: dict[int, Any] = self._run(self._open())

    async def _open(self) -> dict[int, Any]:
        # created inside the running loop so pyroute2 binds them to it
        return {
            4: AsyncConntrack(nfgen_family=socket.AF_INET),
            6: AsyncConntrack(nfgen_family=socket.AF_INET6),
        }

    def _run(self, coro: Awaitable[T]) -> T:
        async def bounded() -> T:
            return await asyncio.wait_for(coro, self.timeout_s)

        return self._worker.call(lambda: self._loop.run_until_complete(bounded()))

    def close(self) -> None:
        for sock in getattr(self, "_socks", {}).values():
            self._worker.call(sock.close)
        self._socks = {}
        self._worker.call(self._loop.close)
        self._worker.close()

    def __enter__(self) -> Conntrack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ listing

    def flows_from(self, sources: Iterable[IPAddress] | None) -> list[Flow]:
        """Flows whose original source is in `sources` (None: all), filtered in the kernel."""
        return [flow for flow, _tuple in self._run(self._list(sources))]

    async def _list(self, sources: Iterable[IPAddress] | None) -> list[tuple[Flow, NFCTAttrTuple]]:
        if sources is None:
            return [*await self._dump(4, None), *await self._dump(6, None)]
        out: list[tuple[Flow, NFCTAttrTuple]] = []
        wanted = dict.fromkeys(sources)  # de-duplicated, order kept
        for src in wanted:
            if src.version == 4:
                found = await self._dump(4, NFCTAttrTuple(family=socket.AF_INET, saddr=str(src)))
                out.extend(
                    item for item in found if item[0].saddr == src
                )  # pre-5.8 kernels ignore the filter
        if any(src.version == 6 for src in wanted):
            # pyroute2 0.9.7 encodes an IPv6 source filter the kernel never matches: filter here
            out.extend(item for item in await self._dump(6, None) if item[0].saddr in wanted)
        return out

    async def _dump(self, version: int, filt: NFCTAttrTuple | None) -> list[tuple[Flow, NFCTAttrTuple]]:
        out: list[tuple[Flow, NFCTAttrTuple]] = []
        async for msg in await self._socks[version].dump(tuple_orig=filt):
            item = _decode(version, msg)
            if item is not None:
                out.append(item)
        return out

    # ------------------------------------------------------------ deleting

    def delete(self, flows: Iterable[Flow]) -> int:
        """Delete these flows; returns how many entries were removed (already gone is fine)."""
        return self._run(self._delete(list(flows)))

    async def _delete(self, flows: list[Flow]) -> int:
        exact: list[tuple[int, NFCTAttrTuple]] = []
        v6_table: list[tuple[Flow, NFCTAttrTuple]] | None = None  # see _list: no IPv6 kernel filter
        for flow in flows:
            version = flow.saddr.version
            if flow.proto in _PORT_PROTOS:
                exact.append(
                    (
                        version,
                        NFCTAttrTuple(
                            family=_family(version),
                            saddr=str(flow.saddr),
                            daddr=str(flow.daddr),
                            proto=flow.proto,
                            sport=flow.sport,
                            dport=flow.dport,
                        ),
                    )
                )
            else:  # ICMP & co: the full tuple holds ids/types we only learn by looking
                if version == 6:
                    if v6_table is None:
                        v6_table = await self._dump(6, None)
                    candidates = v6_table
                else:
                    filt = NFCTAttrTuple(
                        family=socket.AF_INET, saddr=str(flow.saddr), daddr=str(flow.daddr), proto=flow.proto
                    )
                    candidates = await self._dump(4, filt)
                for found, tup in candidates:
                    if (found.saddr, found.daddr, found.proto) == (flow.saddr, flow.daddr, flow.proto) and (
                        not flow.sport or found.sport == flow.sport
                    ):
                        exact.append((version, tup))
        removed = 0
        for i in range(0, len(exact), self.batch):
            chunk = exact[i : i + self.batch]
            results = await asyncio.gather(
                *(self._socks[v].entry("del", tuple_orig=t) for v, t in chunk), return_exceptions=True
            )
            for (_v, tup), res in zip(chunk, results, strict=True):
                if not isinstance(res, BaseException):
                    removed += 1
                elif not (isinstance(res, NetlinkError) and res.code == errno.ENOENT):
                    code = res.code if isinstance(res, NetlinkError) else errno.EIO
                    raise ConntrackError(code, f"deleting conntrack entry {tup} failed: {os.strerror(code)}")
        return removed


def _decode(version: int, msg: Any) -> tuple[Flow, NFCTAttrTuple] | None:
    """The original tuple of one ctnetlink message as a Flow, plus the exact tuple to delete it."""
    orig = msg.get_attr("CTA_TUPLE_ORIG")
    if orig is None:
        return None
    ip = orig.get_attr("CTA_TUPLE_IP")
    proto = orig.get_attr("CTA_TUPLE_PROTO")
    prefix = "CTA_IP_V4_" if version == 4 else "CTA_IP_V6_"
    saddr, daddr = ip.get_attr(prefix + "SRC"), ip.get_attr(prefix + "DST")
    num = proto.get_attr("CTA_PROTO_NUM")
    if saddr is None or daddr is None or num is None:
        return None
    family = _family(version)
    icmp_num, icmp = _ICMP[version]
    if num == icmp_num:
        ident = proto.get_attr(icmp + "ID") or 0
        tup = NFCTAttrTuple(
            family=family,
            saddr=saddr,
            daddr=daddr,
            proto=num,
            icmp_id=ident,
            icmp_type=proto.get_attr(icmp + "TYPE"),
            icmp_code=proto.get_attr(icmp + "CODE"),
        )
        flow = Flow(ipaddress.ip_address(saddr), ipaddress.ip_address(daddr), num, 0, ident)
        return flow, tup
    sport = proto.get_attr("CTA_PROTO_SRC_PORT") or 0
    dport = proto.get_attr("CTA_PROTO_DST_PORT") or 0
    tup = NFCTAttrTuple(family=family, saddr=saddr, daddr=daddr, proto=num, sport=sport, dport=dport)
    return Flow(ipaddress.ip_address(saddr), ipaddress.ip_address(daddr), num, dport, sport), tup
