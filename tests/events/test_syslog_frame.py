"""Syslog header parsing and TCP deframing (pure): RFC 5424, RFC 3164, non-standard and bare
messages, garbage, year inference, RFC 6587 framing; property tests that neither ever raises
and that framing round-trips whatever the chunking."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from userseg.events.model import Rejected
from userseg.events.syslog_frame import (
    MAX_MESSAGE,
    SKIP_LIMIT,
    FrameError,
    StreamDeframer,
    SyslogFormat,
    SyslogMessage,
    octet_counted,
    parse_header,
    split_datagram,
)

RECEIVED = datetime(2024, 6, 15, 12, 0, 0, tzinfo=UTC)
BOM = "\ufeff".encode()


def parsed(data: bytes, received: datetime = RECEIVED, **kwargs: object) -> SyslogMessage:
    result = parse_header(data, received=received, **kwargs)  # type: ignore[arg-type]
    assert isinstance(result, SyslogMessage), result
    return result


def rejected(data: bytes) -> str:
    result = parse_header(data, received=RECEIVED)
    assert isinstance(result, Rejected), result
    return result.reason


# ------------------------------------------------------------------------------------------ RFC 5424


def test_rfc5424_without_structured_data_and_with_bom() -> None:
    # RFC 5424 section 6.5, example 1.
    msg = parsed(
        b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - " + BOM + b"'su root' failed"
    )
    assert msg.format is SyslogFormat.RFC5424
    assert (msg.facility, msg.severity) == (4, 2)
    assert msg.timestamp == datetime(2003, 10, 11, 22, 14, 15, 3000, tzinfo=UTC)
    assert (msg.hostname, msg.app_name, msg.procid, msg.msgid) == ("mymachine.example.com", "su", "", "ID47")
    assert msg.structured_data == ""
    assert msg.message == "'su root' failed"


def test_rfc5424_with_structured_data_and_offset() -> None:
    data = (
        b'<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 evntslog 8710 ID47 [exampleSDID@32473 iut="3" '
        b'eventSource="Application" eventID="1011"][examplePriority@32473 class="high"] '
        + BOM
        + b'{"EventID": 4624}'
    )
    msg = parsed(data)
    assert (msg.facility, msg.severity) == (20, 5)
    assert msg.timestamp == datetime(2003, 8, 24, 12, 14, 15, 3, tzinfo=UTC)
    assert msg.timestamp is not None and msg.timestamp.utcoffset() == timedelta(hours=-7)
    assert msg.procid == "8710"
    assert msg.structured_data == (
        '[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"]'
        '[examplePriority@32473 class="high"]'
    )
    assert msg.message == '{"EventID": 4624}'


def test_rfc5424_structured_data_with_escapes_and_no_message() -> None:
    msg = parsed(b'<13>1 2024-01-01T00:00:00Z h app - - [x@1 a="q\\"]\\\\" b="]"]')
    assert msg.structured_data == '[x@1 a="q\\"]\\\\" b="]"]'
    assert msg.message == ""


def test_rfc5424_nil_values_and_zoneless_timestamp() -> None:
    msg = parsed(b"<13>1 - - - - - - hello")
    assert (msg.timestamp, msg.hostname, msg.app_name, msg.procid, msg.msgid) == (None, "", "", "", "")
    assert msg.message == "hello"
    plus_two = timezone(timedelta(hours=2))
    msg = parsed(b"<13>1 2024-01-01T10:00:00 host app 1 - - hi", local_tz=plus_two)
    assert msg.timestamp == datetime(2024, 1, 1, 8, 0, tzinfo=UTC)
    assert parsed(b"<13>1 yesterday host app 1 - - hi").timestamp is None  # unreadable: kept, no time


@pytest.mark.parametrize(
    "data",
    [b"<13>1 2024-01-01T00:00:00Z host app", b"<13>1 2024-01-01T00:00:00Z host app 1 ID SD-not-bracketed msg",
     b"<13>1  2024-01-01T00:00:00Z host app 1 ID - msg", b'<13>1 t h a p m [unterminated="x] msg'],
)  # fmt: skip
def test_broken_rfc5424_header_keeps_everything_after_the_pri(data: bytes) -> None:
    msg = parsed(data)
    assert msg.format is SyslogFormat.NONSTANDARD
    assert msg.message == data[4:].decode()


# ------------------------------------------------------------------------------------------ RFC 3164


def test_rfc3164_with_pid() -> None:
    msg = parsed(b'<38>Jun  5 09:07:03 dc01 Microsoft-Windows-Security-Auditing[636]: {"EventID":4624}\n')
    assert msg.format is SyslogFormat.RFC3164
    assert (msg.facility, msg.severity) == (4, 6)
    assert msg.timestamp == datetime(2024, 6, 5, 9, 7, 3, tzinfo=UTC)
    assert (msg.hostname, msg.app_name, msg.procid) == ("dc01", "Microsoft-Windows-Security-Auditing", "636")
    assert msg.message == '{"EventID":4624}'


def test_rfc3164_without_pid_without_host_and_without_tag() -> None:
    msg = parsed(b"<13>Jun 15 11:59:00 host1 nxlog: payload with: colons")
    assert (msg.hostname, msg.app_name, msg.procid, msg.message) == (
        "host1",
        "nxlog",
        "",
        "payload with: colons",
    )
    msg = parsed(b"<13>Jun 15 11:59:00 sshd[42]: no host here")
    assert (msg.hostname, msg.app_name, msg.procid, msg.message) == ("", "sshd", "42", "no host here")
    # Snare with its syslog header on: no `TAG:`, the whole tab-separated record is the message.
    msg = parsed(b"<14>Jun 15 11:59:00 DC01.example.lab MSWinEventLog\t1\tSecurity\t20311")
    assert (msg.hostname, msg.app_name, msg.message) == (
        "DC01.example.lab",
        "",
        "MSWinEventLog\t1\tSecurity\t20311",
    )
    # A first word that cannot be a host name is message, not host.
    msg = parsed(b'<14>Jun 15 11:59:00 {"EventID": 4624}')
    assert (msg.hostname, msg.message) == ("", '{"EventID": 4624}')


def test_rfc3164_day_and_fraction_variants() -> None:
    assert parsed(b"<13>Jun 05 01:02:03 h t: m").timestamp == datetime(2024, 6, 5, 1, 2, 3, tzinfo=UTC)
    assert parsed(b"<13>Jun 5 01:02:03 h t: m").timestamp == datetime(2024, 6, 5, 1, 2, 3, tzinfo=UTC)
    msg = parsed(b"<13>Jun 15 01:02:03.123456789 h t: " + BOM + b"m")
    assert msg.timestamp == datetime(2024, 6, 15, 1, 2, 3, 123456, tzinfo=UTC)
    assert msg.message == "m"


@pytest.mark.parametrize(
    ("received", "stamp", "year"),
    [
        (datetime(2025, 1, 1, 0, 0, 5, tzinfo=UTC), b"Dec 31 23:59:58", 2024),  # sent last year
        (datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC), b"Jan  1 00:00:01", 2025),  # sender's clock is fast
        (datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC), b"Dec 31 23:59:58", 2024),
        (datetime(2024, 7, 1, tzinfo=UTC), b"Jan  1 00:00:00", 2024),  # half a year is still this year
        (datetime(2024, 3, 1, tzinfo=UTC), b"Feb 29 12:00:00", 2024),
    ],
)
def test_rfc3164_year_is_the_nearest_to_received(received: datetime, stamp: bytes, year: int) -> None:
    msg = parsed(b"<13>" + stamp + b" host tag: m", received=received)
    assert msg.timestamp is not None and msg.timestamp.year == year


def test_rfc3164_local_zone_decides_the_year_at_midnight() -> None:
    # 23:30 UTC on Dec 31 is already 00:30 on Jan 1 in UTC+1: "Jan 1 00:29" is this (new) year.
    plus_one = timezone(timedelta(hours=1))
    msg = parsed(
        b"<13>Jan  1 00:29:00 h t: m", received=datetime(2024, 12, 31, 23, 30, tzinfo=UTC), local_tz=plus_one
    )
    assert msg.timestamp == datetime(2025, 1, 1, 0, 29, tzinfo=plus_one)


@pytest.mark.parametrize(
    "stamp", [b"Feb 29 12:00:00", b"Jun 31 00:00:00", b"Jun 15 24:00:00", b"Jun 15 1:02:03"]
)
def test_rfc3164_impossible_timestamp_is_nonstandard(stamp: bytes) -> None:
    msg = parsed(b"<13>" + stamp + b" h t: m", received=datetime(2025, 3, 1, tzinfo=UTC))
    assert msg.format is SyslogFormat.NONSTANDARD
    assert msg.message == stamp.decode() + " h t: m"


# ------------------------------------------------------------------------------------------ other forms


def test_pri_with_nonstandard_header_keeps_everything_after_the_pri() -> None:
    msg = parsed(b'<13>{"EventID": 4624, "TargetUserName": "alice"}\r\n')
    assert msg.format is SyslogFormat.NONSTANDARD
    assert (msg.facility, msg.severity, msg.timestamp, msg.hostname) == (1, 5, None, "")
    assert msg.message == '{"EventID": 4624, "TargetUserName": "alice"}'


def test_line_without_pri_is_the_message() -> None:
    snare = (
        b" CLONWWADDC1.clone-systems.com\tMSWinEventLog\t1\tSecurity\t20311\tFri Feb 18 00:01:44 2011\t4624"
    )
    msg = parsed(snare + b"\n")
    assert msg.format is SyslogFormat.BARE
    assert (msg.facility, msg.severity) == (1, 5)  # RFC 3164: user.notice when there is no PRI
    assert msg.message == snare.decode()
    xml = b"<Event xmlns='http://schemas.microsoft.com/win/2004/08/events/event'><System>"
    assert parsed(xml).message == xml.decode()  # '<' but no digit: XML, not a broken PRI


def test_bytes_that_are_not_utf8_are_read_as_latin1() -> None:
    assert parsed(b"<13>Jun 15 11:59:00 h t: J\xfcrgen").message == "Jürgen"
    assert parsed("<13>Jun 15 11:59:00 h t: Jürgen".encode()).message == "Jürgen"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty message"),
        (b"\r\n\x00", "empty message"),
        (b"<999>hello", "PRI 999 out of range 0-191"),
        (b"<192>hello", "PRI 192 out of range"),
        (b"<1234>hello", "malformed PRI"),
        (b"<12hello", "malformed PRI"),
        (b"<1a>hello", "malformed PRI"),
        (b"<13>", "nothing after the PRI"),
        (b"<13>abc\x00def", "NUL byte at offset 7"),
        (b"x" * (MAX_MESSAGE + 1), "exceeds the 65536-byte limit"),
    ],
)
def test_garbage_is_rejected_with_a_reason(data: bytes, reason: str) -> None:
    assert reason in rejected(data)


def test_largest_message_is_accepted() -> None:
    assert len(parsed(b"<13>" + b"x" * (MAX_MESSAGE - 4)).message) == MAX_MESSAGE - 4


def test_split_datagram_only_where_a_new_pri_starts() -> None:
    assert split_datagram(b"<13>one\n<14>two\n<15>three\n") == [b"<13>one", b"<14>two", b"<15>three\n"]
    xml = b"<13>Jun 15 11:59:00 h t: <Event>\n<System/>\n</Event>"
    assert split_datagram(xml) == [xml]
    assert split_datagram(b"no newline") == [b"no newline"]


@settings(max_examples=400, deadline=None)
@given(
    st.binary(max_size=300)
    | st.builds(lambda a, b: b"<" + a + b, st.binary(max_size=5), st.binary(max_size=80))
)
def test_parse_header_never_raises(data: bytes) -> None:
    result = parse_header(data, received=RECEIVED)
    assert isinstance(result, SyslogMessage | Rejected)
    if isinstance(result, SyslogMessage):
        assert result.timestamp is None or result.timestamp.tzinfo is not None
        assert 0 <= result.facility <= 23 and 0 <= result.severity <= 7


_PIECES = ["<13>", "<191>", "1 ", "Jan", " ", "  1", "Dec 31", "12:00:00", ".5", "-", '[a b="c"]', "[", "]"]
_PIECES += ['"', "\\", "host", "tag[1]:", ":", "\ufeff", "2024-01-01T00:00:00Z", "\t", "é", "<", ">", "{"]
_HEADERISH = st.lists(st.sampled_from(_PIECES), max_size=16).map(lambda parts: "".join(parts).encode())


@settings(max_examples=400, deadline=None)
@given(_HEADERISH)
def test_parse_header_never_raises_on_header_like_input(data: bytes) -> None:
    assert isinstance(parse_header(data, received=RECEIVED), SyslogMessage | Rejected)


# ------------------------------------------------------------------------------------------ framing


def feed_all(chunks: list[bytes], max_size: int = MAX_MESSAGE) -> list[bytes | FrameError]:
    deframer = StreamDeframer(max_size)
    out: list[bytes | FrameError] = []
    for chunk in chunks:
        out += deframer.feed(chunk)
    return out + deframer.finish()


def test_octet_counted_lf_crlf_and_nul_framing_mixed() -> None:
    stream = (
        octet_counted(b"<13>one\nwith LF") + b"<13>two\n<13>three\r\n<13>four\x00" + octet_counted(b"five")
    )
    assert feed_all([stream]) == [b"<13>one\nwith LF", b"<13>two", b"<13>three", b"<13>four", b"five"]


def test_partial_frames_across_chunks() -> None:
    stream = octet_counted(b"<13>first") + b"<13>second\n" + octet_counted(b"<13>third")
    one_byte_at_a_time = [stream[i : i + 1] for i in range(len(stream))]
    assert feed_all(one_byte_at_a_time) == [b"<13>first", b"<13>second", b"<13>third"]


def test_blank_lines_are_skipped_and_digits_without_space_are_a_line() -> None:
    # A LF after each octet-counted frame (some senders add one) and keep-alive blank lines.
    assert feed_all([octet_counted(b"a") + b"\n\r\n\n" + octet_counted(b"b") + b"\n"]) == [b"a", b"b"]
    # Snare without a header whose host name starts with a digit: LF framing, not a count.
    assert feed_all([b"2fa-host\tMSWinEventLog\t1\n"]) == [b"2fa-host\tMSWinEventLog\t1"]


def test_oversized_octet_counted_frame_is_skipped_without_buffering() -> None:
    deframer = StreamDeframer(max_size=100)
    out = deframer.feed(b"150 " + b"x" * 60)
    assert [type(o) for o in out] == [FrameError] and not out[0].fatal  # type: ignore[union-attr]
    assert deframer.buffered == 0
    assert deframer.feed(b"x" * 90 + octet_counted(b"next")) == [b"next"]


def test_oversized_lf_frame_is_reported_once_and_skipped() -> None:
    deframer = StreamDeframer(max_size=100)
    out: list[bytes | FrameError] = []
    for _ in range(50):  # 5,000 bytes without a LF
        out += deframer.feed(b"y" * 100)
        assert deframer.buffered <= 102
    out += deframer.feed(b"tail\nafter\n")
    assert len(out) == 2 and isinstance(out[0], FrameError) and not out[0].fatal
    assert out[1] == b"after"
    # Terminated but too long, all in one chunk.
    out = StreamDeframer(max_size=10).feed(b"z" * 11 + b"\nok\n")
    assert isinstance(out[0], FrameError) and out[1:] == [b"ok"]


@pytest.mark.parametrize("prefix", [b"99999999999 ", b"0 ", b"007 ", str(SKIP_LIMIT + 1).encode() + b" "])
def test_bogus_octet_count_is_fatal(prefix: bytes) -> None:
    deframer = StreamDeframer()
    out = deframer.feed(octet_counted(b"good") + prefix + b"<13>rest\n")
    assert out[0] == b"good"
    assert isinstance(out[1], FrameError) and out[1].fatal and "bogus octet count" in out[1].reason
    assert deframer.feed(b"<13>more\n") == [] and deframer.finish() == []


def test_close_inside_a_frame() -> None:
    deframer = StreamDeframer()
    assert deframer.feed(b"20 <13>cut") == []
    (error,) = deframer.finish()
    assert isinstance(error, FrameError) and "got 7 of 20 bytes" in error.reason
    deframer = StreamDeframer()
    assert deframer.feed(b"<13>last line without LF\r") == []
    assert deframer.finish() == [b"<13>last line without LF"]


_OCTET_MESSAGES = st.binary(min_size=1, max_size=200)
_LINE_MESSAGES = st.binary(min_size=1, max_size=200).filter(
    lambda m: b"\n" not in m and b"\x00" not in m and not m.endswith(b"\r") and not m[:1].isdigit()
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), _OCTET_MESSAGES | _LINE_MESSAGES), max_size=20),
    st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=40),
)
def test_framing_round_trips_whatever_the_chunking(
    messages: list[tuple[bool, bytes]], sizes: list[int]
) -> None:
    stream = b""
    expected = []
    for counted, message in messages:
        eligible_for_lines = b"\n" not in message and b"\x00" not in message and not message.endswith(b"\r")
        counted = counted or not eligible_for_lines or message[:1].isdigit()
        stream += octet_counted(message) if counted else message + b"\n"
        expected.append(message)
    chunks, pos, i = [], 0, 0
    while pos < len(stream):
        size = sizes[i % len(sizes)]
        chunks.append(stream[pos : pos + size])
        pos, i = pos + size, i + 1
    assert feed_all(chunks) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_deframer_never_raises_and_stays_bounded(chunks: list[bytes]) -> None:
    deframer = StreamDeframer(max_size=128)
    for chunk in chunks:
        for item in deframer.feed(chunk):
            assert isinstance(item, bytes | FrameError)
            if isinstance(item, bytes):
                assert 0 < len(item) <= 128
        assert deframer.buffered <= 128 + 8  # a partial frame and its "LEN " prefix at most
    deframer.finish()
