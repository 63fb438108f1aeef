"""Initial schema: directory, mappings, applications, policies, settings, audit log, meta.

Revision ID: 0001
Revises:
Create Date: 2024-06-01

Columns are spelled out here rather than taken from userseg.store.schema so
this migration keeps producing the same schema when the models move on;
tests/store/test_migrations.py checks that head matches the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, *, index: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, index=index)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("display_name", sa.String(512), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("sid", sa.String(200), nullable=True),
        sa.Column("guid", sa.String(64), nullable=True),
        sa.Column("dn", sa.Text(), nullable=True),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("name", name="pk_users"),
    )
    op.create_table(
        "groups",
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("display_name", sa.String(512), nullable=False),
        sa.Column("dn", sa.Text(), nullable=False),
        sa.Column("sid", sa.String(200), nullable=True),
        sa.Column("guid", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_groups"),
    )
    op.create_table(
        "memberships",
        sa.Column("user_name", sa.String(256), nullable=False),
        sa.Column("group_name", sa.String(256), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_name"], ["users.name"], name="fk_memberships_user_name_users", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["group_name"], ["groups.name"], name="fk_memberships_group_name_groups", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_name", "group_name", name="pk_memberships"),
    )
    op.create_index("ix_memberships_group_name", "memberships", ["group_name"])
    op.create_table(
        "mappings",
        sa.Column("ip", sa.String(45), nullable=False),
        sa.Column("user_name", sa.String(256), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        _ts("first_seen"),
        _ts("last_seen"),
        _ts("expires_at"),
        sa.Column("provenance", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("ip", name="pk_mappings"),
    )
    op.create_index("ix_mappings_user_name", "mappings", ["user_name"])
    op.create_index("ix_mappings_expires_at", "mappings", ["expires_at"])
    op.create_table(
        "applications",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("destinations", sa.Text(), nullable=False),
        sa.Column("services", sa.Text(), nullable=False),
        sa.Column("labels", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("name", name="pk_applications"),
    )
    op.create_table(
        "policies",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("subjects", sa.Text(), nullable=False),
        sa.Column("application", sa.String(64), nullable=False),
        sa.Column("action", sa.String(8), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint("action IN ('allow', 'deny')", name="ck_policies_action"),
        sa.CheckConstraint("mode IN ('enforce', 'stage')", name="ck_policies_mode"),
        sa.PrimaryKeyConstraint("name", name="pk_policies"),
    )
    op.create_index("ix_policies_application", "policies", ["application"])
    op.create_table(
        "settings",
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_settings"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        _ts("at"),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("entity", sa.String(16), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("action", sa.String(8), nullable=False),
        sa.Column("before", sa.Text(), nullable=True),
        sa.Column("after", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "entity IN ('application', 'policy', 'setting', 'mapping')", name="ck_audit_log_entity"
        ),
        sa.CheckConstraint("action IN ('create', 'update', 'delete')", name="ck_audit_log_action"),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_entity_name", "audit_log", ["entity", "name"])
    meta = op.create_table(
        "meta",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_meta"),
    )
    op.bulk_insert(meta, [{"key": "generation", "value": 0}])


def downgrade() -> None:
    for index, table in (
        ("ix_audit_log_entity_name", "audit_log"),
        ("ix_audit_log_at", "audit_log"),
        ("ix_policies_application", "policies"),
        ("ix_mappings_expires_at", "mappings"),
        ("ix_mappings_user_name", "mappings"),
        ("ix_memberships_group_name", "memberships"),
    ):
        op.drop_index(index, table_name=table)
    for table in (
        "meta",
        "audit_log",
        "settings",
        "policies",
        "applications",
        "mappings",
        "memberships",
        "groups",
        "users",
    ):
        op.drop_table(table)
