"""The concurrent full read without a server: partitions, failing as one, progress, plain vs paged.

Fake readers stand in for connections to a DC; they evaluate the real search
filters (user_filter + the partition clauses) with a small RFC 4515
evaluator, so "every user in exactly one partition" is checked on the
filters the adapter really sends, not on a model of them.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from userseg.adapters.directory.connect import Bound, ConnectionLost, RootDse
from userseg.adapters.directory.entries import str_to_sid
from userseg.adapters.directory.fullread import FullRead, even_cuts, quantile_cuts, usn_partitions
from userseg.adapters.directory.reader import Reader, Scope, SearchModes, user_filter
from userseg.directory.model import (
    DirectoryError,
    DirectoryServer,
    DirectorySettings,
    SyncCursor,
    TlsMode,
)

SERVER = DirectoryServer("198.18.20.10", 636, TlsMode.LDAPS)
BASE = "DC=lab,DC=example"
DOMAIN = "S-1-5-21-1-2-3"


# -- a small RFC 4515 evaluator (enough for the filters the reader sends) ---------------------------------

Node = tuple[str, Any]


def parse_filter(text: str) -> Node:
    node, end = _parse(text, 0)
    assert end == len(text), text
    return node


def _parse(text: str, i: int) -> tuple[Node, int]:
    assert text[i] == "(", (text, i)
    i += 1
    if text[i] in "&|":
        op, i, subs = text[i], i + 1, []
        while text[i] == "(":
            sub, i = _parse(text, i)
            subs.append(sub)
        assert text[i] == ")"
        return (op, subs), i + 1
    if text[i] == "!":
        sub, i = _parse(text, i + 1)
        assert text[i] == ")"
        return ("!", sub), i + 1
    end = text.index(")", i)
    item = text[i:end]
    for op in (">=", "<=", "="):
        if op in item:
            attr, value = item.split(op, 1)
            if op == "=" and value == "*":
                return ("present", attr.lower()), end + 1
            return (op, (attr.lower(), value)), end + 1
    raise AssertionError(item)


def evaluate(node: Node, attrs: dict[str, list[str]], absent_is_false: bool) -> bool | None:
    """Three-valued (True, False, None = Undefined), RFC 4511 4.5.1.7."""
    kind, arg = node
    if kind in "&|":
        results = [evaluate(sub, attrs, absent_is_false) for sub in arg]
        decisive, other = (False, True) if kind == "&" else (True, False)
        if decisive in results:
            return decisive
        return None if None in results else other
    if kind == "!":
        result = evaluate(arg, attrs, absent_is_false)
        return None if result is None else not result
    if kind == "present":
        return arg in attrs
    attr, value = arg
    values = attrs.get(attr)
    if not values:
        return False if absent_is_false else None
    if kind == "=":
        return any(v.lower() == value.lower() for v in values)
    if kind == ">=":
        return any(int(v) >= int(value) for v in values)
    return any(int(v) <= int(value) for v in values)


def matches(flt: str, attrs: dict[str, list[str]], absent_is_false: bool = True) -> bool:
    return evaluate(parse_filter(flt), attrs, absent_is_false) is True


# -- partitions ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("absent_is_false", [True, False])
@pytest.mark.parametrize("highest", [0, 1, 2, 3, 7, 100, 39246])
@pytest.mark.parametrize("parts", [1, 2, 3, 4, 7, 16])
def test_every_user_lands_in_exactly_one_partition(highest: int, parts: int, absent_is_false: bool) -> None:
    clauses = usn_partitions(even_cuts(highest, parts))
    assert 1 <= len(clauses) <= parts
    settings = DirectorySettings(servers=(SERVER,), user_filter="(department=Sales)")
    values: list[int | None] = [None, *range(0, min(highest, 300) + 3), highest, highest + 1, highest + 10**6]
    values += random.Random(highest * 31 + parts).sample(range(highest + 1), min(highest + 1, 200))
    for usn in values:
        attrs = {"objectcategory": ["person"], "objectclass": ["top", "user"], "department": ["Sales"]}
        if usn is not None:
            attrs["usncreated"] = [str(usn)]
        hits = [c for c in clauses if matches(user_filter(settings, c), attrs, absent_is_false)]
        assert len(hits) == 1, (usn, hits)
        other = attrs | {"department": ["HR"]}  # the admin's filter still applies in every partition
        assert not any(matches(user_filter(settings, c), other, absent_is_false) for c in clauses)


def test_partitions_are_even_and_ordered() -> None:
    assert usn_partitions(even_cuts(1000, 4)) == [
        "(|(!(uSNCreated=*))(uSNCreated<=250))",
        "(&(uSNCreated>=251)(uSNCreated<=500))",
        "(&(uSNCreated>=501)(uSNCreated<=750))",
        "(uSNCreated>=751)",
    ]
    assert usn_partitions(even_cuts(1000, 1)) == [""] == usn_partitions([])


@given(
    st.lists(st.integers(0, 10**9), max_size=12), st.lists(st.one_of(st.none(), st.integers(0, 2 * 10**9)))
)
def test_any_cut_points_partition_exactly(cuts: list[int], values: list[int | None]) -> None:
    """Learnt cut points too (in any order, repeated: usn_partitions sorts and dedups them)."""
    clauses = usn_partitions(cuts)
    assert len(clauses) == len(set(cuts)) + 1
    for usn in values:
        attrs = {"objectclass": ["user"]} | ({} if usn is None else {"usncreated": [str(usn)]})
        assert sum(matches(f"(&(objectClass=user){c})", attrs) for c in clauses) == 1


def test_quantile_cuts_split_evenly() -> None:
    values = list(range(100, 1100))  # 1,000 users created between USN 100 and 1099
    assert quantile_cuts(values, 4) == [349, 599, 849]
    shares = [
        sum(1 for v in values if matches(c, {"usncreated": [str(v)]}))
        for c in usn_partitions([349, 599, 849])
    ]
    assert shares == [250, 250, 250, 250]
    assert quantile_cuts(values, 1) == [] and quantile_cuts([7, 8], 3) == []


# -- fakes -----------------------------------------------------------------------------------------------


@dataclass
class FakeUser:
    name: str
    usn: int
    guid: bytes = field(default_factory=lambda: uuid.uuid4().bytes_le)

    def entry(self) -> dict[str, Any]:
        rid = 1000 + self.usn
        return {
            "type": "searchResEntry",
            "dn": f"CN={self.name},{BASE}",
            "raw_attributes": {
                "sAMAccountName": [self.name.encode()],
                "objectGUID": [self.guid],
                "objectSid": [str_to_sid(f"{DOMAIN}-{rid}")],
                "uSNChanged": [str(self.usn).encode()],
                "uSNCreated": [str(self.usn).encode()],
            },
        }

    def attrs(self) -> dict[str, list[str]]:
        return {"objectcategory": ["person"], "objectclass": ["user"], "usncreated": [str(self.usn)]}


@dataclass
class FakeDirectory:
    users: list[FakeUser]
    groups: int = 30
    invocation_id: str = "11111111-2222-3333-4444-555555555555"
    highest: int = 0
    delay: float = 0.0  # seconds per page, to let threads interleave
    fail_on: str | None = None  # a filter fragment: that search fails after its first page
    pages_served: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def group_entries(self) -> list[dict[str, Any]]:
        return [
            {
                "type": "searchResEntry",
                "dn": f"CN=g{i},{BASE}",
                "raw_attributes": {
                    "sAMAccountName": [f"g{i}".encode()],
                    "objectGUID": [uuid.UUID(int=i + 1).bytes_le],
                    "member": [u.entry()["dn"].encode() for u in self.users[i::7]],
                },
            }
            for i in range(self.groups)
        ]


class FakeBound:
    def __init__(self, directory: FakeDirectory, invocation_id: str | None = None) -> None:
        self.url = SERVER.url
        self.server = SERVER
        self.root = RootDse(BASE, directory.highest, "CN=NTDS", invocation_id or directory.invocation_id)
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeReader:
    """The Reader surface FullRead uses, over a FakeDirectory."""

    def __init__(self, directory: FakeDirectory, settings: DirectorySettings, bound: FakeBound) -> None:
        self.directory = directory
        self.settings = settings
        self.scope = Scope.of(settings, BASE)
        self.member_window = None
        self.searches = SearchModes()
        self.bound = bound

    def highest_usn(self) -> int:
        return self.directory.highest

    def domain_sid(self) -> str:
        return DOMAIN

    def cursor(self, usn: int) -> SyncCursor:
        return SyncCursor(self.bound.url, self.bound.root.invocation_id, usn)

    def group_attributes(self) -> list[str]:
        return ["sAMAccountName", "objectGUID", "member"]

    def members(self, entry: dict[str, Any]) -> tuple[list[bytes], int | None]:
        return list(entry["raw_attributes"]["member"]), None

    def rest_of_members(self, dn: str, start: int) -> list[bytes]:
        raise AssertionError("no ranges here")

    def paged(self, base: str, flt: str, attributes: Iterable[str]) -> Iterator[list[dict[str, Any]]]:
        d = self.directory
        if "objectClass=group" in flt:
            found = d.group_entries()
        else:
            found = [u.entry() for u in d.users if matches(flt, u.attrs())]
        step = self.settings.page_size
        for n, start in enumerate(range(0, max(len(found), 1), step)):
            if d.fail_on is not None and d.fail_on in flt and n == 1:
                raise ConnectionLost(f"{self.bound.url}: search {flt} under {base}: connection reset")
            time.sleep(d.delay)
            with d.lock:
                d.pages_served += 1
            yield found[start : start + step]


def make_users(n: int, highest: int, seed: int = 1) -> list[FakeUser]:
    rng = random.Random(seed)
    return [FakeUser(f"u{i:05d}", rng.randint(1, highest)) for i in range(n)]


def full_read(
    directory: FakeDirectory,
    *,
    connections: int = 3,
    partitions: int = 4,
    page_size: int = 100,
    progress: Any = None,
    opener: Any = "default",
) -> tuple[Any, list[FakeBound]]:
    settings = DirectorySettings(servers=(SERVER,), page_size=page_size)
    opened: list[FakeBound] = []

    def open_extra() -> FakeReader:
        bound = FakeBound(directory)
        opened.append(bound)
        return FakeReader(directory, settings, bound)

    main = FakeReader(directory, settings, FakeBound(directory))
    read = FullRead(
        main,  # type: ignore[arg-type]
        open_extra if opener == "default" else opener,  # type: ignore[arg-type]
        connections=connections,
        partitions=partitions,
        progress=progress,
    )
    return read.run(), opened


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ldap-read-")]


# -- the full read ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("connections", "partitions"), [(1, 1), (1, 4), (2, 2), (3, 4), (4, 9), (8, 3)])
def test_same_image_whatever_the_split(connections: int, partitions: int) -> None:
    directory = FakeDirectory(make_users(1234, 5000), highest=5000)
    (reference, cursor), _ = full_read(directory, connections=1, partitions=1)
    (image, cursor2), opened = full_read(directory, connections=connections, partitions=partitions)
    assert len(reference.users) == 1234 and len(reference.groups) == 30
    assert image == reference and cursor2 == cursor
    assert all(b.closed for b in opened) and not worker_threads()


def test_each_read_learns_where_to_split_the_next() -> None:
    """Users bunched in one USN range (a bulk import): even cuts are lopsided, learnt ones are not."""
    users = make_users(900, 1000) + [FakeUser(f"b{i}", 9000 + i) for i in range(2100)]
    directory = FakeDirectory(users, groups=0, highest=20000)
    settings = DirectorySettings(servers=(SERVER,), page_size=100000)
    sizes: list[int] = []
    paged = FakeReader.paged

    def counting(self: FakeReader, base: str, flt: str, attributes: Iterable[str]) -> Any:
        for page in paged(self, base, flt, attributes):
            if "uSNCreated" in flt:
                assert "uSNCreated" in attributes  # asked for, to learn from
                sizes.append(len(page))
            yield page

    def read(cuts: list[int] | None) -> FullRead:
        main = FakeReader(directory, settings, FakeBound(directory))
        full = FullRead(main, None, connections=1, partitions=3, cuts=cuts)  # type: ignore[arg-type]
        full.run()
        return full

    FakeReader.paged = counting  # type: ignore[method-assign]
    try:
        first = read(None)
        lopsided, sizes[:] = sorted(sizes), []
        second = read(first.learned_cuts)
    finally:
        FakeReader.paged = paged  # type: ignore[method-assign]
    assert lopsided == [0, 900, 2100]
    assert sizes == [1000, 1000, 1000] and len(first.learned_cuts) == 2
    assert second.learned_cuts == first.learned_cuts


def test_progress_users_first_then_groups_in_page_steps() -> None:
    """Groups finish long before the users here; their counts are still reported after them."""
    directory = FakeDirectory(make_users(1003, 900), groups=250, highest=900, delay=0.01)
    calls: list[tuple[str, int]] = []
    seen_groups = threading.Event()
    paged = FakeReader.paged

    def slow_users(self: FakeReader, base: str, flt: str, attributes: Iterable[str]) -> Any:
        if "objectClass=group" in flt:
            yield from paged(self, base, flt, attributes)
            seen_groups.set()
        else:
            seen_groups.wait(5)  # users only once every group has been read
            yield from paged(self, base, flt, attributes)

    FakeReader.paged = slow_users  # type: ignore[method-assign]
    try:
        full_read(
            directory, connections=3, partitions=2, page_size=100, progress=lambda w, n: calls.append((w, n))
        )
    finally:
        FakeReader.paged = paged  # type: ignore[method-assign]
    assert seen_groups.is_set()
    users = [("users", n) for n in range(100, 1001, 100)] + [("users", 1003)]
    assert calls == [*users, ("groups", 100), ("groups", 200), ("groups", 250)]


def test_one_connection_reports_each_page_before_asking_for_the_next() -> None:
    """As the sequential read did: a DC that dies during a progress callback fails the next page."""
    directory = FakeDirectory(make_users(450, 900), highest=900)
    calls: list[tuple[str, int]] = []

    def progress(what: str, n: int) -> None:
        calls.append((what, n))
        directory.fail_on = "objectClass=user"  # every later page of the user search fails

    with pytest.raises(ConnectionLost):
        full_read(directory, connections=1, partitions=1, page_size=100, progress=progress)
    assert calls == [("users", 100)]
    assert not worker_threads()


def test_progress_of_an_empty_directory() -> None:
    calls: list[tuple[str, int]] = []
    full_read(FakeDirectory([], groups=0, highest=10), progress=lambda what, n: calls.append((what, n)))
    assert calls == [("users", 0), ("groups", 0)]


def test_one_failing_partition_fails_the_read_and_stops_the_rest() -> None:
    directory = FakeDirectory(make_users(3000, 4000), highest=4000, delay=0.01, fail_on="uSNCreated>=2001")
    calls: list[tuple[str, int]] = []
    with pytest.raises(ConnectionLost, match="connection reset"):
        full_read(
            directory,
            connections=2,
            partitions=2,
            page_size=50,
            progress=lambda what, n: calls.append((what, n)),
        )
    assert not worker_threads()  # every thread ended before the error reached the caller
    assert directory.pages_served < 15  # the other partition (30 pages) stopped early; groups never began
    assert all(what == "users" for what, _ in calls)


def test_extra_connections_that_fail_to_open_are_not_a_failure() -> None:
    directory = FakeDirectory(make_users(500, 800), highest=800)

    def refuse() -> FakeReader:
        raise DirectoryError(f"{SERVER.url}: too many connections")

    (image, _), _ = full_read(directory, connections=4, partitions=4, opener=refuse)
    assert len(image.users) == 500 and not worker_threads()


def test_an_extra_connection_to_another_dc_is_not_used() -> None:
    """Same URL, another database (a load-balanced name): its USNs and entries would not match."""
    directory = FakeDirectory(make_users(500, 800), highest=800)
    settings = DirectorySettings(servers=(SERVER,), page_size=100)
    strays: list[FakeBound] = []

    def elsewhere() -> FakeReader:
        bound = FakeBound(directory, invocation_id="99999999-2222-3333-4444-555555555555")
        strays.append(bound)
        reader = FakeReader(directory, settings, bound)
        reader.paged = None  # type: ignore[assignment,method-assign]  # would fail if it were used
        return reader

    (image, _), _ = full_read(directory, connections=3, partitions=3, opener=elsewhere)
    assert len(image.users) == 500
    assert strays and all(b.closed for b in strays)


def test_hostile_entries_are_skipped_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    users = make_users(300, 500)
    directory = FakeDirectory(users, highest=500)
    broken = users[7]
    broken.guid = b"short"
    (image, _), _ = full_read(directory)
    assert len(image.users) == 299
    assert f"skipping user CN={broken.name},{BASE}" in caplog.text


# -- plain searches first, pages when the server caps them ----------------------------------------------


class FakeConn:
    """Just enough of an ldap3 Connection for Reader.paged."""

    def __init__(self, entries: int, cap: int | None, page_result: int = 0) -> None:
        self.entries = [
            {"type": "searchResEntry", "dn": f"CN=u{i}", "raw_attributes": {}} for i in range(entries)
        ]
        self.cap = cap
        self.page_result = page_result
        self.calls: list[int | None] = []  # paged_size of each search
        self.response: list[dict[str, Any]] = []
        self.result: dict[str, Any] = {}
        self.closed = False

    def search(self, base: str, flt: str, scope: Any, deref: Any, **kw: Any) -> bool:
        size = kw.get("paged_size")
        self.calls.append(size)
        if size is None:
            if self.cap is not None and len(self.entries) > self.cap:
                self.response = self.entries[: self.cap]
                self.result = {"result": 4, "description": "sizeLimitExceeded", "message": ""}
            else:
                self.response = list(self.entries)
                self.result = {"result": 0, "description": "success", "message": ""}
            return True
        start = int(kw.get("paged_cookie") or b"0")
        self.response = self.entries[start : start + size]
        more = start + size < len(self.entries)
        cookie = str(start + size).encode() if more else b""
        code = self.page_result if more else 0
        self.result = {
            "result": code,
            "description": "timeLimitExceeded" if code == 3 else "success",
            "message": "",
            "controls": {"1.2.840.113556.1.4.319": {"value": {"cookie": cookie}}},
        }
        return True

    def unbind(self) -> None:
        self.closed = True


def reader_over(conn: FakeConn, searches: SearchModes | None = None) -> Reader:
    bound = Bound(conn=conn, server=SERVER, root=RootDse(BASE, 1, "CN=NTDS", "x"))
    return Reader(bound, DirectorySettings(servers=(SERVER,), page_size=100), searches=searches)


def test_a_server_that_does_not_cap_answers_in_one_plain_search() -> None:
    conn = FakeConn(2500, cap=None)
    pages = list(reader_over(conn).paged(BASE, "(objectClass=user)", ["cn"]))
    assert [len(p) for p in pages] == [2500] and conn.calls == [None]


def test_a_capped_plain_search_is_discarded_and_paged_from_then_on() -> None:
    conn, searches = FakeConn(2500, cap=1000), SearchModes()
    pages = list(reader_over(conn, searches).paged(BASE, "(objectClass=user)", ["cn"]))
    assert [len(p) for p in pages] == [100] * 25  # the 1,000 capped entries were not used
    assert conn.calls == [None] + [100] * 25
    assert not searches.plain_allowed(SERVER.url)
    conn.calls.clear()
    list(reader_over(conn, searches).paged(BASE, "(objectClass=user)", ["cn"]))
    assert conn.calls == [100] * 25  # remembered: no second wasted plain search


def test_paging_only_when_told() -> None:
    conn = FakeConn(250, cap=None)
    pages = list(reader_over(conn, SearchModes(plain=False)).paged(BASE, "(objectClass=user)", ["cn"]))
    assert [len(p) for p in pages] == [100, 100, 50] and conn.calls == [100, 100, 100]


def test_a_page_that_is_not_a_success_fails_the_search() -> None:
    """ldap3 does not raise timeLimitExceeded: before, such a page ended the read as if complete."""
    conn = FakeConn(250, cap=None, page_result=3)
    with pytest.raises(DirectoryError, match="timeLimitExceeded"):
        list(reader_over(conn, SearchModes(plain=False)).paged(BASE, "(objectClass=user)", ["cn"]))


def test_a_plain_search_that_is_not_a_success_fails() -> None:
    conn = FakeConn(10, cap=None)
    original = conn.search

    def admin_limit(*args: Any, **kw: Any) -> bool:
        original(*args, **kw)
        conn.result = {"result": 11, "description": "adminLimitExceeded", "message": "too much"}
        return True

    conn.search = admin_limit  # type: ignore[method-assign]
    with pytest.raises(DirectoryError, match="adminLimitExceeded: too much"):
        list(reader_over(conn).paged(BASE, "(objectClass=user)", ["cn"]))
