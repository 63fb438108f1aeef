"""Pure parts of the AD adapter: SID/GUID conversion, entry parsing, filters, credentials, messages.

No server: these pin down the conversions the sync relies on (a wrong SID
names the wrong primary group) and that hostile values fail cleanly.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ldap3.core import exceptions as lx

from userseg.adapters.directory import LdapDirectory
from userseg.adapters.directory.connect import Secret, describe, load_password
from userseg.adapters.directory.entries import (
    guid_to_bytes,
    guid_to_str,
    parse_group,
    parse_user,
    sid_to_str,
    split_range,
    str_to_sid,
)
from userseg.adapters.directory.reader import Scope, group_filter, parse_entry, user_filter, usn_clause
from userseg.adapters.directory.watch import StopSignal, notification_bases
from userseg.directory.model import DirectoryError, DirectoryServer, DirectorySettings, TlsMode

# S-1-5-21-1004336348-1177238915-682003330-512, as AD stores it (Domain Admins of a real domain).
DOMAIN_ADMINS_RAW = bytes.fromhex("010500000000000515000000dcf4dc3b833d2b46828ba62800020000")
SERVER = DirectoryServer("198.18.20.10", 636, TlsMode.LDAPS)


def settings(**kw: object) -> DirectorySettings:
    return DirectorySettings(servers=(SERVER,), bind_user="svc@lab.example", **kw)  # type: ignore[arg-type]


def test_sid_known_value() -> None:
    assert sid_to_str(DOMAIN_ADMINS_RAW) == "S-1-5-21-1004336348-1177238915-682003330-512"
    assert str_to_sid("S-1-5-21-1004336348-1177238915-682003330-512") == DOMAIN_ADMINS_RAW
    assert sid_to_str(bytes.fromhex("010200000000000520000000" + "20020000")) == "S-1-5-32-544"


@given(st.integers(0, 2**48 - 1), st.lists(st.integers(0, 2**32 - 1), max_size=15))
def test_sid_roundtrip(authority: int, subs: list[int]) -> None:
    text = "S-1-" + "-".join(str(p) for p in (authority, *subs))
    assert sid_to_str(str_to_sid(text)) == text


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x01",
        DOMAIN_ADMINS_RAW[:-1],
        DOMAIN_ADMINS_RAW + b"\0",
        b"\x02" + DOMAIN_ADMINS_RAW[1:],
        bytes([1, 16]) + bytes(6) + bytes(64),
    ],
)
def test_broken_sids_raise(raw: bytes) -> None:
    with pytest.raises(ValueError):
        sid_to_str(raw)


def test_guid_is_windows_byte_order() -> None:
    text = "0e5fd7e9-1c0b-4a64-a4a3-2c2b3c4d5e6f"
    raw = uuid.UUID(text).bytes_le
    assert raw[:4] == bytes.fromhex("e9d75f0e")  # the first field is little-endian on the wire
    assert guid_to_str(raw) == text and guid_to_bytes(text) == raw
    with pytest.raises(ValueError):
        guid_to_str(raw[:15])


def test_split_range() -> None:
    assert split_range("member;range=0-1499") == ("member", 0, 1499)
    assert split_range("Member;Range=1500-*") == ("member", 1500, None)
    assert split_range("member") is None and split_range("member;range=x-1") is None


def user_raw(**over: list[bytes]) -> dict[str, list[bytes]]:
    raw = {
        "sAMAccountName": [b"alice"],
        "objectGUID": [uuid.UUID(int=1).bytes_le],
        "objectSid": [DOMAIN_ADMINS_RAW],
        "userAccountControl": [b"514"],
        "primaryGroupID": [b"513"],
        "uSNChanged": [b"4242"],
        "displayName": ["Zoë Ünïcode".encode()],
    }
    raw.update(over)
    return raw


def test_parse_user() -> None:
    user = parse_user("CN=alice,DC=x", user_raw())
    assert user.sam == "alice" and user.disabled and user.primary_group_id == 513 and user.usn == 4242
    assert user.guid == "00000000-0000-0000-0000-000000000001" and user.display_name == "Zoë Ünïcode"
    assert not parse_user("CN=a,DC=x", user_raw(userAccountControl=[b"512"])).disabled
    assert parse_user("CN=a,DC=x", user_raw(userAccountControl=[])).primary_group_id == 513


@pytest.mark.parametrize(
    "over",
    [
        {"sAMAccountName": []},
        {"objectGUID": []},
        {"objectGUID": [b"short"]},
        {"objectSid": [b"\x01\x05garbage"]},
        {"userAccountControl": [b"lots"]},
        {"sAMAccountName": [b"\xff\xfe"]},
    ],
)
def test_hostile_user_entries_are_skipped_with_their_dn(
    over: dict[str, list[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    entry = {"dn": "CN=evil,DC=x", "raw_attributes": user_raw(**over)}
    with caplog.at_level(logging.WARNING, logger="userseg.directory"):
        assert parse_entry(entry, "user", lambda e: parse_user(e["dn"], e["raw_attributes"])) is None
    assert "CN=evil,DC=x" in caplog.text


def test_parse_group_falls_back_to_cn() -> None:
    raw = {"cn": [b"Printers"], "objectGUID": [uuid.UUID(int=2).bytes_le], "description": [b"d"]}
    group = parse_group("CN=Printers,DC=x", raw, [b"CN=a,DC=x", b"CN=b,DC=x"])
    assert group.name == "Printers" and group.members == {"CN=a,DC=x", "CN=b,DC=x"} and group.sid == ""


def test_filters() -> None:
    assert user_filter(settings()) == "(&(objectCategory=person)(objectClass=user))"
    assert user_filter(settings(user_filter="department=Sales")) == (
        "(&(objectCategory=person)(objectClass=user)(department=Sales))"
    )
    assert group_filter(settings(group_filter="(cn=g*)"), usn_clause(41)) == (
        "(&(objectClass=group)(cn=g*)(uSNChanged>=42))"
    )


def test_notification_bases_skip_nested() -> None:
    scope = Scope("DC=x", ("OU=A,DC=x", "ou=b,ou=a,dc=x"), ("OU=G,DC=x", "OU=A,DC=x"))
    assert notification_bases(scope) == ("OU=A,DC=x", "OU=G,DC=x")


def test_password_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    assert load_password(settings(password_file=pw), None).reveal() == "s3cret"  # type: ignore[union-attr]
    pw.write_text("s3cret\r\n")
    assert load_password(settings(password_file=pw), None).reveal() == "s3cret"  # type: ignore[union-attr]
    (tmp_path / "ad-pw").write_text("from-systemd\n\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    got = load_password(settings(password_credential="ad-pw"), None)
    assert got is not None and got.reveal() == "from-systemd\n"  # only one newline is stripped
    assert load_password(settings(), Secret("explicit")).reveal() == "explicit"  # type: ignore[union-attr]
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(DirectoryError, match="CREDENTIALS_DIRECTORY"):
        load_password(settings(password_credential="ad-pw"), None)
    with pytest.raises(DirectoryError, match="cannot read the directory password") as info:
        load_password(settings(password_file=tmp_path / "missing"), None)
    assert "s3cret" not in str(info.value)


def test_secret_never_prints() -> None:
    directory = LdapDirectory(settings(), password="Hunter2-very-secret")
    assert "Hunter2" not in repr(directory) and "Hunter2" not in repr(directory._connector)
    assert "Hunter2" not in f"{Secret('Hunter2')} {Secret('Hunter2')!r}"
    directory.close()


def test_empty_password_is_never_sent() -> None:
    directory = LdapDirectory(settings(), password="")
    with pytest.raises(DirectoryError, match="no password"):
        directory.read_all()


def test_describe_messages() -> None:
    s = settings(server_name="DC1.lab.example")
    mismatch = lx.LDAPSocketOpenError(
        "socket ssl wrapping error: certificate {'subject': ((('commonName', 'DC9.lab.example'),),)} "
        "doesn't match any name in ['198.18.20.10', 'DC1.lab.example'] "
    )
    assert describe(mismatch, s, SERVER) == (
        "certificate name mismatch: certificate is for DC9.lab.example (expected name DC1.lab.example)"
    )
    verify = lx.LDAPSocketOpenError(
        "('socket ssl wrapping error: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
        "self-signed certificate (_ssl.c:1006)',)"
    )
    assert describe(verify, s, SERVER) == (
        "certificate verify failed: self-signed certificate (expected name DC1.lab.example)"
    )


def test_stop_signal_wakes_on_any_event() -> None:
    first, second = threading.Event(), threading.Event()
    signal = StopSignal(first, second)
    started = time.monotonic()
    assert not signal.wait(0.05) and time.monotonic() - started >= 0.05
    threading.Timer(0.05, second.set).start()
    assert signal.wait(5) and time.monotonic() - started < 1.0
