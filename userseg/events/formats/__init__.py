"""Event payload parsers: one pure function per format, and the registry the sources use.

    parse("samba", line, source="dc1-audit", received=now) -> LoginEvent | Skipped | Rejected

Every parser has the same contract, whatever the input:

- It never raises for any input: malformed input is `Rejected(reason naming
  the problem)`, well-formed input that is not a usable login event is
  `Skipped(reason)` (another event id, no account, no client address).
- It is pure: the receive time is passed in (used as the event time only
  when the event has no time with a zone), nothing is read from the clock,
  the network or files; it may be called from any thread.
- Input is at most MAX_LINE bytes of UTF-8 (str or bytes).

The format modules describe their input and decisions; `common` the limits
and checks that hold for all of them; `windows` what each Windows event id
means.  `parser(fmt, source=...)` binds a format and source once for a hot
loop: it skips the registry lookup and keyword handling per line.

A programming error (an unknown format name, a naive `received`) raises
ValueError: that is configuration, not input, and must fail loudly at start.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Final

from userseg.events.formats import auto, eventxml, nxlog, samba, snare, winlogbeat
from userseg.events.formats.common import MAX_LINE, Reject, Skip, decode, utc
from userseg.events.model import ParseResult, Rejected, Skipped

__all__ = ["FORMATS", "MAX_LINE", "Parser", "parse", "parser"]

FORMATS: Final[tuple[str, ...]] = ("samba", "nxlog", "winlogbeat", "snare", "xml", "auto")

TextParser = Callable[[str, str, datetime], ParseResult]
Parser = Callable[[str | bytes, datetime], ParseResult]

_PARSERS: Final[dict[str, TextParser]] = {
    "samba": samba.parse_text,
    "nxlog": nxlog.parse_text,
    "winlogbeat": winlogbeat.parse_text,
    "snare": snare.parse_text,
    "xml": eventxml.parse_text,
    "auto": auto.parse_text,
}


def _run(fn: TextParser, data: str | bytes, source: str, received: datetime) -> ParseResult:
    received = utc(received)
    try:
        return fn(decode(data), source, received)
    except Reject as exc:
        return Rejected(exc.reason)
    except Skip as exc:
        return Skipped(exc.reason)
    except RecursionError:
        return Rejected("input nested too deeply")
    except Exception as exc:  # a parser bug; the contract is "never raise", and the fuzz tests hunt these
        return Rejected(f"internal parser error ({type(exc).__name__}); please report this input")


def _lookup(fmt: str) -> TextParser:
    try:
        return _PARSERS[fmt]
    except KeyError:
        raise ValueError(f"unknown event format {fmt!r} (known: {', '.join(FORMATS)})") from None


def parse(fmt: str, data: str | bytes, *, source: str, received: datetime) -> ParseResult:
    """Parse one input of format `fmt` (one of FORMATS) from source `source`."""
    return _run(_lookup(fmt), data, source, received)


def parser(fmt: str, *, source: str) -> Parser:
    """`parse` with the format and source bound: `p(data, received) -> ParseResult`."""
    fn = _lookup(fmt)

    def bound(data: str | bytes, received: datetime) -> ParseResult:
        return _run(fn, data, source, received)

    bound.__name__ = f"parse_{fmt}"
    return bound
