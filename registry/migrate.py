"""Schema migrations (Alembic), run with ``tender db upgrade`` or :func:`upgrade`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from registry.db import get_database

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", get_database(url).url.replace("%", "%%"))
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Bring the database at ``url`` (default: settings) to ``revision``."""
    command.upgrade(alembic_config(url), revision)


def schema_is_current(url: str | None = None) -> bool:
    """Whether the database at ``url`` is at the newest revision (False: none or an older)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    with get_database(url).engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision() == head
