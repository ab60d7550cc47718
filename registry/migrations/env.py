"""Alembic environment: runs against the connection or URL Tender hands it."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

import registry.models  # noqa: F401 - register tables
import workers.events
import workers.health  # also registers workers.alerts' table
import workers.ledger
import workers.locks  # noqa: F401
from registry.db import Base, get_database

target_metadata = Base.metadata


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
