"""Nested group resolution from raw directory entries, and incremental image updates."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from userseg.core.membership import (
    NEVER_EXPIRES,
    account_expired,
    apply_changes,
    dn_key,
    expiry_time,
    lost_accounts,
    resolve,
)
from userseg.directory.model import DirectoryChanges, DirectoryGroup, DirectoryImage, DirectoryUser
from userseg.model import Group, User

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
DOMAIN = "S-1-5-21-1000-2000-3000"
BASE = "DC=example,DC=net"
_1601 = datetime(1601, 1, 1, tzinfo=UTC)


def ticks(when: datetime) -> int:
    """accountExpires value (100 ns since 1601) for an instant."""
    delta = when - _1601
    return (delta.days * 86400 + delta.seconds) * 10_000_000 + delta.microseconds * 10


def udn(sam: str) -> str:
    return f"CN={sam},OU=Staff,{BASE}"


def gdn(name: str) -> str:
    return f"CN={name},OU=Groups,{BASE}"


def user(guid: str, sam: str, **kw: object) -> DirectoryUser:
    return DirectoryUser(guid=guid, dn=str(kw.pop("dn", udn(sam))), sam=sam, **kw)  # type: ignore[arg-type]


def group(guid: str, name: str, *members: str, rid: int | None = None, **kw: object) -> DirectoryGroup:
    sid = f"{DOMAIN}-{rid}" if rid is not None else ""
    dn = str(kw.pop("dn", gdn(name)))
    return DirectoryGroup(guid=guid, dn=dn, name=name, sid=sid, members=frozenset(members), **kw)  # type: ignore[arg-type]


def image(*entries: DirectoryUser | DirectoryGroup, domain_sid: str = DOMAIN) -> DirectoryImage:
    users = {e.guid: e for e in entries if isinstance(e, DirectoryUser)}
    groups = {e.guid: e for e in entries if isinstance(e, DirectoryGroup)}
    return DirectoryImage(domain_sid, users, groups)


def groups_of(img: DirectoryImage, name: str, include: tuple[str, ...] = ()) -> frozenset[str]:
    return resolve(img, NOW, include).users[name].groups


# --- nesting -------------------------------------------------------------------------


def test_three_level_nesting_and_edge_count() -> None:
    img = image(
        user("u1", "Alice"),
        user("u2", "bob"),
        user("u3", "carol"),
        group("g1", "Team-West", udn("Alice")),
        group("g2", "Sales", gdn("Team-West"), udn("bob")),
        group("g3", "Division", gdn("Sales")),
        group("g4", "Unrelated", udn("carol")),
    )
    r = resolve(img, NOW)
    assert r.users["alice"] == User("alice", "", False, frozenset({"team-west", "sales", "division"}))
    assert r.users["bob"].groups == {"sales", "division"}
    assert r.users["carol"].groups == {"unrelated"}
    assert r.nested_edges == 2
    assert r.problems == ()
    assert r.groups["sales"] == Group("sales", "Sales", gdn("Sales"))
    assert set(r.groups) == {"team-west", "sales", "division", "unrelated"}


def test_group_description_is_its_display_name() -> None:
    r = resolve(image(group("g1", "Finance", description="Money people")), NOW)
    assert r.groups["finance"] == Group("finance", "Money people", gdn("Finance"))


def test_cycles_terminate_and_count_every_group_once() -> None:
    img = image(
        user("u1", "alice"),
        user("u2", "bob"),
        group("ga", "A", udn("alice"), gdn("B")),
        group("gb", "B", gdn("A")),  # A in B in A
        group("gc", "C", gdn("C"), udn("bob")),  # a group that contains itself
        group("gd", "D", gdn("B")),  # above the cycle
    )
    r = resolve(img, NOW)
    assert r.users["alice"].groups == {"a", "b", "d"}
    assert r.users["bob"].groups == {"c"}


def test_primary_group_comes_from_domain_sid_and_rid_not_member_lists() -> None:
    img = image(
        user("u1", "alice", primary_group_id=513),
        user("u2", "bob", primary_group_id=1105),  # primary group Finance
        user("u3", "carol", primary_group_id=9999),  # names no group we have
        user("u4", "dave"),  # no primaryGroupID read
        group("g1", "Domain Users", rid=513),  # empty member list, as in AD
        group("g2", "All Staff", gdn("Domain Users")),
        group("g3", "Finance", rid=1105),
    )
    r = resolve(img, NOW)
    assert r.users["alice"].groups == {"domain users", "all staff"}
    assert r.users["bob"].groups == {"finance"}
    assert r.users["carol"].groups == frozenset()
    assert r.users["dave"].groups == frozenset()


def test_primary_group_needs_the_domain_sid() -> None:
    img = image(
        user("u1", "alice", primary_group_id=513), group("g1", "Domain Users", rid=513), domain_sid=""
    )
    assert groups_of(img, "alice") == frozenset()


def test_primary_group_of_another_domain_does_not_match() -> None:
    other = DirectoryGroup("g1", gdn("Domain Users"), "Domain Users", sid="S-1-5-21-9-9-9-513")
    img = image(user("u1", "alice", primary_group_id=513), other)
    assert groups_of(img, "alice") == frozenset()


# --- disabled and expired accounts --------------------------------------------------


def test_disabled_user_keeps_its_groups_and_is_marked_disabled() -> None:
    img = image(
        user("u1", "alice", disabled=True, display_name="Alice A"), group("g1", "Finance", udn("alice"))
    )
    assert resolve(img, NOW).users["alice"] == User("alice", "Alice A", True, frozenset({"finance"}))


def test_account_expires_in_the_past_never_and_future() -> None:
    img = image(
        user("u1", "past", expires=ticks(NOW - timedelta(days=1))),
        user("u2", "zero", expires=0),
        user("u3", "max", expires=2**63 - 1),
        user("u4", "future", expires=ticks(NOW + timedelta(days=1))),
        user("u5", "now", expires=ticks(NOW)),
        user("u6", "justafter", expires=ticks(NOW + timedelta(microseconds=1))),
    )
    disabled = {name: u.disabled for name, u in resolve(img, NOW).users.items()}
    assert disabled == {
        "past": True,
        "zero": False,
        "max": False,
        "future": False,
        "now": True,  # expires at that instant
        "justafter": False,
    }


def test_expiry_time_and_account_expired_edges() -> None:
    assert NEVER_EXPIRES == (0, 2**63 - 1)
    when = datetime(2027, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    assert expiry_time(ticks(when)) == when
    assert expiry_time(0) is None
    assert expiry_time(2**63 - 1) is None
    assert expiry_time(-5) is None
    assert expiry_time(2**63 - 2) is None  # year 30828: beyond datetime, so never in practice
    assert account_expired(ticks(when), when)
    assert not account_expired(ticks(when), when - timedelta(microseconds=1))
    assert not account_expired(2**63 - 2, NOW)
    assert not account_expired(-1, NOW)
    # 116444736000000000 ticks is the Unix epoch
    assert expiry_time(116444736000000000) == datetime(1970, 1, 1, tzinfo=UTC)


# --- group_include ------------------------------------------------------------------


def test_include_globs_apply_after_nesting() -> None:
    img = image(
        user("u1", "alice"),
        user("u2", "bob"),
        group("g1", "Team-West", udn("alice")),  # excluded, nested in an included group
        group("g2", "Sales-All", gdn("Team-West")),
        group("g3", "APP_Finance", udn("bob"), gdn("Sales-All")),
        group("g4", "Printers", udn("alice")),
    )
    r = resolve(img, NOW, ["sales-*", "app_?inance"])
    assert r.users["alice"].groups == {"sales-all", "app_finance"}
    assert r.users["bob"].groups == {"app_finance"}
    assert set(r.groups) == {"sales-all", "app_finance"}


def test_include_patterns_are_case_insensitive_and_bracket_classes_work() -> None:
    img = image(user("u1", "alice"), group("g1", "Finance", udn("alice")), group("g2", "HR", udn("alice")))
    assert groups_of(img, "alice", ("  FIN*",)) == {"finance"}
    assert groups_of(img, "alice", ("[h]r",)) == {"hr"}
    assert groups_of(img, "alice", ("nothing",)) == frozenset()
    assert groups_of(img, "alice") == {"finance", "hr"}


# --- bad data -----------------------------------------------------------------------


def test_duplicate_canonical_names_are_reported_and_skipped() -> None:
    img = image(
        user("u1", "alice"),
        user("u2", "bob"),
        user("u3", " ALICE ", dn="CN=Alice Two,OU=Staff," + BASE),
        group("ga", "Finance", udn("alice")),
        group("gb", "FINANCE", udn("bob"), dn="CN=Finance2,OU=Groups," + BASE),
        group("gc", "Parent", "CN=Finance2,OU=Groups," + BASE),
    )
    r = resolve(img, NOW)
    # the lower GUID wins; the other is skipped entirely, nesting through it included
    assert set(r.users) == {"alice", "bob"}
    assert r.users["alice"].groups == {"finance"}
    assert r.users["bob"].groups == frozenset()
    assert set(r.groups) == {"finance", "parent"}
    assert r.groups["finance"].dn == gdn("Finance")
    assert len(r.problems) == 2
    assert any("CN=Finance2,OU=Groups" in p and "same name" in p for p in r.problems)
    assert any("CN=Alice Two" in p and "'alice'" in p for p in r.problems)


def test_entries_without_names_are_reported_and_skipped() -> None:
    img = image(user("u1", "  "), user("u2", "bob"), group("g1", "", udn("bob")))
    r = resolve(img, NOW)
    assert set(r.users) == {"bob"}
    assert r.users["bob"].groups == frozenset()
    assert r.groups == {}
    assert len(r.problems) == 2
    assert all(udn("  ") in p or gdn("") in p for p in r.problems)


def test_member_dns_differing_in_case_and_whitespace_still_match() -> None:
    img = image(
        user("u1", "alice", dn="CN=Alice,OU=Staff,DC=example,DC=net"),
        group("g1", "Finance", "cn=ALICE , ou=staff,DC=Example,  dc=NET "),
        group("g2", "Top", " CN = finance,OU=Groups,DC=EXAMPLE,DC=net"),
    )
    assert groups_of(img, "alice") == {"finance", "top"}


def test_dn_key_fast_path_folds_case_and_separator_whitespace() -> None:
    assert dn_key(" CN = Alice ,OU=Staff , DC=example") == "cn=alice,ou=staff,dc=example"
    assert dn_key("CN=Alice Smith,DC=x") == "cn=alice smith,dc=x"  # inner spaces are data
    assert dn_key("CN=Straße,DC=x") == dn_key("CN=STRASSE,DC=x")  # casefold, not lower


def test_dn_key_escaped_separators_are_data() -> None:
    # two different objects: the space after an escaped comma is part of the name
    assert dn_key(r"CN=Smith\, John,OU=Staff,DC=x") != dn_key(r"CN=Smith\,John,OU=Staff,DC=x")
    # a hex escape and a character escape are the same DN, and so is a different case
    assert dn_key(r"CN=Smith\2C John,OU=Staff,DC=x") == dn_key(r"cn=smith\, john , ou=staff,dc=x")
    # UTF-8 hex escapes equal the plain character (so escaped and unescaped spellings meet)
    assert dn_key(r"CN=Jos\C3\A9,DC=x") == dn_key("CN=José,DC=x")
    # an escaped trailing space survives, unescaped whitespace does not
    assert dn_key("CN=foo\\ ,DC=x") != dn_key("CN=foo,DC=x")
    assert dn_key("CN=foo\\ ,DC=x") == dn_key("CN=foo\\20 , DC=x")
    # an escaped plus is not a multi-valued RDN separator
    assert dn_key(r"CN=a\+b,DC=x") != dn_key("CN=a+b,DC=x")
    assert dn_key(r"CN=back\\slash,DC=x") == dn_key(r"CN=back\5Cslash,DC=x")
    assert dn_key("CN=trailing\\") == "cn=trailing\\"


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["CN", "OU", "dc", "uid"]),
            st.text(alphabet="abcXYZé ,+=-_.", min_size=1, max_size=6),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_dn_key_slow_path_agrees_with_fast_path_on_plain_dns(rdns: list[tuple[str, str]]) -> None:
    plain = ",".join(f"{t}={v}" for t, v in rdns)
    # an escaped character that needs no escaping forces the slow path without changing the DN
    forced = plain.replace("X", "\\X") if "X" in plain else plain + ",DC=\\58"
    expected = dn_key(plain) if "X" in plain else dn_key(plain + ",DC=X")
    assert dn_key(forced) == expected


def test_escaped_comma_names_resolve_to_the_right_user() -> None:
    smith_john = r"CN=Smith\, John,OU=Staff," + BASE
    smith_john2 = r"CN=Smith\,John,OU=Staff," + BASE
    img = image(
        user("u1", "jsmith", dn=smith_john),
        user("u2", "jsmith2", dn=smith_john2),
        group("g1", "Finance", r"CN=Smith\2C John,OU=Staff," + BASE),
    )
    r = resolve(img, NOW)
    assert r.users["jsmith"].groups == {"finance"}
    assert r.users["jsmith2"].groups == frozenset()


# --- incremental changes ------------------------------------------------------------


def base_image() -> DirectoryImage:
    return image(
        user("u1", "alice"),
        user("u2", "bob"),
        group("g1", "Team", udn("alice"), udn("bob")),
        group("g2", "Dept", gdn("Team")),
        group("g3", "Finance", udn("alice")),
    )


def test_renamed_user_keeps_its_memberships() -> None:
    before = base_image()
    moved = replace(before.users["u1"], dn="CN=Alice Renamed,OU=Moved," + BASE, usn=200)
    after = apply_changes(before, DirectoryChanges(users=(moved,)))
    assert after.users["u1"] == moved
    assert "CN=Alice Renamed,OU=Moved," + BASE in after.groups["g1"].members
    assert udn("alice") not in after.groups["g1"].members
    assert groups_of(after, "alice") == {"team", "dept", "finance"}
    assert resolve(after, NOW).users == resolve(before, NOW).users
    # the input image is not modified
    assert before.users["u1"].dn == udn("alice")
    assert udn("alice") in before.groups["g1"].members


def test_renamed_group_keeps_its_nesting_and_members() -> None:
    before = base_image()
    renamed = replace(before.groups["g1"], dn=gdn("Team Renamed"), name="Team2")
    after = apply_changes(before, DirectoryChanges(groups=(renamed,)))
    assert after.groups["g2"].members == {gdn("Team Renamed")}
    assert groups_of(after, "bob") == {"team2", "dept"}


def test_rename_matches_member_dns_case_insensitively() -> None:
    before = image(user("u1", "alice"), group("g1", "Team", udn("alice").upper()))
    moved = replace(before.users["u1"], dn="CN=alice,OU=Other," + BASE)
    after = apply_changes(before, DirectoryChanges(users=(moved,)))
    assert after.groups["g1"].members == {"CN=alice,OU=Other," + BASE}


def test_groups_read_in_the_same_change_keep_their_fresh_member_list() -> None:
    before = base_image()
    moved = replace(before.users["u1"], dn="CN=Alice2,OU=Staff," + BASE)
    # Finance was re-read in the same batch and already lists the new DN - and only Team members
    finance = replace(before.groups["g3"], members=frozenset({"CN=Alice2,OU=Staff," + BASE, udn("bob")}))
    after = apply_changes(before, DirectoryChanges(users=(moved,), groups=(finance,)))
    assert after.groups["g3"] == finance
    assert groups_of(after, "bob") == {"team", "dept", "finance"}
    assert groups_of(after, "alice") == {"team", "dept", "finance"}


def test_two_renames_in_one_batch_do_not_chain() -> None:
    # alice moves to X, bob takes alice's old DN: Team's old "alice" entry means alice.
    before = image(user("u1", "alice"), user("u2", "bob"), group("g1", "Team", udn("alice")))
    a = replace(before.users["u1"], dn=udn("x"))
    b = replace(before.users["u2"], dn=udn("alice"))
    after = apply_changes(before, DirectoryChanges(users=(a, b)))
    assert after.groups["g1"].members == {udn("x")}
    assert groups_of(after, "alice") == {"team"}
    assert groups_of(after, "bob") == frozenset()


def test_deleted_group_removes_memberships_through_it() -> None:
    after = apply_changes(base_image(), DirectoryChanges(deleted=frozenset({"g1"})))
    assert "g1" not in after.groups
    assert groups_of(after, "alice") == {"finance"}
    assert groups_of(after, "bob") == frozenset()


def test_deleted_user_is_gone_and_lost() -> None:
    before = base_image()
    after = apply_changes(before, DirectoryChanges(deleted=frozenset({"u2", "not-there"})))
    assert set(after.users) == {"u1"}
    assert set(after.groups) == set(before.groups)
    old, new = resolve(before, NOW).users, resolve(after, NOW).users
    assert lost_accounts(old, new) == ["bob"]


def test_new_and_changed_entries_are_upserted() -> None:
    before = base_image()
    carol = user("u3", "carol", usn=300)
    finance = replace(before.groups["g3"], members=frozenset({udn("carol")}), usn=301)
    after = apply_changes(before, DirectoryChanges(users=(carol,), groups=(finance,)))
    assert after.users["u3"] == carol
    assert groups_of(after, "carol") == {"finance"}
    assert groups_of(after, "alice") == {"team", "dept"}
    assert after.domain_sid == before.domain_sid


def test_empty_changes_give_an_equal_image() -> None:
    before = base_image()
    assert apply_changes(before, DirectoryChanges()) == before
    assert not DirectoryChanges()
    assert DirectoryChanges(deleted=frozenset({"x"}))


def test_lost_accounts_are_deleted_or_disabled_now() -> None:
    before = {"alice": User("alice"), "bob": User("bob"), "carol": User("carol", disabled=True)}
    after = {
        "alice": User("alice", disabled=True),
        "carol": User("carol", disabled=True),
        "dave": User("dave"),
    }
    assert lost_accounts(before, after) == ["alice", "bob", "carol"]
    assert lost_accounts({}, {}) == []


# --- the property: resolve == naive transitive closure ------------------------------


def _spell(dn: str, variant: int) -> str:
    """The same DN as another writer might spell it."""
    if variant == 1:
        return dn.upper()
    if variant == 2:
        return " " + dn.replace(",", " , ").lower()
    return dn


# What each include pattern the strategy draws means, spelled out by hand.
PATTERNS: dict[str, Callable[[str], bool]] = {
    "g1": lambda n: n == "g1",
    "g[0-2]": lambda n: n in ("g0", "g1", "g2"),
    "g*": lambda n: True,
    "x*": lambda n: False,
    "G3": lambda n: n == "g3",
}


def _glob(name: str, pattern: str) -> bool:
    return PATTERNS[pattern](name)


@st.composite
def worlds(draw: st.DrawFn) -> tuple[DirectoryImage, tuple[str, ...]]:
    n_groups = draw(st.integers(1, 7))
    n_users = draw(st.integers(1, 5))
    names = [f"g{i}" for i in range(n_groups)]
    sams = [f"u{i}" for i in range(n_users)]
    nodes = [gdn(n) for n in names] + [udn(s) for s in sams]
    groups = []
    for i, name in enumerate(names):
        members = draw(st.lists(st.sampled_from(nodes), max_size=5, unique=True))
        spelled = frozenset(_spell(m, draw(st.integers(0, 2))) for m in members)
        groups.append(group(f"gg{i}", name, *spelled, rid=1100 + i))
    users = [
        user(
            f"uu{i}",
            sam,
            disabled=draw(st.integers(0, 4)) == 0,
            primary_group_id=draw(st.one_of(st.none(), st.integers(1100, 1100 + n_groups))),
            expires=draw(
                st.sampled_from([0, 2**63 - 1, ticks(NOW - timedelta(1)), ticks(NOW + timedelta(1))])
            ),
        )
        for i, sam in enumerate(sams)
    ]
    include = tuple(draw(st.lists(st.sampled_from(sorted(PATTERNS)), max_size=2)))
    return image(*users, *groups), include


def naive(img: DirectoryImage, include: tuple[str, ...]) -> dict[str, tuple[bool, frozenset[str]]]:
    """Fixed point of 'member of' over the graph, spelled out without DN keys or memo."""
    by_sid = {g.sid: g.name for g in img.groups.values()}
    parents: dict[str, set[str]] = {}  # canonical DN -> group names whose members list it
    for g in img.groups.values():
        for m in g.members:
            parents.setdefault(m.replace(" ", "").lower(), set()).add(g.name)
    dn_of = {g.name: g.dn.replace(" ", "").lower() for g in img.groups.values()}
    out = {}
    for u in img.users.values():
        eff = set(parents.get(u.dn.replace(" ", "").lower(), set()))
        if u.primary_group_id is not None and f"{DOMAIN}-{u.primary_group_id}" in by_sid:
            eff.add(by_sid[f"{DOMAIN}-{u.primary_group_id}"])
        while True:
            grown = eff | {p for g in eff for p in parents.get(dn_of[g], set())}
            if grown == eff:
                break
            eff = grown
        kept = {g for g in eff if not include or any(_glob(g, p) for p in include)}
        expired = u.expires not in (0, 2**63 - 1) and u.expires <= ticks(NOW)
        out[u.sam] = (u.disabled or expired, frozenset(kept))
    return out


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_resolve_equals_naive_transitive_closure(world: tuple[DirectoryImage, tuple[str, ...]]) -> None:
    img, include = world
    r = resolve(img, NOW, include)
    want = naive(img, include)
    got = {name: (u.disabled, u.groups) for name, u in r.users.items()}
    assert got == want
    assert r.problems == ()
    kept = {g.name for g in img.groups.values() if not include or any(_glob(g.name, p) for p in include)}
    assert set(r.groups) == kept
