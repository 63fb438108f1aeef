"""Mappings recovered from the kernel: what a lost store is rebuilt from.

Why: the user maps' elements carry each mapping's user (their comment, see
core.usermap) and remaining lifetime (their timeout), so the kernel alone can
say who is on which IP until when.  When the database is corrupt, the service
rebuilds it from a full directory sync and from these (userseg.service).
Pure: it reads the ActualState that the firewall adapter's read() returns.
"""

from __future__ import annotations

from datetime import datetime
from ipaddress import IPv4Address, IPv6Address
from typing import NamedTuple

from userseg.core.table import NO_EXPIRY, ActualState, MapElement, SetSpec
from userseg.core.usermap import USER_MAP, USER_MAP_KIND, comment_user
from userseg.model import IPAddress


class RecoveredMapping(NamedTuple):
    """A mapping as the kernel remembers it."""

    ip: IPAddress
    user: str
    expires_at: datetime


def kernel_mappings(actual: ActualState) -> list[RecoveredMapping]:
    """Every mapping the kernel's user maps can vouch for, ordered by address (IPv4 first).

    An element counts only when its map is one of ours (declared as we declare
    it), it points at a chain of the table (not a foreign verdict), it carries
    a timeout (ours always do), and its comment is a whole name (comment_user).
    Everything else is left out: a rebuild loses those mappings until their
    users log on again, rather than granting anyone the wrong access.
    """
    out: list[RecoveredMapping] = []
    for version, name in USER_MAP.items():
        if actual.sets.get(name) != SetSpec(name, USER_MAP_KIND[version]):
            continue
        to_ip = IPv4Address if version == 4 else IPv6Address
        found = []
        for e in actual.elements.get(name, frozenset()):
            if not isinstance(e, MapElement) or e.target not in actual.chains or e.expires_at == NO_EXPIRY:
                continue
            if actual.chains[e.target].base is not None:
                continue  # a base chain is never a class
            user = comment_user(e.user)
            if user is not None:
                found.append(RecoveredMapping(to_ip(e.addr), user, e.expires_at))
        out += sorted(found)
    return out
