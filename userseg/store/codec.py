"""Conversions between model objects and table rows, and the store's error type.

Rows hold plain strings and JSON text; the rest of userseg only ever sees
model objects.  Every decoder names the table, the row and the column it was
reading when it finds something it cannot turn back into a model value, so a
hand-edited or half-migrated database produces a sentence an operator can act
on ("table applications, row 'erp': destinations[1]: bad address ...") instead
of a traceback.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
from collections.abc import Callable, Iterator
from collections.abc import Mapping as MappingABC
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TypeVar

from userseg.model import (
    Action,
    AddressRange,
    Application,
    IPAddress,
    Mapping,
    Mode,
    ModelError,
    Policy,
    Service,
    Subject,
    canonical,
)

T = TypeVar("T")


class StoreError(RuntimeError):
    """A store operation was refused or failed; the message says why, with names."""


def corrupt(table: str, row: str, problem: str) -> StoreError:
    return StoreError(f"corrupt data in table {table}, row {row!r}: {problem}")


def utc(value: datetime, what: str) -> datetime:
    """Normalise an aware datetime to UTC; a naive one is refused (no timezone guessing)."""
    if not isinstance(value, datetime):
        raise StoreError(f"{what}: expected a datetime, got {value!r}")
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise StoreError(f"{what}: naive datetime {value.isoformat()} (pass a timezone-aware time)")
    return value.astimezone(UTC)


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def dump(value: object) -> str:
    """Compact, key-sorted JSON so equal values produce equal text (cheap change detection)."""
    return _ENCODER.encode(value)


def load(text: str | None, table: str, row: str, column: str) -> Any:
    if text is None:
        raise corrupt(table, row, f"{column}: missing value")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise corrupt(table, row, f"{column}: not valid JSON ({exc})") from None


def load_strings(text: str | None, table: str, row: str, column: str) -> list[str]:
    value = load(text, table, row, column)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise corrupt(table, row, f"{column}: expected a JSON list of strings, got {text!r}")
    return value


def parse_each(
    texts: list[str], parse: Callable[[str], T], table: str, row: str, column: str, *, non_empty: bool
) -> tuple[T, ...]:
    if non_empty and not texts:
        raise corrupt(table, row, f"{column}: empty list")
    out: list[T] = []
    for i, text in enumerate(texts):
        try:
            out.append(parse(text))
        except ModelError as exc:
            raise corrupt(table, row, f"{column}[{i}]: {exc}") from None
    return tuple(out)


def enum_value(enum: type[Action] | type[Mode], text: str, table: str, row: str, column: str) -> Any:
    try:
        return enum(text)
    except ValueError:
        raise corrupt(table, row, f"{column}: unknown value {text!r}") from None


# --- applications -----------------------------------------------------------


def application_doc(app: Application) -> dict[str, Any]:
    """The JSON-able form used both for audit before/after and to compare for no-op writes."""
    return {
        "name": app.name,
        "destinations": [str(d) for d in app.destinations],
        "services": [str(s) for s in app.services],
        "labels": sorted(app.labels),
        "description": app.description,
    }


def application_from_row(
    name: str, destinations: str, services: str, labels: str, description: str
) -> Application:
    t = "applications"
    return Application(
        name=name,
        destinations=parse_each(
            load_strings(destinations, t, name, "destinations"),
            AddressRange.parse,
            t,
            name,
            "destinations",
            non_empty=True,
        ),
        services=parse_each(
            load_strings(services, t, name, "services"), Service.parse, t, name, "services", non_empty=True
        ),
        labels=frozenset(load_strings(labels, t, name, "labels")),
        description=description or "",
    )


# --- policies ---------------------------------------------------------------


def policy_doc(p: Policy) -> dict[str, Any]:
    return {
        "name": p.name,
        "priority": p.priority,
        "subjects": [str(s) for s in p.subjects],
        "application": p.application,
        "action": p.action.value,
        "mode": p.mode.value,
        "enabled": p.enabled,
        "description": p.description,
    }


def policy_from_row(
    name: str,
    priority: int,
    subjects: str,
    application: str,
    action: str,
    mode: str,
    enabled: bool,
    description: str,
) -> Policy:
    t = "policies"
    return Policy(
        name=name,
        priority=priority,
        subjects=parse_each(
            load_strings(subjects, t, name, "subjects"), Subject.parse, t, name, "subjects", non_empty=True
        ),
        application=application,
        action=enum_value(Action, action, t, name, "action"),
        mode=enum_value(Mode, mode, t, name, "mode"),
        enabled=bool(enabled),
        description=description or "",
    )


# --- mappings ---------------------------------------------------------------


def mapping_row(m: Mapping) -> dict[str, Any]:
    """A validated insert row; the user name is canonicalised here, once, for every writer.

    Called 250k times by a bulk load, so the happy path does no string
    formatting; messages are only built once something is wrong.
    """
    addr = m.ip
    if type(addr) is ipaddress.IPv4Address:
        ip_text = socket.inet_ntoa(addr.packed)
    elif isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address):
        ip_text = str(addr)
    else:
        raise StoreError(f"mapping for {addr!r}: ip must be an ipaddress.IPv4Address or IPv6Address")
    user = canonical(m.user)
    if not user:
        raise StoreError(f"mapping for {ip_text}: empty user name")
    if not isinstance(m.source, str) or not 1 <= len(m.source) <= 64:
        raise StoreError(f"mapping for {ip_text}: source must be 1-64 characters, got {m.source!r}")
    times: tuple[datetime, ...] = (m.first_seen, m.last_seen, m.expires_at)
    if (
        getattr(times[0], "tzinfo", None) is not UTC
        or getattr(times[1], "tzinfo", None) is not UTC
        or getattr(times[2], "tzinfo", None) is not UTC
    ):
        times = tuple(utc(t, f"mapping for {ip_text}: {f}") for t, f in zip(times, _TIME_FIELDS, strict=True))
    provenance = m.provenance
    if type(provenance) is StoredProvenance:
        prov_text = provenance.text  # read from the store and not changed since: written back as it was
    elif provenance:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in provenance.items()):
            raise StoreError(f"mapping for {ip_text}: provenance must map strings to strings")
        prov_text = _ENCODER.encode(dict(provenance))
    else:
        prov_text = "{}"
    return {
        "ip": ip_text,
        "user_name": user,
        "source": m.source,
        "first_seen": times[0],
        "last_seen": times[1],
        "expires_at": times[2],
        "provenance": prov_text,
    }


_TIME_FIELDS = ("first_seen", "last_seen", "expires_at")


def parse_ip(text: str) -> IPAddress:
    """Stored IP text -> address; inet_pton is ~4x faster than ipaddress's parser."""
    try:
        if ":" in text:
            return ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, text))
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text))
    except (OSError, TypeError):
        return ipaddress.ip_address(text)  # the slow path raises a proper ValueError


class StoredProvenance(MappingABC[str, str]):
    """A stored mapping's provenance, kept as its JSON text and decoded on first use.

    Why lazy: a login-made mapping carries a dozen provenance keys (~400 bytes
    of JSON).  Decoding them for every row cost seconds and, as dicts, ~1.5 KB
    per mapping (over 350 MB at 250k) at every start-up, yet only `--why` and
    a refresh of that one IP ever look inside.  A row whose text is not a JSON
    object of strings raises the usual StoreError naming table, row and column
    when it is looked into; it no longer stops the whole snapshot from loading.
    """

    __slots__ = ("_ip", "_text", "_value")

    def __init__(self, text: str, ip: str) -> None:
        self._text = text
        self._ip = ip
        self._value: dict[str, str] | None = None

    @property
    def text(self) -> str:
        """The stored JSON text, unchanged."""
        return self._text

    def _decoded(self) -> dict[str, str]:
        if self._value is None:
            value = load(self._text, "mappings", self._ip, "provenance")
            if not isinstance(value, dict) or not all(type(v) is str for v in value.values()):
                raise corrupt(
                    "mappings", self._ip, f"provenance: expected a JSON object of strings, got {self._text!r}"
                )
            self._value = value
        return self._value

    def __getitem__(self, key: str) -> str:
        return self._decoded()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded())

    def __len__(self) -> int:
        return len(self._decoded())

    def __repr__(self) -> str:
        return f"StoredProvenance({self._text!r})"


# One shared, immutable empty provenance instead of a new dict per row.
NO_PROVENANCE: MappingABC[str, str] = MappingProxyType({})
_intern = sys.intern


def mapping_from_row(
    ip: str,
    user: str,
    source: str,
    first_seen: datetime,
    last_seen: datetime,
    expires_at: datetime,
    provenance: str | None,
) -> Mapping:
    """Hot path of snapshot_parts (250k rows): no work beyond what spotting a corrupt row needs.

    User and source names are interned (a user holds several IPs, and a few
    sources name every row), a timestamp equal to the one before it is shared,
    and the provenance stays text until someone reads it: the daemon keeps
    every active mapping in memory, so each byte here counts 250k times.
    """
    try:
        addr = parse_ip(ip)
    except ValueError:
        raise corrupt("mappings", ip, "ip: not an IP address") from None
    if not (
        isinstance(first_seen, datetime)
        and isinstance(last_seen, datetime)
        and isinstance(expires_at, datetime)
    ):
        bad = [
            f"{f}={v!r}"
            for f, v in zip(_TIME_FIELDS, (first_seen, last_seen, expires_at), strict=True)
            if not isinstance(v, datetime)
        ]
        raise corrupt("mappings", ip, "not a timestamp: " + ", ".join(bad))
    if type(user) is not str or type(source) is not str:
        raise corrupt("mappings", ip, f"user {user!r} or source {source!r} is not text")
    if last_seen == first_seen:
        last_seen = first_seen
    if provenance == "{}" or provenance is None:
        prov: MappingABC[str, str] = NO_PROVENANCE
    else:
        prov = StoredProvenance(provenance, ip)
    return Mapping(addr, _intern(user), _intern(source), first_seen, last_seen, expires_at, prov)


def mapping_doc(m: Mapping) -> dict[str, Any]:
    """The audit form.  An unreadable stored provenance is kept as its text, so that removing
    such a mapping (by hand, or because its account was disabled) is still possible and audited."""
    try:
        provenance: dict[str, str] = dict(m.provenance)
    except StoreError:
        assert isinstance(m.provenance, StoredProvenance)
        provenance = {"unreadable": m.provenance.text}
    return {
        "ip": str(m.ip),
        "user": m.user,
        "source": m.source,
        "first_seen": m.first_seen.isoformat(),
        "last_seen": m.last_seen.isoformat(),
        "expires_at": m.expires_at.isoformat(),
        "provenance": provenance,
    }
