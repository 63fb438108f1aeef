"""Statements on the operator-managed tables: applications, policies, settings, audit, meta.

These are small tables edited by people, so the emphasis is on refusing bad
writes with a sentence naming the object, on recording before/after for the
audit log, and on treating an unchanged re-save as a no-op (no audit row, no
generation bump) so an idempotent `userseg apply` does not churn the gateway.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from contextlib import suppress
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, RowMapping, delete, insert, select, update

from userseg.config_schema import NAME_RE, NAME_RULE
from userseg.model import Action, Application, Mapping, Policy
from userseg.store import codec
from userseg.store.codec import StoreError
from userseg.store.schema import (
    GENERATION_KEY,
    ApplicationRow,
    AuditRow,
    MetaRow,
    PolicyRow,
    SettingRow,
)

DEFAULT_ACTION_KEY = "default_action"
_INT32 = (-(2**31), 2**31 - 1)

APP_COLUMNS = (
    ApplicationRow.name,
    ApplicationRow.destinations,
    ApplicationRow.services,
    ApplicationRow.labels,
    ApplicationRow.description,
)
POLICY_COLUMNS = (
    PolicyRow.name,
    PolicyRow.priority,
    PolicyRow.subjects,
    PolicyRow.application,
    PolicyRow.action,
    PolicyRow.mode,
    PolicyRow.enabled,
    PolicyRow.description,
)
_APP_JSON = ("destinations", "services", "labels")
_POLICY_JSON = ("subjects",)

Doc = dict[str, Any]
Change = tuple[Doc | None, Doc | None]  # (before, after) for the audit log


def bump(conn: Connection) -> None:
    conn.execute(update(MetaRow).where(MetaRow.key == GENERATION_KEY).values(value=MetaRow.value + 1))


def generation(conn: Connection) -> int:
    value = conn.execute(select(MetaRow.value).where(MetaRow.key == GENERATION_KEY)).scalar()
    if value is None:
        raise codec.corrupt("meta", GENERATION_KEY, "row missing")
    return int(value)


def audit(conn: Connection, *, now: datetime, actor: str, entity: str, name: str, change: Change) -> None:
    before, after = change
    action = "create" if before is None else "delete" if after is None else "update"
    conn.execute(
        insert(AuditRow).values(
            at=now,
            actor=actor,
            entity=entity,
            name=name,
            action=action,
            before=None if before is None else codec.dump(before),
            after=None if after is None else codec.dump(after),
        )
    )


def audit_removed_mappings(
    conn: Connection, removed: Iterable[Mapping], *, actor: str, now: datetime
) -> None:
    """One audit row per deleted mapping (its last state as `before`), for operator and directory removals."""
    for m in removed:
        audit(
            conn, now=now, actor=actor, entity="mapping", name=str(m.ip), change=(codec.mapping_doc(m), None)
        )


def audit_rows(
    conn: Connection, limit: int
) -> list[tuple[datetime, str, str, str, str, Doc | None, Doc | None]]:
    rows = conn.execute(
        select(
            AuditRow.id,
            AuditRow.at,
            AuditRow.actor,
            AuditRow.entity,
            AuditRow.name,
            AuditRow.action,
            AuditRow.before,
            AuditRow.after,
        )
        .order_by(AuditRow.id.desc())
        .limit(limit)
    )
    out = []
    for id_, at, actor, entity, name, action, before, after in rows:
        row = f"#{id_}"
        out.append(
            (
                at,
                actor,
                entity,
                name,
                action,
                None if before is None else codec.load(before, "audit_log", row, "before"),
                None if after is None else codec.load(after, "audit_log", row, "after"),
            )
        )
    return out


def check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise StoreError(f"bad {kind} name {name!r} (use {NAME_RULE})")


def raw_doc(row: RowMapping, json_columns: tuple[str, ...]) -> Doc:
    """A stored row as an audit document, tolerating corrupt JSON so a bad row can still be overwritten."""
    doc: Doc = {}
    for key, value in row.items():
        if key in json_columns:
            with suppress(TypeError, ValueError):
                value = json.loads(value)
        doc[key] = bool(value) if key == "enabled" else value
    return doc


def _upsert(
    conn: Connection,
    table: Any,
    columns: Sequence[Any],
    json_fields: Any,
    name: str,
    values: dict[str, Any],
    after: Doc,
    now: datetime,
) -> Change | None:
    """Insert or update one named catalog row; None (and no write) when nothing changed,
    so an identical re-save neither bumps the generation nor writes an audit row."""
    row = conn.execute(select(*columns).where(table.name == name)).first()
    before = None if row is None else raw_doc(row._mapping, json_fields)
    if before == after:
        return None
    if row is None:
        conn.execute(insert(table).values(name=name, created_at=now, **values))
    else:
        conn.execute(update(table).where(table.name == name).values(values))
    return before, after


# --- applications -----------------------------------------------------------


def load_applications(conn: Connection) -> dict[str, Application]:
    return {row[0]: codec.application_from_row(*row) for row in conn.execute(select(*APP_COLUMNS))}


def write_application(conn: Connection, app: Application, now: datetime) -> Change | None:
    """Create or update; None when the stored application is already identical."""
    check_name("application", app.name)
    if not app.destinations:
        raise StoreError(f"application {app.name!r}: needs at least one destination")
    if not app.services:
        raise StoreError(f"application {app.name!r}: needs at least one service")
    after = codec.application_doc(app)
    values = {
        "destinations": codec.dump(after["destinations"]),
        "services": codec.dump(after["services"]),
        "labels": codec.dump(after["labels"]),
        "description": app.description,
        "updated_at": now,
    }
    return _upsert(conn, ApplicationRow, APP_COLUMNS, _APP_JSON, app.name, values, after, now)


def remove_application(conn: Connection, name: str) -> Change:
    row = conn.execute(select(*APP_COLUMNS).where(ApplicationRow.name == name)).first()
    if row is None:
        raise StoreError(f"no application named {name!r}")
    users = (
        conn.execute(select(PolicyRow.name).where(PolicyRow.application == name).order_by(PolicyRow.name))
        .scalars()
        .all()
    )
    if users:
        names = ", ".join(repr(p) for p in users)
        raise StoreError(f"application {name!r} is used by policies {names}; delete or change them first")
    conn.execute(delete(ApplicationRow).where(ApplicationRow.name == name))
    return raw_doc(row._mapping, _APP_JSON), None


# --- policies ---------------------------------------------------------------


def load_policies(conn: Connection) -> list[Policy]:
    found = [codec.policy_from_row(*row) for row in conn.execute(select(*POLICY_COLUMNS))]
    found.sort(key=lambda p: p.sort_key)
    return found


def write_policy(
    conn: Connection, p: Policy, now: datetime, known_applications: Collection[str]
) -> Change | None:
    """Create or update; None when unchanged. The application must exist somewhere."""
    check_name("policy", p.name)
    if (
        isinstance(p.priority, bool)
        or not isinstance(p.priority, int)
        or not (_INT32[0] <= p.priority <= _INT32[1])
    ):
        raise StoreError(f"policy {p.name!r}: priority must be a 32-bit integer, got {p.priority!r}")
    if not p.subjects:
        raise StoreError(f"policy {p.name!r}: needs at least one subject")
    check_name("application", p.application)
    if (
        p.application not in known_applications
        and conn.execute(select(ApplicationRow.name).where(ApplicationRow.name == p.application)).first()
        is None
    ):
        raise StoreError(f"policy {p.name!r}: application {p.application!r} does not exist")
    after = codec.policy_doc(p)
    values = {
        "priority": p.priority,
        "subjects": codec.dump(after["subjects"]),
        "application": p.application,
        "action": p.action.value,
        "mode": p.mode.value,
        "enabled": p.enabled,
        "description": p.description,
        "updated_at": now,
    }
    return _upsert(conn, PolicyRow, POLICY_COLUMNS, _POLICY_JSON, p.name, values, after, now)


def remove_policy(conn: Connection, name: str) -> Change:
    row = conn.execute(select(*POLICY_COLUMNS).where(PolicyRow.name == name)).first()
    if row is None:
        raise StoreError(f"no policy named {name!r}")
    conn.execute(delete(PolicyRow).where(PolicyRow.name == name))
    return raw_doc(row._mapping, _POLICY_JSON), None


# --- settings ---------------------------------------------------------------


def setting(conn: Connection, key: str) -> str | None:
    return conn.execute(select(SettingRow.value).where(SettingRow.key == key)).scalar()


def write_setting(conn: Connection, key: str, value: str) -> Change | None:
    if not isinstance(key, str) or not 1 <= len(key) <= 128:
        raise StoreError(f"setting key must be 1-128 characters, got {key!r}")
    if not isinstance(value, str):
        raise StoreError(f"setting {key}: value must be a string, got {value!r}")
    if key == DEFAULT_ACTION_KEY and value not in {a.value for a in Action}:
        raise StoreError(f"setting {key}: must be 'allow' or 'deny', got {value!r}")
    old = setting(conn, key)
    if old == value:
        return None
    if old is None:
        conn.execute(insert(SettingRow).values(key=key, value=value))
    else:
        conn.execute(update(SettingRow).where(SettingRow.key == key).values(value=value))
    return (None if old is None else {"value": old}), {"value": value}


def default_action(conn: Connection) -> Action:
    value = setting(conn, DEFAULT_ACTION_KEY)
    if value is None:
        return Action.DENY
    try:
        return Action(value)
    except ValueError:
        raise codec.corrupt(
            "settings", DEFAULT_ACTION_KEY, f"value {value!r} is not 'allow' or 'deny'"
        ) from None
