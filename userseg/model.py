"""Domain model shared by every layer: frozen, hashable, free of I/O.

Everything that crosses a boundary (store -> core, core -> firewall adapter,
CLI -> store) is one of these types, so the pure core never sees an ORM row,
an LDAP entry or an nftables JSON blob.  Parsing helpers live here because the
config loader, the CLI and the store all accept the same textual forms and must
reject bad input with the same message.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ModelError(ValueError):
    """Bad textual input for a model value; the message names the problem."""


class Proto(str, Enum):
    TCP = "tcp"
    UDP = "udp"
    ICMP = "icmp"

    def number(self, version: int) -> int:
        """IP protocol number; ICMP means ICMPv6 (58) for IPv6 destinations."""
        if self is Proto.TCP:
            return 6
        if self is Proto.UDP:
            return 17
        return 1 if version == 4 else 58


PROTO_BY_NUMBER: dict[int, Proto] = {6: Proto.TCP, 17: Proto.UDP, 1: Proto.ICMP, 58: Proto.ICMP}


class Action(str, Enum):
    ALLOW = "allow"
    DENY = "deny"


class Mode(str, Enum):
    ENFORCE = "enforce"
    STAGE = "stage"


class SubjectKind(str, Enum):
    GROUP = "group"
    USER = "user"
    ANY_AUTHENTICATED = "any-authenticated"
    UNKNOWN = "unknown"


class DenyMode(str, Enum):
    REJECT = "reject"  # TCP reset / ICMP admin-prohibited: users see an immediate refusal
    DROP = "drop"


def canonical(name: str) -> str:
    """AD names compare case-insensitively; every lookup key goes through here."""
    return name.strip().casefold()


_MAX_PORT = 65535


@dataclass(frozen=True, order=True)
class PortRange:
    first: int
    last: int

    def __post_init__(self) -> None:
        if not (0 <= self.first <= self.last <= _MAX_PORT):
            raise ModelError(f"port range {self.first}-{self.last} is not within 0-65535 in order")

    @classmethod
    def parse(cls, text: str) -> PortRange:
        text = text.strip()
        m = re.fullmatch(r"(\d{1,5})(?:-(\d{1,5}))?", text)
        if not m:
            raise ModelError(f"bad port or port range {text!r} (expected e.g. 443 or 8000-8100)")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else first
        return cls(first, last)

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


ALL_PORTS = PortRange(0, _MAX_PORT)


@dataclass(frozen=True, order=True)
class AddressRange:
    """An inclusive range of addresses of one IP version, stored as integers.

    Single addresses, CIDRs and first-last ranges all normalise to this, so set
    algebra in the core is plain integer interval arithmetic.
    """

    version: int
    first: int
    last: int

    def __post_init__(self) -> None:
        top = (1 << 32) - 1 if self.version == 4 else (1 << 128) - 1
        if self.version not in (4, 6) or not (0 <= self.first <= self.last <= top):
            raise ModelError(f"invalid IPv{self.version} address range {self.first}-{self.last}")

    @classmethod
    def parse(cls, text: str) -> AddressRange:
        text = text.strip()
        try:
            if "-" in text:
                a_text, b_text = (p.strip() for p in text.split("-", 1))
                a = ipaddress.ip_address(a_text)
                b = ipaddress.ip_address(b_text)
                if a.version != b.version:
                    raise ModelError(f"address range {text!r} mixes IPv4 and IPv6")
                if int(a) > int(b):
                    raise ModelError(f"address range {text!r} ends before it starts")
                return cls(a.version, int(a), int(b))
            if "/" in text:
                net = ipaddress.ip_network(text, strict=False)
                return cls(net.version, int(net.network_address), int(net.broadcast_address))
            addr = ipaddress.ip_address(text)
            return cls(addr.version, int(addr), int(addr))
        except ModelError:
            raise
        except ValueError as exc:
            raise ModelError(f"bad address, CIDR or range {text!r}: {exc}") from None

    @classmethod
    def of(cls, addr: IPAddress) -> AddressRange:
        return cls(addr.version, int(addr), int(addr))

    def contains(self, addr: IPAddress) -> bool:
        return addr.version == self.version and self.first <= int(addr) <= self.last

    def first_address(self) -> IPAddress:
        return ipaddress.ip_address(self.first) if self.version == 4 else ipaddress.IPv6Address(self.first)

    def last_address(self) -> IPAddress:
        return ipaddress.ip_address(self.last) if self.version == 4 else ipaddress.IPv6Address(self.last)

    def __str__(self) -> str:
        a, b = self.first_address(), self.last_address()
        if a == b:
            return str(a)
        try:
            nets = list(ipaddress.summarize_address_range(a, b))
        except (TypeError, ValueError):
            nets = []
        if len(nets) == 1:
            return str(nets[0])
        return f"{a}-{b}"


def ip(text: str) -> IPAddress:
    """Parse one IP address with a clear error."""
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise ModelError(f"bad IP address {text!r}") from None


@dataclass(frozen=True)
class Service:
    """A protocol with the destination ports it covers (empty ports = all ports)."""

    proto: Proto
    ports: tuple[PortRange, ...] = ()

    def __post_init__(self) -> None:
        if self.proto is Proto.ICMP and self.ports:
            raise ModelError("icmp takes no ports")

    @classmethod
    def parse(cls, text: str) -> Service:
        """Accept `tcp/443`, `tcp/80,443`, `udp/8000-8100`, `tcp` (all ports), `icmp`."""
        text = text.strip().lower()
        proto_text, _, ports_text = text.partition("/")
        try:
            proto = Proto(proto_text)
        except ValueError:
            raise ModelError(f"bad protocol in service {text!r} (expected tcp, udp or icmp)") from None
        if proto is Proto.ICMP and ports_text:
            raise ModelError(f"service {text!r}: icmp takes no ports")
        ports = tuple(PortRange.parse(p) for p in ports_text.split(",")) if ports_text else ()
        return cls(proto, ports)

    def port_ranges(self) -> tuple[PortRange, ...]:
        return self.ports or (ALL_PORTS,)

    def matches(self, proto: Proto, port: int | None) -> bool:
        if proto is not self.proto:
            return False
        if not self.ports or proto is Proto.ICMP:
            return True
        return port is not None and any(r.first <= port <= r.last for r in self.ports)

    def __str__(self) -> str:
        if not self.ports:
            return self.proto.value
        return f"{self.proto.value}/{','.join(str(p) for p in self.ports)}"


@dataclass(frozen=True)
class Application:
    """Named destinations x services; policies grant or deny it as a whole."""

    name: str
    destinations: tuple[AddressRange, ...]
    services: tuple[Service, ...]
    labels: frozenset[str] = frozenset()
    description: str = ""
    origin: str = "store"  # "config" when declared in the TOML file (config wins)

    def matches(self, dest: IPAddress, proto: Proto, port: int | None) -> bool:
        return any(d.contains(dest) for d in self.destinations) and any(
            s.matches(proto, port) for s in self.services
        )


@dataclass(frozen=True)
class Subject:
    kind: SubjectKind
    name: str = ""  # canonical() group or user name; empty for the two pseudo subjects

    @classmethod
    def parse(cls, text: str) -> Subject:
        """Accept `group:Finance`, `user:alice`, `any-authenticated`, `unknown`."""
        raw = text.strip()
        kind_text, sep, name = raw.partition(":")
        try:
            kind = SubjectKind(kind_text.strip().lower())
        except ValueError:
            raise ModelError(
                f"bad subject {text!r} (expected group:NAME, user:NAME, any-authenticated or unknown)"
            ) from None
        if kind in (SubjectKind.GROUP, SubjectKind.USER):
            if not sep or not name.strip():
                raise ModelError(f"subject {text!r} needs a name, e.g. {kind.value}:NAME")
            return cls(kind, canonical(name))
        if sep:
            raise ModelError(f"subject {kind.value!r} takes no name")
        return cls(kind)

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.name}" if self.name else self.kind.value


@dataclass(frozen=True)
class Policy:
    """One ordered rule; the first enforced rule whose subject and app match decides."""

    name: str
    priority: int
    subjects: tuple[Subject, ...]
    application: str
    action: Action
    mode: Mode = Mode.ENFORCE
    enabled: bool = True
    description: str = ""
    origin: str = "store"

    @property
    def sort_key(self) -> tuple[int, str]:
        return (self.priority, self.name)


@dataclass(frozen=True)
class User:
    name: str  # canonical sAMAccountName
    display_name: str = ""
    disabled: bool = False
    groups: frozenset[str] = frozenset()  # canonical names of effective (nested) groups


@dataclass(frozen=True)
class Group:
    name: str  # canonical
    display_name: str = ""
    dn: str = ""


@dataclass(frozen=True)
class Mapping:
    """A live user -> source IP binding, with where it came from."""

    ip: IPAddress
    user: str  # canonical
    source: str
    first_seen: datetime
    last_seen: datetime
    expires_at: datetime
    provenance: MappingABC[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class GatewaySettings:
    """How the gateway polices: who is a client, what is always reachable, how to refuse."""

    client_interfaces: tuple[str, ...] = ()
    client_networks: tuple[AddressRange, ...] = ()
    infrastructure: tuple[Application, ...] = ()
    deny_mode: DenyMode = DenyMode.REJECT
    log_group: int | None = 100  # NFLOG group for deny/stage logs; None disables logging
    log_rate_per_second: int = 50


@dataclass(frozen=True)
class Snapshot:
    """Everything compile() needs, read from the store (and config) at one instant."""

    users: MappingABC[str, User]
    mappings: tuple[Mapping, ...]
    applications: MappingABC[str, Application]
    policies: tuple[Policy, ...]  # any order; the core sorts by Policy.sort_key
    default_action: Action = Action.DENY
    gateway: GatewaySettings = GatewaySettings()

    def ordered_policies(self) -> tuple[Policy, ...]:
        return tuple(sorted(self.policies, key=lambda p: p.sort_key))
