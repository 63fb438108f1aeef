"""Decoding mapping rows for the daemon's start-up: lazy provenance, shared strings, active_mappings."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.store.test_repository import raw
from userseg.model import Mapping
from userseg.store import Store, StoreError

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
PROVENANCE = {"source": "dc", "event_id": "4624", "replaced": "alice (via dc, last seen 2024-05-01)"}


def mapping(addr: str, user: str, *, expires_in: timedelta = timedelta(hours=1), **prov: str) -> Mapping:
    return Mapping(ipaddress.ip_address(addr), user, "dc", NOW, NOW, NOW + expires_in, prov)


def test_provenance_reads_back_equal_and_writes_back_as_stored(store: Store, db_path: Path) -> None:
    store.put_mappings([mapping("10.0.0.1", "bob", **PROVENANCE)])
    (m,) = store.active_mappings(NOW)
    assert m == mapping("10.0.0.1", "bob", **PROVENANCE)
    assert dict(m.provenance) == PROVENANCE and m.provenance.get("replaced") == PROVENANCE["replaced"]
    assert {**m.provenance, "x": "y"} == {**PROVENANCE, "x": "y"}

    # Text another writer left (not our key order or spacing) is written back byte for byte
    # when the mapping is re-stored unchanged, not decoded and re-encoded.
    odd = '{"event_id": "4624",  "source": "dc"}'
    raw(db_path, "UPDATE mappings SET provenance = ?", odd)
    store.put_mappings(store.active_mappings(NOW))
    assert raw(db_path, "SELECT provenance FROM mappings") == [(odd,)]
    assert dict(store.mappings()[0].provenance) == {"event_id": "4624", "source": "dc"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not json", "provenance: not valid JSON"),
        ('["a"]', "provenance: expected a JSON object of strings"),
        ('{"n": 1}', "provenance: expected a JSON object of strings"),
    ],
)
def test_corrupt_provenance_does_not_stop_enforcement_and_is_reported_when_read(
    store: Store, db_path: Path, text: str, problem: str
) -> None:
    store.put_mappings([mapping("10.0.0.1", "bob", event_id="1"), mapping("10.0.0.2", "carol")])
    raw(db_path, "UPDATE mappings SET provenance = ? WHERE ip = '10.0.0.1'", text)

    _, active, *_ = store.snapshot_parts(NOW)  # the kernel can still be programmed
    assert sorted((str(m.ip), m.user) for m in active) == [("10.0.0.1", "bob"), ("10.0.0.2", "carol")]
    (m,) = store.mappings(ip=ipaddress.ip_address("10.0.0.1"))
    with pytest.raises(StoreError, match=rf"table mappings, row '10.0.0.1': {problem}"):
        dict(m.provenance)

    # An operator can still remove it, and the audit keeps what was there.
    gone = store.remove_mapping(m.ip, audit_actor="admin", now=NOW)
    assert gone is not None and gone.user == "bob"
    entry = store.audit(1)[0]
    assert entry.before is not None and entry.before["provenance"] == {"unreadable": text}


def test_rows_share_user_source_and_empty_provenance_objects(store: Store) -> None:
    """The daemon holds every active mapping: equal strings are one object, not 250k copies."""
    store.put_mappings([mapping(f"10.0.0.{i}", "bob") for i in range(1, 5)])
    rows = store.active_mappings(NOW)
    assert len(rows) == 4
    assert all(m.user is rows[0].user and m.source is rows[0].source for m in rows)
    assert all(m.provenance is rows[0].provenance and not m.provenance for m in rows)
    assert all(m.last_seen is m.first_seen for m in rows)  # equal timestamps: one object
    with pytest.raises(TypeError):
        rows[0].provenance["x"] = "y"  # type: ignore[index]  # shared, so it must be immutable


def test_active_mappings_are_those_not_expired(store: Store) -> None:
    store.put_mappings(
        [
            mapping("10.0.0.1", "a", expires_in=timedelta(seconds=-1)),
            mapping("10.0.0.2", "b", expires_in=timedelta(0)),
            mapping("10.0.0.3", "c"),
            mapping("2001:db8::3", "c"),
        ]
    )
    active = store.active_mappings(NOW)
    assert sorted(active, key=lambda m: (m.ip.version, int(m.ip))) == store.mappings(active_at=NOW)
    assert sorted(str(m.ip) for m in active) == ["10.0.0.3", "2001:db8::3"]


def test_a_user_name_that_is_not_text_is_a_corrupt_row(store: Store, db_path: Path) -> None:
    store.put_mappings([mapping("10.0.0.1", "bob")])
    raw(db_path, "UPDATE mappings SET user_name = x'626f62'")  # a BLOB: TEXT affinity keeps it bytes
    with pytest.raises(
        StoreError, match=r"table mappings, row '10.0.0.1': user b'bob' or source 'dc' is not"
    ):
        store.active_mappings(NOW)
