"""Property tests: any input gives one of the three results, never an exception or a parser bug.

Three kinds of input: arbitrary bytes and text; structured mutations of the
real corpus (a JSON field replaced by any JSON value or removed, a Snare field
or XML value replaced by any text); and byte-level damage to real samples.
Round-trip properties live with each format's tests.
"""

from __future__ import annotations

import json
import os
from datetime import UTC
from typing import Any
from xml.sax.saxutils import escape

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.events.formats.corpus import DATA, RECEIVED, SOURCE
from userseg.events.formats import FORMATS, parse
from userseg.events.formats.auto import detect, json_format
from userseg.events.model import LoginEvent, ParseResult, Rejected, Skipped

FUZZ = settings(
    max_examples=int(os.environ.get("USERSEG_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _inputs(directory: str, pattern: str, per_line: bool = False) -> list[str]:
    out: list[str] = []
    for path in sorted((DATA / directory).glob(pattern)):
        text = path.read_text()
        out += text.splitlines() if per_line else [text]
    return out


JSON_SAMPLES = (
    [("samba", t) for t in _inputs("samba", "*.log", per_line=True)]
    + [("nxlog", t) for t in _inputs("windows-samples", "nxlog/*.json")]
    + [("winlogbeat", t) for t in _inputs("windows-samples", "winlogbeat/*.json")]
    + [("winlogbeat", t) for t in _inputs("winlogbeat-ecs", "*.json")]
)
SNARE = _inputs("windows-samples", "snare/*.log")
XML = _inputs("windows-samples", "xml/*.xml")
ALL_SAMPLES = [t for _, t in JSON_SAMPLES] + SNARE + XML


def sane(result: ParseResult) -> None:
    """The contract every result meets."""
    assert isinstance(result, LoginEvent | Skipped | Rejected), result
    if isinstance(result, Rejected | Skipped):
        assert result.reason and not result.reason.startswith("internal parser error"), result.reason
        assert len(result.reason) < 400
        return
    assert result.time.tzinfo is UTC and result.source == SOURCE
    assert result.user and len(result.user) <= 256 and len(result.domain) <= 256 and len(result.host) <= 256
    assert all(isinstance(k, str) and isinstance(v, str) and len(v) <= 259 for k, v in result.detail)
    assert result.ip is None or not (
        result.ip.is_loopback or result.ip.is_multicast or result.ip.is_unspecified
    )


def run(fmt: str, data: str | bytes) -> ParseResult:
    result = parse(fmt, data, source=SOURCE, received=RECEIVED)
    sane(result)
    return result


@FUZZ
@given(fmt=st.sampled_from(FORMATS), data=st.binary(max_size=3000))
def test_any_bytes(fmt: str, data: bytes) -> None:
    run(fmt, data)


@FUZZ
@given(fmt=st.sampled_from(FORMATS), text=st.text(max_size=3000))
def test_any_text(fmt: str, text: str) -> None:
    run(fmt, text)


@FUZZ
@given(
    fmt=st.sampled_from(FORMATS),
    marker=st.sampled_from(
        ["{", '{"type": "Authentication", "Authentication": {', "<Event>", "x\tMSWinEventLog\t"]
    ),
    tail=st.text(max_size=500),
)
def test_any_text_after_a_format_marker(fmt: str, marker: str, tail: str) -> None:
    run(fmt, marker + tail)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=80)
    | st.sampled_from(
        ["", "-", "0x0", "4624", "ipv4:198.18.10.11:1", "ipv6:::1:1", "unix:/x", "::ffff:1.2.3.4"]
    ),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)


def _paths(obj: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.append((*prefix, key))
            out += _paths(value, (*prefix, key))
    return out


@FUZZ
@given(sample=st.sampled_from(JSON_SAMPLES), data=st.data())
def test_json_field_mutations(sample: tuple[str, str], data: st.DataObject) -> None:
    fmt, text = sample
    obj = json.loads(text)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(obj)))
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()):
            parent[path[-1]] = data.draw(JSON_VALUES)
        else:
            del parent[path[-1]]
        if not _paths(obj):
            break
    mutated = json.dumps(obj, ensure_ascii=data.draw(st.booleans()))
    result = run(fmt, mutated)
    if json_format(obj) == fmt:  # auto classifies it as the same format: same answer
        auto = run("auto", mutated)
        if isinstance(result, Rejected):  # e.g. Infinity, which only the stdlib decoder accepts:
            assert isinstance(auto, Rejected)  # auto cannot name the format of what it cannot decode
        else:
            assert auto == result


@FUZZ
@given(sample=st.sampled_from(SNARE), data=st.data())
def test_snare_field_mutations(sample: str, data: st.DataObject) -> None:
    fields = sample.split("\t")
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(fields) - 1))
        fields[i] = data.draw(
            st.text(max_size=60) | st.sampled_from(["", "4624", "4768", "Security", "-", "N/A"])
        )
    mutated = "\t".join(fields)
    result = run("snare", mutated)
    if detect(mutated) == "snare":  # a mutated host field may hold an earlier "{" or "<Event"
        assert run("auto", mutated) == result


@FUZZ
@given(sample=st.sampled_from(XML), data=st.data())
def test_xml_value_mutations(sample: str, data: st.DataObject) -> None:
    parts = sample.split(">")
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(parts) - 2))
        _text, sep, rest = parts[i + 1].partition("<")
        if sep:  # replace the text of an element with arbitrary (escaped) text
            parts[i + 1] = escape(data.draw(st.text(max_size=40))) + "<" + rest
    run("xml", ">".join(parts))


@FUZZ
@given(sample=st.sampled_from(ALL_SAMPLES), data=st.data())
def test_byte_damage_to_real_samples(sample: str, data: st.DataObject) -> None:
    raw = bytearray(sample.encode())
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip" and raw:
            raw[at] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del raw[at : at + data.draw(st.integers(1, 16))]
        else:
            del raw[at:]
    for fmt in FORMATS:
        run(fmt, bytes(raw))
