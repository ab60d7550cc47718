"""Alembic environment: runs against the connection or URL Tender hands it."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from registry.db import get_database

# Each revision creates its own tables with op.create_table and imports no models, so the
# environment needs none either: importing the workers' tables here would make the registry
# depend on the workers. tests/unit/test_migrations.py checks that the migrated schema
# matches every model; write a new revision by hand and let that test confirm it.
target_metadata = None


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    with get_database(context.config.get_main_option("sqlalchemy.url")).engine.connect() as conn:
        _run(conn)
        conn.commit()
