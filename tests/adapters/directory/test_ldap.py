"""LdapDirectory against a real Samba AD DC: TLS and bind, failover, full and incremental reads.

One module-scoped tree under its own OU (two users, nested groups, a unicode
user, and a group of BIG users so that range retrieval is exercised: Samba
hands out 1,500 member values per read).  Reads are scoped to that OU so the
session's other tests, which share the DC, neither disturb nor are disturbed.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.ad_fixtures import unique_name
from userseg.adapters.directory import LdapDirectory, changes
from userseg.adapters.directory.fullread import even_cuts, usn_partitions
from userseg.adapters.directory.reader import Reader, guid_dns, user_filter
from userseg.directory.model import (
    CursorInvalid,
    DirectoryError,
    DirectoryServer,
    TlsMode,
)

from .helpers import (
    directory_for,
    group_ldif,
    ou_ldif,
    poll,
    server_of,
    settings_for,
    token,
    unused_address,
    user_ldif,
)

pytestmark = pytest.mark.netns

BIG = 1600
GUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
SID_RE = re.compile(r"^S-1-5-21-\d+-\d+-\d+$")


@dataclass(frozen=True)
class Tree:
    ou: str  # everything below is in scope
    outside: str  # a sibling OU: out of scope
    alice: str
    bob: str
    zoe: str
    inner: str
    outer: str
    big: str

    def dn(self, name: str, ou: str | None = None) -> str:
        return f"CN={name},{ou or self.ou}"


@pytest.fixture(scope="module")
def tree(samba_dc: Any) -> Iterator[Tree]:
    tok = token()
    base = samba_dc.base_dn
    realm = str(samba_dc.fqdn).split(".", 1)[1]
    t = Tree(
        ou=f"OU=us{tok},{base}",
        outside=f"OU=uo{tok},{base}",
        alice=unique_name("alice"),
        bob=unique_name("bob"),
        zoe=f"zoë{tok}",
        inner=unique_name("gin"),
        outer=unique_name("gout"),
        big=unique_name("gbig"),
    )
    bulk_ou = f"OU=bulk,{t.ou}"
    bulk = [f"CN=bk{tok}{i:04d},{bulk_ou}" for i in range(BIG)]
    entries = [ou_ldif(t.ou), ou_ldif(t.outside), ou_ldif(bulk_ou)]
    entries.append(user_ldif(t.dn(t.bob), t.bob, upn=f"{t.bob}@{realm}"))
    entries.append(user_ldif(t.dn(t.zoe), t.zoe, display="Zoë Ünïcode ✓"))
    entries += [user_ldif(dn, dn[3:].split(",", 1)[0]) for dn in bulk]
    samba_dc.ldif_add("\n".join(entries))
    samba_dc.samba_tool("user", "create", t.alice, "--random-password", f"--userou=OU=us{tok}")
    samba_dc.ldif_add(
        "\n".join(
            [
                group_ldif(t.dn(t.inner), t.inner, [t.dn(t.alice), t.dn(t.bob)]),
                group_ldif(t.dn(t.outer), t.outer, [t.dn(t.inner)]),
                group_ldif(t.dn(t.big), t.big, bulk),
            ]
        )
    )
    yield t
    # The big group first: deleting its members one by one would rewrite its 1,600-value list each time.
    samba_dc.samba_tool("group", "delete", t.big)
    for ou in (t.ou, t.outside):
        try:
            samba_dc.samba_tool("ou", "delete", ou.rsplit("," + base, 1)[0], "--force-subtree-delete")
        except Exception as exc:  # the DC is torn down with the session anyway
            print(f"cleanup of {ou} failed: {exc}")


def scoped(samba_dc: Any, tree: Tree, **kw: Any) -> Any:
    return directory_for(samba_dc, base_dn=tree.ou, **kw)


# -- connection, TLS, bind ------------------------------------------------------------------------


def test_ldaps_with_ca_validation(samba_dc: Any, tree: Tree) -> None:
    directory = scoped(samba_dc, tree)
    try:
        user = directory.read_user(tree.alice)
        assert user is not None and user.sam == tree.alice
        assert directory.server_url == f"ldaps://{samba_dc.address}:636"
    finally:
        directory.close()


def test_wrong_server_name_is_refused(samba_dc: Any) -> None:
    directory = directory_for(samba_dc, server_name="intruder.example.net")
    with pytest.raises(DirectoryError) as info:
        directory.read_all()
    msg = str(info.value)
    assert msg.startswith(f"ldaps://{samba_dc.address}:636: certificate name mismatch"), msg
    assert "expected name intruder.example.net" in msg


def test_untrusted_ca_is_refused(samba_dc: Any, tmp_path: Path) -> None:
    other_ca = tmp_path / "other.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=untrusted.example",
            "-days",
            "1",
            "-keyout",
            str(tmp_path / "k.pem"),
            "-out",
            str(other_ca),
        ],
        check=True,
        capture_output=True,
    )
    with pytest.raises(DirectoryError, match="certificate verify failed"):
        directory_for(samba_dc, ca_file=other_ca).read_all()


def test_starttls(samba_dc: Any, tree: Tree) -> None:
    directory = directory_for(samba_dc, server_of(samba_dc, TlsMode.STARTTLS), base_dn=tree.ou)
    try:
        assert directory.read_user(tree.bob) is not None
        assert directory.server_url == f"ldap://{samba_dc.address}:389"
    finally:
        directory.close()


def test_plain_ldap_simple_bind_is_refused_clearly(samba_dc: Any) -> None:
    directory = directory_for(samba_dc, server_of(samba_dc, TlsMode.NONE))
    with pytest.raises(DirectoryError) as info:
        directory.read_all()
    msg = str(info.value)
    assert msg.startswith(f"ldap://{samba_dc.address}:389: bind refused"), msg
    assert "ldaps or starttls" in msg


def test_wrong_password_never_leaks(samba_dc: Any, caplog: pytest.LogCaptureFixture) -> None:
    secret = "Wr0ng-" + token(12)
    directory = LdapDirectory(settings_for(samba_dc), netns=samba_dc.ns, password=secret)
    with pytest.raises(DirectoryError) as info:
        directory.read_all()
    msg = str(info.value)
    assert "bind refused: invalid credentials for" in msg and samba_dc.address in msg
    for text in (msg, repr(info.value), repr(directory), caplog.text, str(info.value.__cause__)):
        assert secret not in text


def test_failover_skips_an_unreachable_server(samba_dc: Any, tree: Tree) -> None:
    dead = DirectoryServer(unused_address(samba_dc), 636, TlsMode.LDAPS)
    directory = directory_for(samba_dc, dead, server_of(samba_dc), base_dn=tree.ou, connect_timeout=1.0)
    try:
        assert directory.read_user(tree.alice) is not None
        assert directory.server_url == server_of(samba_dc).url
    finally:
        directory.close()
    only_dead = directory_for(samba_dc, dead, server_of(samba_dc, TlsMode.NONE), connect_timeout=1.0)
    with pytest.raises(DirectoryError, match=r"^no directory server reachable: ldaps://.*; ldap://"):
        only_dead.read_all()


# -- full read ------------------------------------------------------------------------------------


def test_full_read(samba_dc: Any, tree: Tree) -> None:
    directory = scoped(samba_dc, tree, page_size=200)
    pages: list[tuple[str, int]] = []
    try:
        started = time.monotonic()
        image, cursor = directory.read_all(lambda what, n: pages.append((what, n)))
        elapsed = time.monotonic() - started
    finally:
        directory.close()
    print(f"full read: {len(image.users)} users, {len(image.groups)} groups in {elapsed:.3f} s")
    assert SID_RE.match(image.domain_sid)
    assert cursor.server == server_of(samba_dc).url and GUID_RE.match(cursor.invocation_id)
    assert cursor.highest_usn > 0
    users = {u.sam: u for u in image.users.values()}
    assert len(users) == BIG + 3
    alice, bob, zoe = users[tree.alice], users[tree.bob], users[tree.zoe]
    for user in (alice, bob, zoe):
        assert GUID_RE.match(user.guid) and image.users[user.guid] is user
        assert user.sid.startswith(image.domain_sid + "-") and user.primary_group_id == 513
    assert not alice.disabled and bob.disabled  # LDIF-created users without a password are disabled
    assert alice.dn == tree.dn(tree.alice) and bob.upn.startswith(tree.bob + "@")
    assert zoe.display_name == "Zoë Ünïcode ✓"
    groups = {g.name: g for g in image.groups.values()}
    assert groups[tree.inner].members == {alice.dn, bob.dn}
    assert groups[tree.outer].members == {tree.dn(tree.inner)}  # nested: the member is the group's DN
    assert groups[tree.inner].sid.startswith(image.domain_sid + "-")
    assert ("users", BIG + 3) in pages and pages[0] == ("users", 200)  # one progress call per page


@pytest.mark.parametrize("window", [None, 500])
def test_group_beyond_1500_members_is_complete(samba_dc: Any, tree: Tree, window: int | None) -> None:
    """All members, whether the server cuts the list (AD: 1,500) or we ask for slices.

    Samba 4.17 returns every value of a plain `member` request (it applies
    ranges only when asked), so window=500 is what drives the range follow-up
    code against a real server: member;range=0-499, 500-999, ... 1500-* .
    """
    directory = scoped(samba_dc, tree)
    directory.member_window = window
    try:
        image, _ = directory.read_all()
    finally:
        directory.close()
    big = next(g for g in image.groups.values() if g.name == tree.big)
    assert len(big.members) == BIG
    assert all(dn.startswith("CN=bk") and dn.endswith(f"OU=bulk,{tree.ou}") for dn in big.members)


def sequential(directory: LdapDirectory) -> LdapDirectory:
    """The read as it was before fullread.py: one connection, one user search, paged."""
    directory.read_connections = 1
    directory.user_partitions = 1
    directory.searches.plain = False
    return directory


@pytest.mark.parametrize(
    ("connections", "partitions", "plain", "window"),
    [(3, 7, True, None), (2, 3, False, 500), (4, 2, True, 700), (1, 1, True, None)],
)
def test_full_read_is_the_same_however_it_is_split(
    samba_dc: Any, tree: Tree, connections: int, partitions: int, plain: bool, window: int | None
) -> None:
    reference = sequential(scoped(samba_dc, tree, page_size=200))
    directory = scoped(samba_dc, tree, page_size=200)
    directory.read_connections, directory.user_partitions = connections, partitions
    directory.searches.plain = plain
    directory.member_window = window
    try:
        want, want_cursor = reference.read_all()
        got, cursor = directory.read_all()
    finally:
        reference.close()
        directory.close()
    assert len(want.users) == BIG + 3
    assert got == want
    assert cursor.invocation_id == want_cursor.invocation_id and cursor.highest_usn >= want_cursor.highest_usn
    assert not [t for t in threading.enumerate() if t.name.startswith("ldap-read-")]


def test_user_partitions_hold_every_user_exactly_once(samba_dc: Any, tree: Tree) -> None:
    """On the real server: the uSNCreated ranges split the users with nothing lost or doubled."""
    directory = scoped(samba_dc, tree)

    def split(reader: Reader) -> tuple[list[list[str]], set[str]]:
        base = reader.scope.user_bases[0]

        def guids(clause: str) -> list[str]:
            flt = user_filter(reader.settings, clause)
            return [guid for page in reader.paged(base, flt, ["objectGUID"]) for guid, _ in guid_dns(page)]

        return [guids(c) for c in usn_partitions(even_cuts(reader.highest_usn(), 7))], set(guids(""))

    try:
        parts, everyone = directory._with_reader(split)
    finally:
        directory.close()
    assert len(everyone) == BIG + 3
    assert sum(len(p) for p in parts) == len(everyone)
    assert set().union(*parts) == everyone
    assert sum(1 for p in parts if p) >= 2  # the split did split


# -- incremental reads ----------------------------------------------------------------------------


@pytest.fixture(params=["direct", "scan"])
def read_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Incremental reads either read each changed object (few changes) or search the scope (many)."""
    if request.param == "scan":
        monkeypatch.setattr(changes, "DIRECT_READ_LIMIT", 0)
    return str(request.param)


def test_read_changes_sees_a_new_member(samba_dc: Any, tree: Tree, read_mode: str) -> None:
    user, group = unique_name("cu"), unique_name("cg")
    ou_arg = "--userou=" + tree.ou.split(",", 1)[0]
    samba_dc.samba_tool("user", "create", user, "--random-password", ou_arg)
    samba_dc.samba_tool("group", "add", group, "--groupou=" + tree.ou.split(",", 1)[0])
    directory = scoped(samba_dc, tree)
    try:
        _, cursor = directory.read_all()
        nothing, same = directory.read_changes(cursor)
        assert not nothing and same.highest_usn == cursor.highest_usn
        samba_dc.samba_tool("group", "addmembers", group, user)
        started = time.monotonic()
        changes, after = directory.read_changes(cursor)
        print(f"incremental read of one change ({read_mode}): {time.monotonic() - started:.3f} s")
    finally:
        directory.close()
    assert after.highest_usn > cursor.highest_usn
    changed = {g.name: g for g in changes.groups}
    assert changed[group].members == {tree.dn(user)}
    assert not changes.deleted


def test_read_changes_reports_deleted_user(samba_dc: Any, tree: Tree, read_mode: str) -> None:
    user = unique_name("du")
    samba_dc.samba_tool("user", "create", user, "--random-password", "--userou=" + tree.ou.split(",", 1)[0])
    directory = scoped(samba_dc, tree)
    try:
        image, cursor = directory.read_all()
        guid = next(u.guid for u in image.users.values() if u.sam == user)
        samba_dc.samba_tool("user", "delete", user)
        changes, _ = directory.read_changes(cursor)
    finally:
        directory.close()
    assert guid in changes.deleted
    assert all(u.guid != guid for u in changes.users)


def test_read_changes_reports_user_moved_out_of_scope(samba_dc: Any, tree: Tree, read_mode: str) -> None:
    user = unique_name("mu")
    samba_dc.samba_tool("user", "create", user, "--random-password", "--userou=" + tree.ou.split(",", 1)[0])
    directory = directory_for(samba_dc, user_base_dns=(tree.ou,), group_base_dns=(tree.ou,))
    try:
        image, cursor = directory.read_all()
        guid = next(u.guid for u in image.users.values() if u.sam == user)
        samba_dc.samba_tool("user", "move", user, tree.outside)
        changes, _ = directory.read_changes(cursor)
        assert guid in changes.deleted and all(u.guid != guid for u in changes.users)
        assert directory.read_user(user) is None  # out of scope for lookups too
    finally:
        directory.close()


def test_cursor_of_another_dc_is_invalid(samba_dc: Any, samba_dc2: Any, tree: Tree) -> None:
    first, second = directory_for(samba_dc, base_dn=tree.ou), directory_for(samba_dc2)
    try:
        _, theirs = second.read_all()
        with pytest.raises(CursorInvalid, match="full read needed"):
            first.read_changes(theirs)
        _, ours = first.read_all()
        with pytest.raises(CursorInvalid):  # same URL, another database (a restore)
            first.read_changes(dataclasses.replace(ours, invocation_id=str(uuid.UUID(int=0))))
        changes, _ = first.read_changes(ours)
        assert changes is not None
    finally:
        first.close()
        second.close()


# -- read_user ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hostile",
    ["*)(|(cn=*", "*", "*)(objectClass=*", "\\", "\\2a", "a" * 10_000, "\x00x", "(", ")("],
)
def test_read_user_hostile_names_match_nothing(samba_dc: Any, tree: Tree, hostile: str) -> None:
    directory = scoped(samba_dc, tree)
    try:
        assert directory.read_user(hostile) is None
    finally:
        directory.close()


def test_read_user_by_sam_upn_domain_and_unicode(samba_dc: Any, tree: Tree) -> None:
    directory = scoped(samba_dc, tree)
    try:
        bob = directory.read_user(tree.bob)
        assert bob is not None and bob.sam == tree.bob and bob.disabled
        assert directory.read_user(bob.upn) == bob
        assert directory.read_user(tree.bob.upper()) == bob  # AD names are case-insensitive
        assert directory.read_user("LAB\\" + tree.bob) == bob
        zoe = directory.read_user(tree.zoe)
        assert zoe is not None and zoe.display_name == "Zoë Ünïcode ✓"
        assert directory.read_user(tree.alice + "*") is None
        assert directory.read_user("") is None
    finally:
        directory.close()


def test_reads_survive_a_dropped_connection(samba_dc: Any, tree: Tree) -> None:
    """A cached connection that died (DC restarted, idle timeout) is replaced transparently."""
    directory = scoped(samba_dc, tree)
    try:
        assert directory.read_user(tree.alice) is not None
        bound = directory._bound
        assert bound is not None
        bound.conn.socket.shutdown(2)  # as if the DC had gone away
        assert directory.read_user(tree.alice) is not None
        assert directory._bound is not bound
    finally:
        directory.close()
    with pytest.raises(RuntimeError):
        directory.read_user(tree.alice)


def test_poll_helper_times_out() -> None:
    with pytest.raises(AssertionError, match="timed out"):
        poll(lambda: None, 0.1)
