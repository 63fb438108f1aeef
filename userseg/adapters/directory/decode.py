"""A lean decoder for search result entries, installed on our ldap3 connections only.

Why: for each received message ldap3's SYNC strategy runs a generic BER walk
(``decode_message_fast``: a tuple and a few function calls per element) and
then builds the entry dict twice, ``raw_attributes`` (the bytes this
package uses) and ``attributes`` (values formatted by guessing from the
attribute name, since we read without the schema), each in a
CaseInsensitiveDict, with ``to_unicode`` and its four
``get_config_parameter`` look-ups per name.  Measured: ~185 us per user
entry of 10 attributes with ldap3, ~35 us with this parser; the Python CPU
of a full read of 20,206 users and 2,000 groups fell from 5.4-5.7 s to
1.7-1.9 s (parsing into DirectoryUser included).  Nothing in this package
reads ``attributes``: entries.py works on the raw bytes by design.

What: ``parse_search_entry`` reads one LDAPMessage holding a
searchResEntry straight from its bytes into ``{type, dn, raw_dn,
raw_attributes}`` -- the DN and attribute names as text, the values as the
raw bytes, in a plain dict (every consumer here lower-cases names itself).
It is strict: anything but definite lengths, the exact RFC 4511 layout, no
controls and distinct attribute names makes it return None, and ldap3
decodes that message as before.
Same results as ldap3 for what it accepts (pinned by
tests/adapters/directory/test_decode.py, which runs both on hostile input):

* values are the raw bytes, whatever they hold (binary objectSid/objectGUID,
  invalid UTF-8): decoding them stays entries.py's job;
* an attribute with no values is ``None``, as ldap3 gives it;
* range-suffixed names (``member;range=0-1499``) are kept verbatim;
* the DN and attribute names are UTF-8, with ldap3's own ``to_unicode``
  fallback (its additional server encodings) for anything else.

How it is hooked in: ldap3 calls ``decode_message_fast`` from inside
``SyncStrategy._get_response``, so ``install`` replaces that method *on one
connection's strategy instance* with ``_get_response`` below, ldap3 2.9's
loop with the one difference that search entries for the awaited request
take the lean parser.  Nothing global is patched.  ``install`` first runs
both versions on a sample exchange (entries with short and long lengths,
non-UTF-8 values, ranged names, an empty range, a paged searchResDone) and
installs nothing if they disagree (an ldap3 upgrade that changed the loop
or the dict shape), nor on an ldap3 version whose loop was not compared by
hand (``LDAP3_VERSIONS``; test_decode.py fails until it is): the read is
then slower, never different.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import ldap3
from ldap3 import Connection, Server
from ldap3.core.exceptions import LDAPExtensionError, LDAPSocketReceiveError
from ldap3.strategy.base import RESPONSE_COMPLETE, SESSION_TERMINATED_BY_SERVER, TRANSACTION_ERROR
from ldap3.strategy.sync import SyncStrategy
from ldap3.utils.asn1 import decode_message_fast
from ldap3.utils.conv import to_unicode

log = logging.getLogger("userseg.directory")

FIELDS = ("type", "dn", "raw_dn", "raw_attributes")  # what this package reads of an entry
LDAP3_VERSIONS = ("2.9", "2.9.1")  # whose _get_response the replacement mirrors

# BER tags (RFC 4511): SEQUENCE, SET, INTEGER, OCTET STRING, [APPLICATION 4] searchResEntry
_SEQ, _SET, _INT, _OCTETS, _ENTRY = 0x30, 0x31, 0x02, 0x04, 0x64
_DONE_TYPES = frozenset({"searchResEntry", "searchResRef", "intermediateResponse"})

_self_test: bool | None = None  # None: not run yet in this process


class _Odd(Exception):
    """Not the layout parse_search_entry accepts: leave the message to ldap3."""


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        text: str = to_unicode(raw, from_server=True)  # ldap3's fallback encodings: same text as ldap3
        return text


def _open(m: bytes, i: int, end: int, tag: int) -> tuple[int, int]:
    """The value span (start, stop) of the element at m[i], which must carry `tag` and fit in `end`."""
    if i + 2 > end or m[i] != tag:
        raise _Odd
    size = m[i + 1]
    start = i + 2
    if size & 0x80:
        octets = size & 0x7F
        if not 1 <= octets <= 4 or start + octets > end:
            raise _Odd  # indefinite (0x80) or absurd lengths: ldap3 decides
        size = int.from_bytes(m[start : start + octets], "big")
        start += octets
    stop = start + size
    if stop > end:
        raise _Odd
    return start, stop


def parse_search_entry(message: bytes) -> tuple[int, dict[str, Any]] | None:
    """(messageID, entry) of an LDAPMessage holding a searchResEntry without controls, else None."""
    try:
        end = len(message)
        start, stop = _open(message, 0, end, _SEQ)
        if stop != end:
            return None
        id_start, i = _open(message, start, stop, _INT)
        if i == id_start:
            return None
        message_id = int.from_bytes(message[id_start:i], "big", signed=True)
        start, op_end = _open(message, i, stop, _ENTRY)
        if op_end != stop:
            return None  # controls follow the entry: ldap3 decodes them
        dn_start, i = _open(message, start, op_end, _OCTETS)
        raw_dn = message[dn_start:i]
        i, attrs_end = _open(message, i, op_end, _SEQ)
        if attrs_end != op_end:
            return None
        raw_attributes: dict[str, list[bytes] | None] = {}
        folded: set[str] = set()
        while i < attrs_end:
            start, attr_end = _open(message, i, attrs_end, _SEQ)
            name_start, name_stop = _open(message, start, attr_end, _OCTETS)
            v, values_end = _open(message, name_stop, attr_end, _SET)
            if values_end != attr_end:
                return None
            values: list[bytes] = []
            while v < values_end:
                size = message[v + 1] if v + 2 <= values_end and message[v] == _OCTETS else 0x80
                if size < 0x80:  # the usual short form, inline: this loop runs once per value
                    value_start, v = v + 2, v + 2 + size
                    if v > values_end:
                        raise _Odd
                else:
                    value_start, v = _open(message, v, values_end, _OCTETS)
                values.append(message[value_start:v])
            name = _text(message[name_start:name_stop])
            key = name.lower()
            if key in folded:
                return None  # a name twice (RFC 4511 forbids it): ldap3 merges them its own way
            folded.add(key)
            raw_attributes[name] = values or None
            i = attr_end
    except _Odd:
        return None
    entry: dict[str, Any] = {"type": "searchResEntry", "dn": _text(raw_dn), "raw_dn": raw_dn}
    entry["raw_attributes"] = raw_attributes
    return message_id, entry


def lean_get_response(strategy: Any) -> Callable[[int, Any], Any]:
    """SyncStrategy._get_response of ldap3 2.9.1 with search entries parsed by parse_search_entry.

    Line for line the loop of ldap3.strategy.sync.SyncStrategy._get_response
    (fast decoder branch; its EXTENDED-level message logging left out).
    """
    connection = strategy.connection

    def _get_response(message_id: int, timeout: Any) -> Any:
        ldap_responses: list[Any] = []
        response_complete = False
        while not response_complete:
            responses = strategy.receiving()
            if not responses:
                return SESSION_TERMINATED_BY_SERVER
            for response in responses:
                if len(response) == 0:
                    continue
                if connection.usage:
                    connection._usage.update_received_message(len(response))
                lean = parse_search_entry(response)
                if lean is not None and lean[0] == message_id:
                    ldap_responses.append(lean[1])
                    continue
                ldap_resp = decode_message_fast(response)
                dict_response = strategy.decode_response_fast(ldap_resp)
                if int(ldap_resp["messageID"]) == message_id:
                    ldap_responses.append(dict_response)
                    if dict_response["type"] not in _DONE_TYPES:
                        response_complete = True
                elif int(ldap_resp["messageID"]) == 0:  # unsolicited notification (RFC 4511 4.4)
                    if dict_response["responseName"] == "1.3.6.1.4.1.1466.20036":  # notice of disconnection
                        return SESSION_TERMINATED_BY_SERVER
                    if dict_response["responseName"] == "2.16.840.1.113719.1.27.103.4":  # Novell transaction
                        return TRANSACTION_ERROR
                    connection.last_error = "unknown unsolicited notification from server"
                    raise LDAPSocketReceiveError(connection.last_error)
                elif dict_response["type"] == "extendedResp":
                    connection.last_error = "multiple extended responses to a single extended request"
                    raise LDAPExtensionError(connection.last_error)
                else:
                    connection.last_error = "invalid messageId received"
                    raise LDAPSocketReceiveError(connection.last_error)
        ldap_responses.append(RESPONSE_COMPLETE)
        return ldap_responses

    return _get_response


# -- building messages (the self-test and the tests) ----------------------------------------------------


def tlv(tag: int, body: bytes, long_form: bool = False) -> bytes:
    """One BER element with a definite length (long form when needed, or when asked)."""
    size = len(body)
    if size < 0x80 and not long_form:
        return bytes([tag, size]) + body
    octets = size.to_bytes(max(1, (size.bit_length() + 7) // 8), "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + body


def _int(value: int) -> bytes:
    return tlv(_INT, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def search_entry_message(
    message_id: int, dn: bytes, attributes: list[tuple[bytes, list[bytes]]], long_form: bool = False
) -> bytes:
    """The BER bytes of an LDAPMessage carrying a searchResEntry."""

    def attribute(name: bytes, values: list[bytes]) -> bytes:
        value_set = tlv(_SET, b"".join(tlv(_OCTETS, v) for v in values), long_form)
        return tlv(_SEQ, tlv(_OCTETS, name) + value_set, long_form)

    attrs = b"".join(attribute(name, values) for name, values in attributes)
    entry = tlv(_ENTRY, tlv(_OCTETS, dn) + tlv(_SEQ, attrs, long_form), long_form)
    return tlv(_SEQ, _int(message_id) + entry, long_form)


def search_done_message(message_id: int, cookie: bytes | None = None, result: int = 0) -> bytes:
    """An LDAPMessage carrying searchResDone, with a paged-results control when `cookie` is given."""
    done = tlv(0x65, bytes([0x0A, 1, result]) + tlv(_OCTETS, b"") + tlv(_OCTETS, b""))
    controls = b""
    if cookie is not None:
        value = tlv(_SEQ, _int(0) + tlv(_OCTETS, cookie))
        control = tlv(_SEQ, tlv(_OCTETS, b"1.2.840.113556.1.4.319") + tlv(_OCTETS, value))
        controls = tlv(0xA0, control)
    return tlv(_SEQ, _int(message_id) + done + controls)


SAMPLE = [
    search_entry_message(
        7,
        "CN=Zoë \\2C Test,OU=Perf,DC=lab,DC=example".encode(),
        [
            (b"objectGUID", [bytes(range(16))]),
            (b"objectSid", [b"\x01\x05\x00\x00\x00\x00\x00\x05\x15\x00\x00\x00" + b"\xff" * 16]),
            (b"sAMAccountName", ["zoë".encode()]),
            (b"displayName", [b"\xff\xfe not utf-8"]),
            (b"member;range=0-1", [b"CN=a,DC=x", b"CN=b,DC=x"]),
            (b"member;range=2-*", []),
        ],
    ),
    search_entry_message(
        7, b"CN=\xe9t\xe9,DC=x", [(b"member", [b"CN=m%05d,DC=x" % i for i in range(40)])], long_form=True
    ),
    search_done_message(7, b"\x01\x02cookie"),
]


def _stub_strategy(messages: list[bytes]) -> Any:
    conn = Connection(Server("localhost", get_info=None), auto_range=False, return_empty_attributes=False)
    strategy = conn.strategy
    strategy.receiving = lambda: list(messages)
    return strategy


def _comparable(response: Any) -> Any:
    if isinstance(response, dict) and response.get("type") == "searchResEntry":
        out = {field: response[field] for field in FIELDS}
        out["raw_attributes"] = dict(out["raw_attributes"] or {})  # ldap3's is a CaseInsensitiveDict
        out["names"] = list(out["raw_attributes"])  # and the spelling of each name, in order
        return out
    return response


def agrees(messages: list[bytes], message_id: int) -> bool:
    """ldap3's _get_response and lean_get_response give the same results for this exchange."""
    want = _stub_strategy(messages)._get_response(message_id, None)
    stub = _stub_strategy(messages)
    got = lean_get_response(stub)(message_id, None)
    if isinstance(want, str) or isinstance(got, str):
        return bool(want == got)
    if len(want) != len(got):
        return False
    for a, b in zip(want, got, strict=True):
        a, b = _comparable(a), _comparable(b)
        if a != b:
            return False
    return True


def install(conn: Connection) -> bool:
    """Use the lean entry parser on `conn`; False (ldap3 decodes as ever) when that is not safe."""
    global _self_test
    strategy = conn.strategy
    if type(strategy) is not SyncStrategy or not conn.fast_decoder:
        return False  # another receive loop, or the pyasn1 decoder
    if conn.auto_range or conn.empty_attributes:
        return False  # these ldap3 paths read entry["attributes"], which the lean parser omits
    if _self_test is None:
        try:
            _self_test = ldap3.__version__ in LDAP3_VERSIONS and agrees(SAMPLE, 7)
        except Exception:  # an ldap3 whose loop no longer runs on this stub at all
            log.debug("lean decoder self-test raised", exc_info=True)
            _self_test = False
        if not _self_test:
            log.warning("ldap3 %s: lean search decoder off (ldap3 decodes, slower)", ldap3.__version__)
    if not _self_test:
        return False
    strategy._get_response = lean_get_response(strategy)
    return True
