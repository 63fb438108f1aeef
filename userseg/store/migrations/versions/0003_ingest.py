"""Login-event ingestion: source positions and counters, shared addresses, account sightings.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "source_state",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("position", sa.Text(), nullable=True),
        sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("counters", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_source_state"),
    )
    op.create_table(
        "shared_addresses",
        sa.Column("ip", sa.String(45), nullable=False),
        sa.Column("users", sa.Text(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("ip", name="pk_shared_addresses"),
    )
    op.create_table(
        "account_sightings",
        sa.Column("user_name", sa.String(256), nullable=False),
        sa.Column("ip", sa.String(45), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_name", "ip", name="pk_account_sightings"),
    )
    op.create_index("ix_account_sightings_last_seen", "account_sightings", ["last_seen"])


def downgrade() -> None:
    op.drop_index("ix_account_sightings_last_seen", table_name="account_sightings")
    op.drop_table("account_sightings")
    op.drop_table("shared_addresses")
    op.drop_table("source_state")
