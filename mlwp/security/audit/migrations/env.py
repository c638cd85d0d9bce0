"""Alembic environment of the audit table: runs on the connection ``migrate`` passes in."""

from __future__ import annotations

from alembic import context

from mlwp.security.audit import VERSION_TABLE
from mlwp.security.audit.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
