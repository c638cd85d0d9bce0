"""Create the audit events table.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mlwp_audit_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("action", sa.String(128), nullable=False),
        sa.Column("target", sa.String(512), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("import_key", sa.String(64), nullable=True, unique=True),
    )
    for column in ("timestamp", "actor", "action", "target"):
        op.create_index(f"ix_mlwp_audit_events_{column}", "mlwp_audit_events", [column])


def downgrade() -> None:
    op.drop_table("mlwp_audit_events")
