"""The mapping book: latest logon wins, logoffs, shared IPs, ignores, convergence under replay."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from userseg.core.ingest import Ignored, MappingBook, MarkShared, Remove, Unshare, Upsert
from userseg.core.ingest_rules import IngestRules, SourceRules, check_event
from userseg.events.model import EventKind, LoginEvent
from userseg.model import AddressRange, ip

T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=10)


def ev(
    user: str,
    addr: str | None,
    at: float = 0,
    kind: EventKind = EventKind.LOGON,
    *,
    source: str = "dc",
    event_id: int | None = 4624,
    logon_type: int | None = 3,
    **kw: object,
) -> LoginEvent:
    return LoginEvent(
        user=user,
        domain=str(kw.pop("domain", "LAB")),
        ip=ip(addr) if addr else None,
        time=T0 + timedelta(seconds=at),
        kind=kind,
        source=source,
        event_id=event_id,
        logon_type=logon_type,
        **kw,  # type: ignore[arg-type]
    )


def book(**kw: object) -> MappingBook:
    return MappingBook(IngestRules(sources={"dc": SourceRules("dc")}, **kw))  # type: ignore[arg-type]


def only(effects: list[object]) -> object:
    assert len(effects) == 1, effects
    return effects[0]


def test_a_logon_maps_the_ip_with_the_source_ttl_and_provenance() -> None:
    b = book()
    up = only(
        b.apply(ev("Alice", "198.18.10.11", host="dc1.lab", detail=(("service", "Kerberos KDC"),)), NOW)
    )
    assert isinstance(up, Upsert) and up.kernel and up.replaced is None
    m = up.mapping
    assert (str(m.ip), m.user, m.source) == ("198.18.10.11", "alice", "dc")
    assert m.expires_at == T0 + timedelta(minutes=45)
    assert m.provenance["event_id"] == "4624" and m.provenance["host"] == "dc1.lab"
    assert m.provenance["service"] == "Kerberos KDC" and m.provenance["logon_type"] == "3"


def test_failed_logons_ignored_users_and_logon_types_never_map() -> None:
    b = book()
    cases = {
        "failure": ev("alice", "198.18.10.11", kind=EventKind.FAILURE, event_id=4625),
        "ignored_user": ev("HR001$", "198.18.10.11"),
        "logon_type": ev("alice", "198.18.10.11", logon_type=5),
        "no_address": ev("alice", None),
    }
    for category, e in cases.items():
        out = only(b.apply(e, NOW))
        assert isinstance(out, Ignored) and out.category == category, (category, out)
    krbtgt = only(b.apply(ev("KRBTGT", "198.18.10.11"), NOW))
    anon = only(b.apply(ev("ANONYMOUS LOGON", "198.18.10.11", domain="NT AUTHORITY"), NOW))
    assert isinstance(krbtgt, Ignored) and "'krbtgt'" in krbtgt.reason
    assert isinstance(anon, Ignored) and anon.category == "ignored_user"
    assert b.mappings == {}


def test_ignore_globs_match_user_domain_backslash_and_upn_forms() -> None:
    rules = SourceRules("dc", ignore_users=("svc-*", "LAB\\backup", "scanner@lab.example"))
    for user, domain in [("svc-sql", ""), ("backup", "LAB"), ("Scanner", "lab.example")]:
        assert check_event(rules, ev(user, "198.18.10.11", domain=domain), NOW) is not None
    assert check_event(rules, ev("backup", "198.18.10.11", domain="OTHER"), NOW) is None


def test_client_networks_include_and_exclude() -> None:
    rules = SourceRules(
        "dc",
        include_networks=(AddressRange.parse("198.18.10.0/24"),),
        exclude_networks=(AddressRange.parse("198.18.10.200-198.18.10.250"),),
    )
    assert check_event(rules, ev("alice", "198.18.10.11"), NOW) is None
    assert check_event(rules, ev("alice", "198.18.11.1"), NOW) == (
        "network",
        "198.18.11.1 is outside the client networks of source 'dc'",
    )
    assert check_event(rules, ev("alice", "198.18.10.201"), NOW)[0] == "network"  # type: ignore[index]


def test_an_event_that_expired_before_it_arrived_is_stale() -> None:
    out = only(book().apply(ev("alice", "198.18.10.11", at=-3600), NOW))
    assert isinstance(out, Ignored) and out.category == "stale"


def test_latest_logon_wins_and_records_what_it_replaced() -> None:
    b = book()
    b.apply(ev("alice", "198.18.10.11", at=10), NOW)
    up = only(b.apply(ev("bob", "198.18.10.11", at=20), NOW))
    assert isinstance(up, Upsert) and up.replaced is not None and up.replaced.user == "alice"
    assert up.mapping.user == "bob" and up.mapping.provenance["replaced"].startswith("alice (via dc")
    late = only(b.apply(ev("alice", "198.18.10.11", at=15), NOW))  # arrives late, happened earlier
    assert isinstance(late, Ignored) and late.category == "older"
    assert b.mappings[ip("198.18.10.11")].user == "bob"


def test_several_ips_per_user() -> None:
    b = book()
    b.apply(ev("alice", "198.18.10.11"), NOW)
    b.apply(ev("alice", "198.18.10.12"), NOW)
    assert {str(a) for a, m in b.mappings.items() if m.user == "alice"} == {"198.18.10.11", "198.18.10.12"}


def test_refresh_moves_last_seen_and_rearms_the_kernel_only_in_steps() -> None:
    b = book(kernel_refresh=60)
    b.apply(ev("alice", "198.18.10.11", at=0), NOW)
    dup = only(b.apply(ev("alice", "198.18.10.11", at=1), NOW))  # the kinit UDP+TCP double event
    assert isinstance(dup, Upsert) and dup.duplicate and not dup.kernel
    small = only(b.apply(ev("alice", "198.18.10.11", at=30), NOW))
    assert isinstance(small, Upsert) and not small.kernel and not small.duplicate
    assert small.mapping.last_seen == T0 + timedelta(seconds=30)
    assert small.mapping.expires_at == T0 + timedelta(minutes=45)  # still what the kernel has
    big = only(b.apply(ev("alice", "198.18.10.11", at=90), NOW))
    assert isinstance(big, Upsert) and big.kernel
    assert big.mapping.expires_at == T0 + timedelta(seconds=90, minutes=45)
    assert big.mapping.first_seen == T0
    same = only(b.apply(ev("alice", "198.18.10.11", at=90), NOW))  # exact replay
    assert isinstance(same, Ignored) and same.category == "duplicate"


def test_http_ttl_overrides_the_source_ttl() -> None:
    up = only(book().apply(ev("alice", "198.18.10.11", ttl=120, event_id=None), T0))
    assert isinstance(up, Upsert) and up.mapping.expires_at == T0 + timedelta(seconds=120)


def test_logoff_with_address_removes_only_that_users_mapping_if_newer() -> None:
    b = book()
    b.apply(ev("alice", "198.18.10.11", at=10), NOW)
    older = only(b.apply(ev("alice", "198.18.10.11", at=5, kind=EventKind.LOGOFF, event_id=None), NOW))
    assert isinstance(older, Ignored)
    other = only(b.apply(ev("bob", "198.18.10.11", at=20, kind=EventKind.LOGOFF, event_id=None), NOW))
    assert isinstance(other, Ignored) and ip("198.18.10.11") in b.mappings
    gone = only(b.apply(ev("alice", "198.18.10.11", at=20, kind=EventKind.LOGOFF, event_id=None), NOW))
    assert isinstance(gone, Remove) and gone.reason == "logoff"
    again = only(b.apply(ev("alice", "198.18.10.11", at=15), NOW))  # a logon from before the logoff
    assert isinstance(again, Ignored) and ip("198.18.10.11") not in b.mappings


def test_windows_logoff_without_address_is_placed_by_its_logon_id_and_type() -> None:
    b = book()
    b.apply(ev("alice", "198.18.10.11", at=0, logon_type=2, host="WS1", logon_id="0x1e3237"), NOW)
    b.apply(ev("bob", "198.18.10.12", at=0, logon_type=3, host="DC1", logon_id="0x99"), NOW)
    net = only(
        b.apply(ev("bob", None, at=5, kind=EventKind.LOGOFF, event_id=4634, host="DC1", logon_id="0x99"), NOW)
    )
    assert isinstance(net, Ignored) and net.category == "logoff_type"  # a network session ended, not bob
    unknown = only(b.apply(ev("alice", None, at=5, kind=EventKind.LOGOFF, event_id=4647, host="WS1"), NOW))
    assert isinstance(unknown, Ignored) and unknown.category == "no_address"
    gone = only(
        b.apply(
            ev(
                "alice",
                None,
                at=5,
                kind=EventKind.LOGOFF,
                event_id=4647,
                logon_type=None,
                host="ws1",
                logon_id="0x1e3237",
            ),
            NOW,
        )
    )
    assert isinstance(gone, Remove) and str(gone.mapping.ip) == "198.18.10.11"
    assert set(map(str, b.mappings)) == {"198.18.10.12"}


def test_an_ip_with_three_users_in_ten_minutes_is_shared_until_the_window_passes() -> None:
    b = book()
    b.apply(ev("alice", "198.18.10.50", at=0), NOW)
    b.apply(ev("bob", "198.18.10.50", at=60), NOW)
    effects = b.apply(ev("carol", "198.18.10.50", at=120), NOW)
    marks = [e for e in effects if isinstance(e, MarkShared)]
    assert marks and marks[0].mark.users == ("alice", "bob", "carol")
    assert [type(e) for e in effects] == [MarkShared, Remove, Ignored]
    assert ip("198.18.10.50") not in b.mappings
    still = b.apply(ev("alice", "198.18.10.50", at=300), NOW)
    assert isinstance(still[-1], Ignored) and still[-1].category == "shared"
    # 11 minutes after the last of the others, alice alone: unshared and mapped again
    later = b.apply(ev("dave", "198.18.10.50", at=960), T0 + timedelta(seconds=1000))
    assert [type(e) for e in later] == [Unshare, Upsert]
    assert b.mappings[ip("198.18.10.50")].user == "dave"


def test_events_from_the_future_are_clamped_to_now() -> None:
    up = only(book().apply(ev("alice", "198.18.10.11", at=7200), NOW))
    assert isinstance(up, Upsert) and up.mapping.last_seen == NOW


def test_expire_drops_mappings_and_old_shared_marks() -> None:
    b = book()
    b.apply(ev("alice", "198.18.10.11", at=0, ttl=60), T0)
    for i, u in enumerate(["a", "b", "c"]):
        b.apply(ev(u, "198.18.10.50", at=i), NOW)
    assert b.expire(T0 + timedelta(seconds=30)) == []
    effects = b.expire(T0 + timedelta(minutes=11))
    assert {type(e) for e in effects} == {Remove, Unshare}
    assert b.mappings == {} and b.shared == {}


def test_the_book_starts_from_stored_mappings() -> None:
    b = book()
    b.apply(ev("alice", "198.18.10.11", at=100), NOW)
    restarted = MappingBook(b.rules, b.mappings.values(), b.shared.values())
    older = only(restarted.apply(ev("bob", "198.18.10.11", at=50), NOW))
    assert isinstance(older, Ignored) and older.category == "older"


# ---------------------------------------------------------------- convergence

USERS = ["alice", "bob", "carol", "dave", "WS1$"]
IPS = ["198.18.10.1", "198.18.10.2", "198.18.10.3"]


@st.composite
def histories(draw: st.DrawFn) -> list[LoginEvent]:
    n = draw(st.integers(1, 40))
    times = draw(st.lists(st.integers(0, 3000), min_size=n, max_size=n, unique=True))
    out = []
    for t in times:
        kind = draw(st.sampled_from([EventKind.LOGON] * 4 + [EventKind.LOGOFF, EventKind.FAILURE]))
        out.append(
            ev(
                draw(st.sampled_from(USERS)),
                draw(st.sampled_from(IPS)),
                at=t,
                kind=kind,
                event_id=None if kind is EventKind.LOGOFF else 4624,
                source=draw(st.sampled_from(["dc", "vpn"])),
            )
        )
    return out


def state(b: MappingBook) -> tuple[object, object]:
    return (
        {str(a): (m.user, m.last_seen, m.expires_at, m.source) for a, m in b.mappings.items()},
        {str(a): s.users for a, s in b.shared.items()},
    )


@settings(max_examples=300, deadline=None)
@given(histories(), st.randoms(use_true_random=False))
def test_shuffled_and_duplicated_replays_converge(events: list[LoginEvent], rnd: random.Random) -> None:
    rules = IngestRules(
        sources={"dc": SourceRules("dc", ttl=7200), "vpn": SourceRules("vpn", ttl=7200)}, kernel_refresh=0
    )
    now = T0 + timedelta(seconds=3001)
    in_order = MappingBook(rules)
    for e in sorted(events, key=lambda e: e.time):
        in_order.apply(e, now)
    replay = events + rnd.sample(events, k=len(events) // 2)
    rnd.shuffle(replay)
    shuffled = MappingBook(rules)
    for e in replay:
        shuffled.apply(replace(e), now)
    assert state(shuffled) == state(in_order)
