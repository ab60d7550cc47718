"""The migrations, which import no models, create exactly the tables the models describe."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import registry.audit
import registry.models
import registry.tokens  # noqa: F401
import workers.ledger.outbox
import workers.ledger.records
import workers.monitoring.alerts
import workers.monitoring.health  # noqa: F401 - every table the code uses is now registered
from registry.db import Base, get_database


def test_migrated_schema_matches_every_model(database_url: str) -> None:
    with get_database(database_url).engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")
