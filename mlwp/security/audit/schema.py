"""The audit table, as SQLAlchemy Core metadata (imported only where the database is used)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

events_table = sa.Table(
    "mlwp_audit_events",
    metadata,
    # BIGINT on PostgreSQL; SQLite autoincrements only a column typed INTEGER.
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("actor", sa.String(256), nullable=False, index=True),
    sa.Column("action", sa.String(128), nullable=False, index=True),
    sa.Column("target", sa.String(512), nullable=False, index=True),
    sa.Column("details", sa.JSON(), nullable=False),
    # sha256 of the JSON line an event was imported from (None when recorded directly), so
    # importing a legacy audit.jsonl twice adds nothing.
    sa.Column("import_key", sa.String(64), nullable=True, unique=True),
)
