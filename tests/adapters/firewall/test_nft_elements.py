"""The raw-netlink element writer (nft_elements) against real nftables in a namespace.

The table is created with libnftables, elements are written with the writer and
read back through NftFirewall.read(), so what is checked is what the kernel holds.
Failure cases check the transaction property the bulk phase relies on: a refused
batch leaves nothing of itself behind, even when it spans several messages and sets.
"""

from __future__ import annotations

import errno
import json
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from userseg.adapters.firewall.nft import NftFirewall
from userseg.adapters.firewall.nft_elements import (
    MESSAGE_BYTES,
    NetlinkWriteError,
    NfTablesWriter,
    _element_lists,
    _timeout_attrs,
    describe_element,
    encode_elements,
)
from userseg.adapters.firewall.nft_render import element_timeout
from userseg.core.diff import diff
from userseg.core.table import (
    ActualState,
    AddElements,
    Box,
    DeleteElements,
    MapElement,
    Plan,
    SetKind,
)
from userseg.netns import NetnsWorker
from userseg.ports import FirewallError

from . import a4, a6, assert_states_match, box, needs_root, realistic_spec, run, with_users

TABLE = """
table inet userseg {
    map user4 { type ipv4_addr : verdict; flags timeout; }
    map user6 { type ipv6_addr : verdict; flags timeout; }
    set dest4 { type ipv4_addr . inet_proto . inet_service; flags interval; }
    set dest6 { type ipv6_addr . inet_proto . inet_service; flags interval; }
    chain c_fin { }
    chain c_eng { }
}
"""
V4, V6 = a4("198.18.0.0"), a6("2001:db8:1::")


@contextmanager
def usel_netns() -> Iterator[str]:
    """A fresh namespace (prefix usel) with lo up; always deleted, also on failure."""
    name = "usel" + secrets.token_hex(4)
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


@dataclass
class Kit:
    ns: str
    worker: NetnsWorker
    writer: NfTablesWriter
    fw: NftFirewall

    def write(self, *ops: AddElements | DeleteElements, now: datetime | None = None) -> int:
        return self.worker.call(lambda: self.writer.write(ops, now))


@pytest.fixture
def kit() -> Iterator[Kit]:
    with usel_netns() as ns:
        run("ip", "netns", "exec", ns, "nft", "-f", "-", input=TABLE)
        worker = NetnsWorker(ns, thread_name="test-writer")
        writer = worker.call(NfTablesWriter)
        fw = NftFirewall(ns)
        try:
            yield Kit(ns, worker, writer, fw)
        finally:
            fw.close()
            worker.call(writer.close)
            worker.close()


def users(now: datetime, v4: int, v6: int, offset: int = 0) -> tuple[AddElements, AddElements]:
    """v4 + v6 map additions with varied targets and expiries (10 min .. 10 min 59 s)."""

    def elem(base: int, i: int) -> MapElement:
        user = ("alice", "", 'o\'brien "zoë"', "x" * 128, "名前")[i % 5]
        return MapElement(base + i, ("c_fin", "c_eng")[i % 2], now + timedelta(seconds=600 + i % 60), user)

    return (
        AddElements("user4", SetKind.VMAP4, tuple(elem(V4, offset + i) for i in range(v4))),
        AddElements("user6", SetKind.VMAP6, tuple(elem(V6, offset + i) for i in range(v6))),
    )


def maps(state: ActualState) -> dict[str, dict[int, MapElement]]:
    return {
        name: {e.addr: e for e in state.elements[name] if isinstance(e, MapElement)}
        for name in ("user4", "user6")
    }


# ---------------------------------------------------------------- encoding (no root needed)


def test_messages_fit_a_16_bit_attribute_and_decode_back() -> None:
    now = datetime.now(UTC)
    add4, add6 = users(now, 3000, 3000)
    for op in (add4, add6):
        lists = list(_element_lists(encode_elements(op, now)))
        assert len(lists) > 1
        assert all(len(payload) <= MESSAGE_BYTES for payload in lists)
        first = encode_elements(op, now)[0]
        assert describe_element(op.kind, first[4:]).endswith(" goto c_fin")
    (elem,) = encode_elements(AddElements("d", SetKind.DEST4, (box("198.19.1.0/24", 6, (80, 90)),)), None)
    assert describe_element(SetKind.DEST4, elem[4:]) == "198.19.1.0-198.19.1.255 . 6 . 80-90"


def test_timeouts_match_the_json_writer() -> None:
    """The vectorised timeout arithmetic must agree with nft_render.element_timeout."""
    now = datetime.now(UTC)
    offsets = [-5.0, 0.0, 0.000001, 0.4, 1.0, 1.5, 2699.999999, 2700.0, 86400.25]
    expiries = {now + timedelta(seconds=s) for s in offsets}
    for at, attr in _timeout_attrs(expiries, now).items():
        assert len(attr) == 12
        assert int.from_bytes(attr[4:], "big") == element_timeout(at, now) * 1000


def test_refuses_what_it_cannot_encode() -> None:
    with pytest.raises(ValueError, match="cannot encode"):
        list(encode_elements(AddElements("n", SetKind.NET4, ("x",)), None))
    with pytest.raises(TypeError):
        list(encode_elements(AddElements("user4", SetKind.VMAP4, ("198.18.0.1",)), datetime.now(UTC)))
    too_big = MapElement(1 << 40, "c_fin", datetime.now(UTC), "u")
    with pytest.raises(ValueError, match="not an IPv4 address"):
        list(encode_elements(AddElements("user4", SetKind.VMAP4, (too_big,)), datetime.now(UTC)))
    now = datetime.now(UTC)
    fine = MapElement(V4, "c_fin", now, "alice")
    for user in ("x" * 129, "a\0b", "\udcff"):
        bad = fine._replace(addr=V4 + 1, user=user)
        with pytest.raises(ValueError, match=r"user=.* comment .* at most 128 bytes"):
            encode_elements(AddElements("user4", SetKind.VMAP4, (fine, bad)), now)
    deletion = DeleteElements("user4", SetKind.VMAP4, (fine._replace(user="x" * 300),))
    assert len(encode_elements(deletion, None)) == 1  # a deletion names the key only


# ---------------------------------------------------------------- against the kernel


@pytest.mark.netns
@needs_root
def test_bulk_write_reads_back_exactly(kit: Kit) -> None:
    now = datetime.now(UTC)
    add4, add6 = users(now, 10_000, 1_000)
    assert kit.write(add4, add6, now=now) == 11_000  # one batch of ~700 KB: beyond the default sndbuf
    got = maps(kit.fw.read())
    for op in (add4, add6):
        want = {e.addr: e for e in op.elements if isinstance(e, MapElement)}
        have = got[op.set_name]
        assert set(have) == set(want)
        assert all(have[a].target == want[a].target for a in want)
        assert all(have[a].user == want[a].user for a in want)  # quotes, unicode, 128 bytes, none
        late = [a for a in want if abs(have[a].expires_at - want[a].expires_at) > timedelta(seconds=2)]
        assert not late, f"{len(late)} expiries off by more than 2 s"


@pytest.mark.netns
@needs_root
def test_existing_key_refuses_the_whole_batch(kit: Kit) -> None:
    now = datetime.now(UTC)
    kit.write(*users(now, 100, 10), now=now)
    before = kit.fw.read()
    add4, add6 = users(now, 5_000, 500, offset=100)  # new keys, several messages per set...
    clash = AddElements("user6", SetKind.VMAP6, (*add6.elements, *users(now, 0, 1)[1].elements))
    with pytest.raises(NetlinkWriteError) as caught:  # ...and one existing key in the last message
        kit.write(add4, clash, now=now)
    assert caught.value.errno == errno.EEXIST
    assert "set user6, element 2001:db8:1:: goto c_fin: File exists" in str(caught.value)
    assert_states_match(kit.fw.read(), before, timedelta(seconds=1))


@pytest.mark.netns
@needs_root
def test_goto_to_a_missing_chain_refuses_the_whole_batch(kit: Kit) -> None:
    now = datetime.now(UTC)
    before = kit.fw.read()
    add4, _ = users(now, 3_000, 0)
    ghost = AddElements(
        "user6", SetKind.VMAP6, (MapElement(V6 + 7, "c_gone", now + timedelta(hours=1), "g"),)
    )
    with pytest.raises(NetlinkWriteError) as caught:
        kit.write(add4, ghost, now=now)
    assert caught.value.errno == errno.ENOENT
    assert "goto c_gone" in str(caught.value)
    assert kit.fw.read() == before
    assert not maps(kit.fw.read())["user4"]


@pytest.mark.netns
@needs_root
def test_deletion_and_its_failure(kit: Kit) -> None:
    now = datetime.now(UTC)
    add4, add6 = users(now, 2_000, 200)
    kit.write(add4, add6, now=now)
    gone4 = DeleteElements("user4", SetKind.VMAP4, add4.elements[:1_500])
    gone6 = DeleteElements("user6", SetKind.VMAP6, add6.elements[100:])
    assert kit.write(gone4, gone6) == 1_600
    got = maps(kit.fw.read())
    assert set(got["user4"]) == {e.addr for e in add4.elements[1_500:] if isinstance(e, MapElement)}
    assert set(got["user6"]) == {e.addr for e in add6.elements[:100] if isinstance(e, MapElement)}
    before = kit.fw.read()
    again = DeleteElements("user4", SetKind.VMAP4, add4.elements[1_400:1_600])  # 100 already gone
    with pytest.raises(NetlinkWriteError) as caught:
        kit.write(again)
    assert caught.value.errno == errno.ENOENT
    assert_states_match(kit.fw.read(), before, timedelta(seconds=1))


@pytest.mark.netns
@needs_root
def test_destination_boxes_read_back_and_clash(kit: Kit) -> None:
    boxes4 = (box("198.19.1.0/24", 6, (443, 443)), box("198.19.1.10-198.19.1.20", 17, (1000, 2000)))
    boxes6 = (box("2001:db8:f1::/64", 6, (443, 443)), box("2001:db8:f1::/64", 58))
    kit.write(AddElements("dest4", SetKind.DEST4, boxes4), AddElements("dest6", SetKind.DEST6, boxes6))
    state = kit.fw.read()
    assert state.elements["dest4"] == frozenset(boxes4)
    assert state.elements["dest6"] == frozenset(boxes6)
    overlap = Box(4, a4("198.19.1.5"), a4("198.19.1.5"), 6, 443, 443)
    with pytest.raises(NetlinkWriteError):
        kit.write(AddElements("dest4", SetKind.DEST4, (box("198.19.9.0/24", 6), overlap)))
    assert kit.fw.read() == state
    kit.write(DeleteElements("dest4", SetKind.DEST4, boxes4[:1]))
    assert kit.fw.read().elements["dest4"] == frozenset(boxes4[1:])


# ---------------------------------------------------------------- wired into NftFirewall


@pytest.mark.netns
@needs_root
def test_firewall_bulk_through_netlink_equals_json() -> None:
    """Same plan, both bulk writers: same read-back, and nft lists the same table
    (timeouts included; only the running `expires` countdowns and handles differ)."""
    now = datetime.now(UTC).replace(microsecond=0)
    spec = with_users(realistic_spec(now), now, 3_000)
    states, listings = [], []
    for writer in ("netlink", "json"):
        with usel_netns() as ns, NftFirewall(ns, chunk_elements=1_000, bulk_writer=writer) as fw:
            fw.apply(diff(spec, fw.read(), now))
            assert fw.transactions_run >= 3_000 // 1_000 + 2  # prelude, >= 3 bulk pieces, main
            states.append(fw.read())
            assert diff(spec, states[-1], now).is_empty
            listings.append(
                _normalised(run("ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", "userseg"))
            )
    assert_states_match(states[0], states[1])
    assert listings[0] == listings[1]
    assert '"goto": {"target": "c_fin"}' in json.dumps(listings[0])


def _normalised(listing: str) -> Any:
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in ("handle", "expires")}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    doc = strip(json.loads(listing))
    for item in doc["nftables"]:
        for body in item.values():
            if isinstance(body, dict) and "elem" in body:
                body["elem"] = sorted(body["elem"], key=json.dumps)
    return doc


@pytest.mark.netns
@needs_root
def test_firewall_reports_a_refused_netlink_chunk() -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    spec = realistic_spec(now)
    with usel_netns() as ns, NftFirewall(ns, chunk_elements=10) as fw:
        fw.apply(diff(spec, fw.read(), now))
        before = fw.read()
        exp = now + timedelta(minutes=5)
        bulk = AddElements(
            "user4", SetKind.VMAP4, tuple(MapElement(V4 + 5000 + i, "c_x", exp, "u") for i in range(20))
        )
        with pytest.raises(
            FirewallError, match=r"element 198\.18\.19\.136 goto c_x: No such file or directory"
        ):
            fw.apply(Plan(now=now, bulk=(bulk,)))
        assert_states_match(fw.read(), before, timedelta(seconds=1))
