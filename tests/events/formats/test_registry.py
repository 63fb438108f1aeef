"""The registry and its contract: formats, bound parsers, programming errors, the never-raise guard."""

from __future__ import annotations

import pytest

from tests.events.formats.corpus import DATA, RECEIVED, SOURCE, samples_dir
from userseg.events import formats
from userseg.events.formats import FORMATS, MAX_LINE, parse, parser
from userseg.events.model import LoginEvent, Rejected

SAMBA_LINE = (DATA / "samba" / "kinit-tcp-ok.log").read_bytes()


def test_formats_and_limit() -> None:
    assert FORMATS == ("samba", "nxlog", "winlogbeat", "snare", "xml", "auto")
    assert MAX_LINE == 65536


def test_bound_parser_equals_parse() -> None:
    bound = parser("samba", source=SOURCE)
    assert bound(SAMBA_LINE, RECEIVED) == parse("samba", SAMBA_LINE, source=SOURCE, received=RECEIVED)
    assert isinstance(bound(SAMBA_LINE.decode(), RECEIVED), LoginEvent)
    assert bound.__name__ == "parse_samba"


def test_unknown_format_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown event format 'json'"):
        parse("json", SAMBA_LINE, source=SOURCE, received=RECEIVED)
    with pytest.raises(ValueError, match="known: samba, nxlog"):
        parser("Samba", source=SOURCE)


def test_naive_received_time_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse("samba", SAMBA_LINE, source=SOURCE, received=RECEIVED.replace(tzinfo=None))


def test_a_parser_bug_becomes_a_rejection_not_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(text: str, source: str, received: object) -> LoginEvent:
        raise KeyError("bug")

    monkeypatch.setitem(formats._PARSERS, "samba", broken)
    result = parse("samba", SAMBA_LINE, source=SOURCE, received=RECEIVED)
    assert isinstance(result, Rejected) and result.reason.startswith("internal parser error (KeyError)")


def test_the_in_repo_samples_are_the_shared_samples() -> None:
    """CI reads the copy; where shared/ is present it must be byte-identical to it."""
    shared = samples_dir()
    if shared is None:
        pytest.skip("shared samples not present (set USERSEG_SAMPLES to check the copy)")
    source = shared / "windows-events"
    copy = DATA / "windows-samples"
    names = sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file())
    assert names == sorted(
        str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file() and p.name != "expected.json"
    )
    for name in names:
        assert (source / name).read_bytes() == (copy / name).read_bytes(), name
