"""Set algebra on (address, protocol, port) boxes.

nftables interval sets of concatenations refuse overlapping elements, and the
per-packet cost must be one lookup, so ordered allow/deny rules are flattened
here into a *disjoint* set of boxes per entitlement class.  Regions are plain
lists of pairwise-disjoint Boxes; every operation keeps that invariant.
"""

from __future__ import annotations

from collections.abc import Iterable

from userseg.core.table import Box
from userseg.model import Application, Service

Region = list[Box]


def boxes_of(app: Application) -> Region:
    """The application's destinations x services as a disjoint region."""
    region: Region = []
    for dest in app.destinations:
        for service in app.services:
            proto = service.proto.number(dest.version)
            for ports in _merge_ports(service):
                add_box(region, Box(dest.version, dest.first, dest.last, proto, ports[0], ports[1]))
    return region


def _merge_ports(service: Service) -> list[tuple[int, int]]:
    """Merge overlapping/adjacent port ranges so one service yields few boxes."""
    spans = sorted((r.first, r.last) for r in service.port_ranges())
    merged: list[tuple[int, int]] = []
    for first, last in spans:
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def _overlaps(a: Box, b: Box) -> bool:
    return (
        a.version == b.version
        and a.proto == b.proto
        and a.addr_first <= b.addr_last
        and b.addr_first <= a.addr_last
        and a.port_first <= b.port_last
        and b.port_first <= a.port_last
    )


def box_minus(a: Box, b: Box) -> Region:
    """a \\ b as at most four disjoint boxes (address slabs first, then port slabs)."""
    if not _overlaps(a, b):
        return [a]
    out: Region = []
    lo = max(a.addr_first, b.addr_first)
    hi = min(a.addr_last, b.addr_last)
    if a.addr_first < lo:
        out.append(Box(a.version, a.addr_first, lo - 1, a.proto, a.port_first, a.port_last))
    if hi < a.addr_last:
        out.append(Box(a.version, hi + 1, a.addr_last, a.proto, a.port_first, a.port_last))
    if a.port_first < b.port_first:
        out.append(Box(a.version, lo, hi, a.proto, a.port_first, b.port_first - 1))
    if b.port_last < a.port_last:
        out.append(Box(a.version, lo, hi, a.proto, b.port_last + 1, a.port_last))
    return out


def minus(region: Iterable[Box], cut: Iterable[Box]) -> Region:
    """region \\ cut; stays disjoint because pieces of disjoint boxes are disjoint."""
    pieces = list(region)
    for c in cut:
        nxt: Region = []
        for p in pieces:
            nxt.extend(box_minus(p, c))
        pieces = nxt
        if not pieces:
            break
    return pieces


def add_box(region: Region, box: Box) -> None:
    """region |= box, adding only the parts not already covered."""
    region.extend(minus([box], [r for r in region if _overlaps(r, box)]))


def union(region: Region, other: Iterable[Box]) -> None:
    for b in other:
        add_box(region, b)


def contains(region: Iterable[Box], version: int, addr: int, proto: int, port: int) -> bool:
    return any(b.contains(version, addr, proto, port) for b in region)
