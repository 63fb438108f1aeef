"""The shared checks: input limits, addresses, accounts, times, names and detail values."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta, timezone

import pytest

from userseg.events.formats import common
from userseg.events.formats.common import (
    MAX_LINE,
    Reject,
    Skip,
    account,
    client_ip,
    decode,
    detail,
    event_time,
    name,
    split_account,
    utc,
)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("198.18.10.11", "198.18.10.11"),
        (" 198.18.10.11 ", "198.18.10.11"),
        ("::ffff:172.18.39.5", "172.18.39.5"),
        ("2001:db8:10::12", "2001:db8:10::12"),
        ("fe80::1%eth0", "fe80::1"),
        ("-", None),
        ("", None),
        ("::1", None),
        ("127.0.0.1", None),
        ("127.8.9.10", None),
        ("::ffff:127.0.0.1", None),
        ("0.0.0.0", None),
        ("::", None),
    ],
)
def test_client_ip(text: str, want: str | None) -> None:
    assert client_ip(text, "IpAddress") == (None if want is None else ipaddress.ip_address(want))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("999.1.1.1", "IpAddress is not an IP address: '999.1.1.1'"),
        ("[::1]", "is not an IP address"),
        ("198.18.10.11:445", "is not an IP address"),
        ("224.0.0.1", "IpAddress 224.0.0.1 is not a unicast address"),
        ("ff02::1", "not a unicast address"),
        ("255.255.255.255", "not a unicast address"),
        ("\uff11\uff19\uff18.18.10.11", "is not an IP address"),  # full-width digits
        ("1" * 1000, "is not an IP address: '111"),
    ],
)
def test_bad_client_ip_is_rejected_naming_the_field(text: str, why: str) -> None:
    with pytest.raises(Reject) as info:
        client_ip(text, "IpAddress")
    assert why in info.value.reason and len(info.value.reason) < 120


def test_ip_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "_IP_CACHE", {})
    monkeypatch.setattr(common, "_IP_CACHE_MAX", 10)
    for i in range(25):
        assert client_ip(f"198.18.0.{i + 1}", "x") == ipaddress.ip_address(f"198.18.0.{i + 1}")
    assert len(common._IP_CACHE) <= 10


@pytest.mark.parametrize(
    ("account_", "domain", "want"),
    [
        ("alice", "LAB", ("alice", "LAB")),
        ("LAB\\alice", "", ("alice", "LAB")),
        ("alice@LAB.EXAMPLE", "", ("alice", "LAB.EXAMPLE")),
        ("alice@LAB.EXAMPLE", "LAB", ("alice", "LAB")),
        ("WKS5$@THESHIRE.LOCAL", "THESHIRE.LOCAL", ("WKS5$", "THESHIRE.LOCAL")),
        ("a@b@REALM", "", ("a@b", "REALM")),
        ("@REALM", "", ("@REALM", "")),
    ],
)
def test_split_account(account_: str, domain: str, want: tuple[str, str]) -> None:
    assert split_account(account_, domain) == want


@pytest.mark.parametrize(
    ("user", "domain"),
    [("", "LAB"), ("-", "LAB"), ("LAB\\", ""), ("SYSTEM", "NT AUTHORITY"), ("DWM-1", "Window Manager")],
)
def test_unusable_accounts_are_skipped(user: str, domain: str) -> None:
    with pytest.raises(Skip):
        account(user, domain)


def test_domain_dash_means_none() -> None:
    assert account("alice", "-") == ("alice", "")


@pytest.mark.parametrize("value", ["alice", "Zoë", "\u0430lice", "\u2170", "名前", "o'brien", "x" * 256])
def test_names_that_pass(value: str) -> None:
    assert name(value, "user name") == value


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("x" * 257, "user name too long (257 characters, limit 256)"),
        ("ali\u202ece", "U+202E"),
        ("al\u200dice", "U+200D"),
        ("\ufeffalice", "U+FEFF"),
        ("ali\x00ce", "U+0000"),
        ("ali\x85ce", "U+0085"),
        ("ali\udcffce", "U+DCFF"),
        ("a\u2066b", "U+2066"),
    ],
)
def test_names_that_are_rejected(value: str, why: str) -> None:
    with pytest.raises(Reject) as info:
        name(value, "user name")
    assert why in info.value.reason


def test_detail_values_are_cut_and_made_visible() -> None:
    assert detail("ok value") == "ok value"
    assert detail("é" * 300) == "é" * 256 + "..."
    assert detail("a\x00b\u202ec\udcff") == "a\ufffdb\ufffdc\ufffd"


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("2019-05-18T20:37:19.472Z", datetime(2019, 5, 18, 20, 37, 19, 472000, tzinfo=UTC)),
        ("2020-03-02T20:51:32.557777800Z", datetime(2020, 3, 2, 20, 51, 32, 557777, tzinfo=UTC)),
        ("2026-11-22T05:12:34.123456+0000", datetime(2026, 11, 22, 5, 12, 34, 123456, tzinfo=UTC)),
        ("2026-11-22T00:12:34-05:00", datetime(2026, 11, 22, 5, 12, 34, tzinfo=UTC)),
        ("2020-09-04 03:08:20", None),
    ],
)
def test_event_time(value: str, want: datetime | None) -> None:
    got = event_time(value, "t")
    assert got == want and (got is None or got.tzinfo is UTC)


@pytest.mark.parametrize(
    "value", ["yesterday", "2026-02-30T00:00:00Z", "9999-12-31T23:59:59-23:59", 5, None, "2" * 50]
)
def test_bad_event_time(value: object) -> None:
    with pytest.raises(Reject):
        event_time(value, "t")


def test_decode_limits() -> None:
    assert decode("x" * MAX_LINE) == "x" * MAX_LINE
    assert decode(b"x" * MAX_LINE) == "x" * MAX_LINE
    with pytest.raises(Reject, match=r"too long \(65537 bytes, limit 65536\)"):
        decode("x" * (MAX_LINE + 1))
    with pytest.raises(Reject, match=r"too long \(65537 bytes"):
        decode(b"x" * (MAX_LINE + 1))
    with pytest.raises(Reject, match=r"too long \(98303 bytes"):
        decode("é" * 16384 + "\u20ac" * 21845)  # 32768 + 65535 UTF-8 bytes in 38229 characters
    with pytest.raises(Reject, match=r"not UTF-8 \(byte 0xc3 at offset 3\)"):
        decode(b"abc\xc3(")
    with pytest.raises(Reject, match="input is int"):
        decode(5)  # type: ignore[arg-type]


def test_received_time() -> None:
    now = datetime(2026, 11, 22, 5, 0, tzinfo=UTC)
    assert utc(now) is now
    there = now.astimezone(timezone(timedelta(hours=-5)))
    assert utc(there) == now and utc(there).tzinfo is UTC
    with pytest.raises(ValueError, match="timezone-aware"):
        utc(datetime(2026, 11, 22, 5, 0))
