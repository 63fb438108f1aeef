"""Hostile input: the annotated cases, plus generated ones (sizes, encodings, nesting, entity bombs).

Every input here must come back as a Rejected or Skipped with a reason that
names the problem, quickly and in bounded memory: a sender must not be able
to stall or bloat the ingest thread.
"""

from __future__ import annotations

import json
import random
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

from tests.events.formats.corpus import DATA, RECEIVED, SOURCE, check
from userseg.events.formats import FORMATS, MAX_LINE, parse
from userseg.events.model import LoginEvent, ParseResult, Rejected

CASES: dict[str, list[dict[str, Any]]] = {
    k: v
    for k, v in json.loads((DATA / "hostile" / "cases.json").read_text()).items()
    if not k.startswith("_")
}
FLAT = [(fmt, c) for fmt, rows in CASES.items() for c in rows]
SAMBA = (DATA / "samba" / "kinit-tcp-ok.log").read_text().rstrip("\n")
SAMPLES = {
    "samba": SAMBA,
    "nxlog": (DATA / "windows-samples" / "nxlog" / "4768-tgt-request.json").read_text(),
    "winlogbeat": (DATA / "windows-samples" / "winlogbeat" / "4768-tgt-request.json").read_text(),
    "snare": (DATA / "windows-samples" / "snare" / "4768-tgt-request.log").read_text(),
    "xml": (DATA / "windows-samples" / "xml" / "4624-logon-type3-ntlm.xml").read_text(),
}
DEADLINE = 0.5  # seconds; a well-behaved parse of 64 KB takes a few milliseconds
PEAK = 16 * 2**20  # bytes of Python allocations during one parse


def run(fmt: str, data: str | bytes) -> ParseResult:
    return parse(fmt, data, source=SOURCE, received=RECEIVED)


def bounded(fn: Callable[[], ParseResult]) -> ParseResult:
    """Run one parse, asserting the time and memory it may take."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = fn()
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < DEADLINE, f"took {elapsed:.3f} s"
    assert peak < PEAK, f"peak {peak / 2**20:.1f} MiB"
    return result


@pytest.mark.parametrize(("fmt", "case"), FLAT, ids=[f"{f}: {c['name']}" for f, c in FLAT])
def test_annotated_cases(fmt: str, case: dict[str, Any], json_backend: str) -> None:
    result = bounded(lambda: run(fmt, case["input"]))
    if case["result"] == "event":
        assert isinstance(result, LoginEvent), result
    else:
        check(result, case)
    if fmt != "snare" and fmt in CASES:  # auto must agree (a Snare case may not carry the marker)
        auto = run("auto", case["input"])
        assert type(auto) is type(result) or "unrecognised" in getattr(auto, "reason", "")


def test_every_format_has_hostile_cases() -> None:
    assert set(CASES) == set(FORMATS) - {"auto"}
    assert all(len(rows) >= 7 for rows in CASES.values())


# -- sizes -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("as_bytes", [False, True])
def test_oversized_input_is_rejected_before_parsing(fmt: str, as_bytes: bool) -> None:
    text = SAMPLES.get(fmt, SAMBA)
    text = text + " " * (MAX_LINE + 1 - len(text.encode()))
    result = bounded(lambda: run(fmt, text.encode() if as_bytes else text))
    assert isinstance(result, Rejected) and result.reason == "input too long (65537 bytes, limit 65536)"


def test_exactly_the_limit_is_parsed() -> None:
    padded = " " * (MAX_LINE - len(SAMBA.encode())) + SAMBA  # Samba indents its lines anyway
    assert len(padded.encode()) == MAX_LINE
    assert isinstance(run("samba", padded), LoginEvent)
    assert isinstance(run("samba", " " + padded), Rejected)


def test_non_ascii_text_is_measured_in_utf8_bytes() -> None:
    obj = json.loads(SAMBA)
    obj["Authentication"]["serviceDescription"] = "€" * 22000  # 22,000 characters, 66,000 bytes
    result = run("samba", json.dumps(obj, ensure_ascii=False))
    assert isinstance(result, Rejected) and "too long" in result.reason


@pytest.mark.parametrize("fmt", ["samba", "nxlog", "winlogbeat", "xml", "auto"])
def test_long_names_are_rejected_at_257_characters(fmt: str) -> None:
    def with_user(user: str) -> str:
        if fmt in ("samba", "auto"):
            return SAMBA.replace('"becameAccount": "alice"', f'"becameAccount": "{user}"')
        if fmt == "xml":
            return SAMPLES["xml"].replace(">z123<", f">{user}<")
        return SAMPLES[fmt].replace('"TargetUserName":"pgustavo"', f'"TargetUserName":"{user}"')

    ok = run(fmt, with_user("ü" * 256))
    assert isinstance(ok, LoginEvent) and ok.user == "ü" * 256
    bad = run(fmt, with_user("ü" * 257))
    assert isinstance(bad, Rejected) and "user name too long (257 characters, limit 256)" in bad.reason


# -- encodings -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_invalid_utf8_is_rejected_with_its_offset(fmt: str) -> None:
    data = SAMPLES.get(fmt, SAMBA).encode()
    broken = data[:40] + b"\xff" + data[40:]
    result = run(fmt, broken)
    assert isinstance(result, Rejected) and result.reason == "input is not UTF-8 (byte 0xff at offset 40)"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("seed", range(5))
def test_binary_garbage_is_rejected(fmt: str, seed: int) -> None:
    data = random.Random(seed).randbytes(4096)
    assert isinstance(bounded(lambda: run(fmt, data)), Rejected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_nul_bytes_alone_are_rejected(fmt: str) -> None:
    assert isinstance(run(fmt, b"\x00" * 1000), Rejected)


def test_raw_nul_inside_the_json_is_rejected() -> None:
    result = run("samba", SAMBA.replace("alice", "ali\x00ce"))
    assert isinstance(result, Rejected) and "not valid JSON" in result.reason


def test_raw_nul_in_a_snare_account_is_rejected() -> None:
    result = run("snare", SAMPLES["snare"].replace("Account Name:  gnianios", "Account Name:  gni\x00anios"))
    assert isinstance(result, Rejected) and "U+0000" in result.reason


def test_raw_nul_in_xml_is_rejected() -> None:
    result = run("xml", SAMPLES["xml"].replace(">z123<", ">z1\x0023<"))
    assert isinstance(result, Rejected) and "not well-formed" in result.reason


@pytest.mark.parametrize("fmt", FORMATS)
def test_lone_surrogates_from_a_lenient_decoder_are_rejected(fmt: str, json_backend: str) -> None:
    """Text decoded with errors='surrogateescape' upstream is not Unicode: rejected like bad bytes."""
    text = SAMPLES.get(fmt, SAMBA)
    result = run(fmt, text[:30] + "\udcff" + text[30:])
    assert isinstance(result, Rejected)
    assert result.reason == "input is not valid Unicode (lone surrogate U+DCFF at 30)"


@pytest.mark.parametrize(
    "user", ["\u0430lice", "\u01c5ane", "\uff4a\uff4f\uff48\uff4e", "\u03a9mega", "ma\u00f1ana", "\u24d0lice"]
)
def test_homoglyph_names_pass_unchanged(user: str) -> None:
    """Look-alike letters are letters: the rules' directory lookup decides, not the parser."""
    for fmt, text in (
        ("samba", SAMBA.replace('"becameAccount": "alice"', json.dumps({"becameAccount": user})[1:-1])),
        ("xml", SAMPLES["xml"].replace(">z123<", f">{user}<")),
    ):
        ev = run(fmt, text)
        assert isinstance(ev, LoginEvent) and ev.user == user, (fmt, ev)


# -- nesting and bombs --------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["samba", "nxlog", "winlogbeat", "auto"])
@pytest.mark.parametrize("shape", ["array", "object"])
def test_deep_json_nesting_is_rejected_quickly(fmt: str, shape: str, json_backend: str) -> None:
    if shape == "array":
        text = '{"a":' + "[" * 32_000 + "]" * 32_000 + "}"
    else:
        text = '{"a":' * 10_000 + "1" + "}" * 10_000
    assert len(text) <= MAX_LINE
    result = bounded(lambda: run(fmt, text))
    assert isinstance(result, Rejected) and ("JSON" in result.reason or "nested" in result.reason), result


def test_huge_numbers_are_rejected(json_backend: str) -> None:
    text = SAMBA.replace('"eventId": 4624', '"eventId": 1' + "0" * 5000)
    result = bounded(lambda: run("samba", text))
    assert isinstance(result, Rejected)


def test_deep_xml_nesting_is_rejected() -> None:
    inner = "<a>" * 8_000 + "</a>" * 8_000
    text = SAMPLES["xml"].replace("<EventData>", f"<EventData>{inner}")
    result = bounded(lambda: run("xml", text))
    assert isinstance(result, Rejected) and "nested deeper than 32" in result.reason


def entity_bomb(levels: int, fanout: int) -> str:
    ents = '<!ENTITY e0 "' + "x" * 100 + '">'
    ents += "".join(f'<!ENTITY e{i} "' + f"&e{i - 1};" * fanout + '">' for i in range(1, levels + 1))
    return f"<?xml version='1.0'?><!DOCTYPE Event [{ents}]>" + SAMPLES["xml"].replace(
        ">z123<", f">&e{levels};<"
    )


@pytest.mark.parametrize(("levels", "fanout"), [(10, 10), (30, 2), (1, 600)])
def test_entity_expansion_bombs_are_refused_before_expansion(levels: int, fanout: int) -> None:
    result = bounded(lambda: run("xml", entity_bomb(levels, fanout)))
    assert isinstance(result, Rejected) and "declarations are refused" in result.reason
    auto = bounded(lambda: run("auto", entity_bomb(levels, fanout)))
    assert isinstance(auto, Rejected) and "declarations are refused" in auto.reason


def test_bomb_without_the_prefix_check_is_still_refused_by_the_doctype_handler() -> None:
    """Defence in depth: the DOCTYPE after <Event> text never reaches entity expansion either."""
    text = "<Event>" + entity_bomb(10, 10)[len("<?xml version='1.0'?>") :]
    result = bounded(lambda: run("xml", text))
    assert isinstance(result, Rejected)


def test_many_small_data_elements_parse_quickly() -> None:
    extra = "".join(f"<Data Name='F{i}'>v</Data>" for i in range(2000))
    ev = bounded(lambda: run("xml", SAMPLES["xml"].replace("<EventData>", f"<EventData>{extra}")))
    assert isinstance(ev, LoginEvent) and ev.user == "z123"


def test_label_flood_in_a_snare_message_parses_quickly() -> None:
    flood = "   Account Name:  x" * 3000
    ev = bounded(
        lambda: run("snare", SAMPLES["snare"].replace("Account Information:", "Account Information:" + flood))
    )
    assert isinstance(ev, LoginEvent) and ev.user == "x"
