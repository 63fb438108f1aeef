"""Corpus loading and comparison shared by the parser tests (data in tests/data/events/)."""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

from userseg.events.formats import common
from userseg.events.model import EventKind, LoginEvent, ParseResult, Rejected, Skipped

REPO = Path(__file__).resolve().parents[3]
DATA = REPO / "tests" / "data" / "events"
RECEIVED = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)  # after every corpus event
SOURCE = "corpus-source"
_NOT_INPUT = {"expected.json", "README.md"}


@dataclass(frozen=True)
class Case:
    """One input (a whole file, or one line of a Samba log) and what it must become."""

    id: str
    path: Path
    data: bytes
    fmt: str
    expect: dict[str, Any]


def expected(directory: str) -> dict[str, list[dict[str, Any]]]:
    raw: dict[str, Any] = json.loads((DATA / directory / "expected.json").read_text())
    return {k: v for k, v in raw.items() if not k.startswith("_")}


def input_files(directory: str) -> list[str]:
    root = DATA / directory
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name not in _NOT_INPUT
    )


def cases(directory: str, fmt: str, *, per_line: bool = False) -> list[Case]:
    """Every annotated input of a corpus directory (per line for logs with one event a line)."""
    out: list[Case] = []
    for name, expects in expected(directory).items():
        path = DATA / directory / name
        raw = path.read_bytes()
        inputs = raw.splitlines(keepends=True) if per_line else [raw]
        assert len(inputs) == len(expects), f"{name}: {len(inputs)} inputs, {len(expects)} expectations"
        for i, (data, exp) in enumerate(zip(inputs, expects, strict=True)):
            case_id = f"{directory}/{name}" + (f":{i + 1}" if per_line else "")
            out.append(Case(case_id, path, data, exp.get("format", fmt), exp))
    return out


def params(items: list[Case]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("case", items, ids=[c.id for c in items])


def check(result: ParseResult, exp: dict[str, Any], *, received: datetime = RECEIVED) -> None:
    """Assert that `result` is what the annotation says (see tests/data/events/README.md)."""
    want = exp["result"]
    if want in ("skipped", "rejected"):
        assert isinstance(result, Skipped if want == "skipped" else Rejected), result
        reasons = exp["reason"] if isinstance(exp["reason"], list) else [exp["reason"]]
        assert any(r in result.reason for r in reasons), (result.reason, reasons)
        return
    assert want == "event", exp
    assert isinstance(result, LoginEvent), result
    time = received if exp["time"] == "received" else datetime.fromisoformat(exp["time"])
    ip = None if exp["ip"] is None else ipaddress.ip_address(exp["ip"])
    got = (
        result.kind,
        result.user,
        result.domain,
        result.ip,
        result.time,
        result.event_id,
        result.logon_type,
        result.host,
        result.logon_id,
        result.ttl,
        result.source,
    )
    assert got == (
        EventKind(exp["kind"]),
        exp["user"],
        exp["domain"],
        ip,
        time,
        exp["event_id"],
        exp.get("logon_type"),
        exp["host"],
        exp.get("logon_id", ""),
        None,
        SOURCE,
    )
    assert result.time.utcoffset() == timedelta(0)
    detail = dict(result.detail)
    assert len(detail) == len(result.detail), f"duplicate detail keys: {result.detail}"
    for key, value in exp.get("detail", {}).items():
        assert detail.get(key) == value, (key, detail)


def json_backends() -> Iterator[Any]:
    """pytest params: the stdlib decoder always, orjson where it is installed."""
    yield pytest.param(None, id="stdlib-json")
    try:
        from orjson import loads
    except ImportError:
        yield pytest.param(None, id="orjson", marks=pytest.mark.skip(reason="orjson is not installed"))
    else:
        yield pytest.param(loads, id="orjson")


@pytest.fixture(params=list(json_backends()))
def json_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with each JSON decoder the parsers can use (the result must not depend on it)."""
    monkeypatch.setattr(common, "_fast_loads", request.param)
    return "orjson" if request.param is not None else "stdlib"


def _client(a: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    v4 = a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) else a
    mapped = v4 is not None and v4 != a  # the parser turns an IPv4-mapped address into IPv4
    return not (a.is_loopback or a.is_unspecified or a.is_multicast or str(a) == "255.255.255.255" or mapped)


CLIENT_IP4 = st.ip_addresses(v=4).filter(_client)  # addresses a parser keeps as a client address
CLIENT_IP6 = st.ip_addresses(v=6).filter(_client)
BUILTIN_DOMAINS = ("nt authority", "window manager", "font driver host", "nt service")


def samples_dir() -> Path | None:
    """The shared samples directory ($USERSEG_SAMPLES, default <repo>/../shared/samples), if present."""
    path = Path(os.environ.get("USERSEG_SAMPLES", REPO.parent / "shared" / "samples"))
    return path if path.is_dir() else None
