"""The lean search-entry decoder against ldap3's own: same entries, same fallbacks, loud on upgrades.

No server: messages are built byte by byte (decode.search_entry_message) and
fed to both ldap3's SyncStrategy._get_response and ours through a stubbed
receive, so any difference in what the adapter reads (type, dn, raw_dn,
raw_attributes and the spelling of every attribute name) fails here.
"""

from __future__ import annotations

from typing import Any

import ldap3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ldap3 import ASYNC, Connection, Server
from ldap3.strategy.sync import SyncStrategy
from ldap3.utils.asn1 import decode_message_fast

from userseg.adapters.directory import decode
from userseg.adapters.directory.decode import (
    SAMPLE,
    agrees,
    parse_search_entry,
    search_done_message,
    search_entry_message,
    tlv,
)

DONE = search_done_message(7)


def ldap3_entry(message: bytes) -> dict[str, Any]:
    """What ldap3 makes of one searchResEntry, reduced to the fields the adapter reads."""
    conn = Connection(Server("localhost", get_info=None), auto_range=False, return_empty_attributes=False)
    full = conn.strategy.decode_response_fast(decode_message_fast(message))
    return {
        "type": full["type"],
        "dn": full["dn"],
        "raw_dn": full["raw_dn"],
        "raw_attributes": dict(full["raw_attributes"]),
    }


def test_pinned_ldap3_version_installs() -> None:
    """Fails on an ldap3 upgrade: compare its SyncStrategy._get_response with lean_get_response,
    then add the version to decode.LDAP3_VERSIONS (until then reads work, only slower)."""
    assert ldap3.__version__ in decode.LDAP3_VERSIONS, ldap3.__version__
    conn = Connection(Server("localhost", get_info=None), auto_range=False, return_empty_attributes=False)
    assert decode.install(conn)
    assert "_get_response" in vars(conn.strategy)  # on this instance only
    other = Connection(Server("localhost", get_info=None), auto_range=False, return_empty_attributes=False)
    assert "_get_response" not in vars(other.strategy)
    assert SyncStrategy._get_response.__module__ == "ldap3.strategy.sync"  # nothing global was patched


@pytest.mark.parametrize(
    "kw",
    [
        {"auto_range": True},
        {"return_empty_attributes": True},
        {"fast_decoder": False},
        {"client_strategy": ASYNC},
    ],
)
def test_not_installed_where_ldap3_needs_its_own_entries(kw: dict[str, Any]) -> None:
    base: dict[str, Any] = {"auto_range": False, "return_empty_attributes": False}
    conn = Connection(Server("localhost", get_info=None), **(base | kw))
    assert not decode.install(conn)
    assert "_get_response" not in vars(conn.strategy)


def test_a_failed_self_test_leaves_ldap3_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode, "_self_test", None)
    monkeypatch.setattr(decode, "agrees", lambda messages, message_id: False)
    conn = Connection(Server("localhost", get_info=None), auto_range=False, return_empty_attributes=False)
    assert not decode.install(conn)
    assert "_get_response" not in vars(conn.strategy)


def test_sample_exchange_agrees() -> None:
    assert agrees(SAMPLE, 7)


HOSTILE = [
    (b"", []),  # the root DSE's empty DN, no attributes
    (b"CN=\xe9t\xe9,DC=x", [(b"cn", [b"\xe9t\xe9"])]),  # latin-1 DN: ldap3's fallback encodings
    (b"CN=\xff\xfe,DC=x", [(b"displayName", [b"\xff\xfe\x00"])]),
    ("CN=Zoë ✓,DC=x".encode(), [("nâme".encode(), ["välue".encode()])]),
    (b"CN=a,DC=x", [(b"objectGUID", [bytes(range(16))]), (b"objectSid", [bytes(range(28))])]),
    (b"CN=a,DC=x", [(b"member;range=0-1499", [b"CN=m,DC=x"] * 3), (b"member;range=1500-*", [])]),
    (b"CN=a,DC=x", [(b"member", [])]),  # no values: None, as ldap3 says
    (b"CN=a,DC=x", [(b"mail", [b""]), (b"cn", [b"x"])]),  # an empty value
    (b"CN=a,DC=x", [(b"member", [b"CN=%06d,DC=x" % i for i in range(3000)])]),  # 3-byte lengths
]


@pytest.mark.parametrize("long_form", [False, True])
@pytest.mark.parametrize(("dn", "attributes"), HOSTILE)
def test_entries_as_ldap3_reads_them(
    dn: bytes, attributes: list[tuple[bytes, list[bytes]]], long_form: bool
) -> None:
    message = search_entry_message(7, dn, attributes, long_form)
    parsed = parse_search_entry(message)
    assert parsed is not None
    message_id, entry = parsed
    assert message_id == 7
    want = ldap3_entry(message)
    assert entry == want
    assert list(entry["raw_attributes"]) == list(want["raw_attributes"])
    assert agrees([message, DONE], 7)


@pytest.mark.parametrize("message_id", [0, 1, 127, 128, 255, 256, 65535, 2**31 - 1, -1])
def test_message_ids(message_id: int) -> None:
    parsed = parse_search_entry(search_entry_message(message_id, b"CN=a", [(b"cn", [b"a"])]))
    assert parsed is not None and parsed[0] == message_id


def _with_controls(message: bytes) -> bytes:
    """The same entry with a (bogus but well-formed) control appended to the LDAPMessage."""
    start, stop = decode._open(message, 0, len(message), 0x30)
    control = tlv(0xA0, tlv(0x30, tlv(0x04, b"1.2.3.4")))
    return tlv(0x30, message[start:stop] + control)


def test_a_name_twice_is_left_to_ldap3() -> None:
    """ldap3 folds a repeated name (any case) into one CaseInsensitiveDict key: let it."""
    message = search_entry_message(7, b"CN=a", [(b"mail", [b""]), (b"Mail", [b"x"])])
    assert parse_search_entry(message) is None
    assert agrees([message, DONE], 7)


def test_entries_with_controls_are_left_to_ldap3() -> None:
    message = _with_controls(SAMPLE[0])
    assert parse_search_entry(message) is None
    assert agrees([message, DONE], 7)


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"\x30",
        SAMPLE[0][:-1],  # truncated
        SAMPLE[0] + b"\x00",  # trailing byte
        b"\x30\x80" + SAMPLE[0][2:],  # indefinite length
        b"\x30\x85\x00\x00\x00\x00\x10" + SAMPLE[0][2:],  # 5 length octets
        SAMPLE[0].replace(b"\x64", b"\x65", 1),  # not a searchResEntry
        search_done_message(7, b"cookie"),
    ],
)
def test_odd_messages_are_left_to_ldap3(message: bytes) -> None:
    assert parse_search_entry(message) is None


def test_entries_of_another_request_go_through_ldap3() -> None:
    """A message ID that is not awaited: ldap3's own error, not a silently accepted entry."""
    other = search_entry_message(8, b"CN=a", [(b"cn", [b"a"])])
    want = _run(ldap3_get_response=True, messages=[other, DONE])
    got = _run(ldap3_get_response=False, messages=[other, DONE])
    assert want == got == "LDAPSocketReceiveError"


def _run(*, ldap3_get_response: bool, messages: list[bytes]) -> Any:
    strategy = decode._stub_strategy(messages)
    get = strategy._get_response if ldap3_get_response else decode.lean_get_response(strategy)
    try:
        return get(7, None)
    except Exception as exc:
        return type(exc).__name__


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_messages_never_disagree(data: st.DataObject) -> None:
    """Flip, cut or insert bytes anywhere: the lean parser declines or reads exactly what ldap3 reads."""
    message = bytearray(data.draw(st.sampled_from(SAMPLE[:2])))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(message) - 1))
        action = data.draw(st.sampled_from(["set", "cut", "insert"]))
        if action == "set":
            message[at] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del message[at]
        else:
            message.insert(at, data.draw(st.integers(0, 255)))
    parsed = parse_search_entry(bytes(message))
    if parsed is None:
        return
    try:
        want = ldap3_entry(bytes(message))
        want_id = decode_message_fast(bytes(message))["messageID"]
    except Exception:  # ldap3 cannot read what we read: impossible for a well-formed message
        pytest.fail(f"lean parser accepted a message ldap3 rejects: {bytes(message)!r}")
    assert parsed[0] == want_id
    assert parsed[1] == want
    assert list(parsed[1]["raw_attributes"]) == list(want["raw_attributes"])
