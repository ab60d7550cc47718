"""Shared fixtures: isolated settings and databases (SQLite and the real PostgreSQL)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from config.settings import reset_settings
from registry.db import forget_databases, get_database
from registry.migrate import upgrade
from registry.service import PluginRegistry
from tender_kit.pytest_plugin import isolate

POSTGRES_URL = os.environ.get(
    "TENDER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TENDER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def service_missing(what: str, error: Exception) -> None:
    """A service that is not reachable fails the run under CI (``.ci/run`` sets ``CI``) and
    skips the test on a laptop. Any other error is the test's failure, never a skip."""
    if not unreachable(error):
        raise error
    message = f"{what} is not reachable: {error}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


_UNREACHABLE_TEXT = ("connection refused", "could not connect", "timeout expired", "timed out")


def unreachable(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) says nothing answered at the
    service's address: refused, reset or timed out, whatever client library wraps it."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionError | TimeoutError):  # refused, reset, timed out
            return True
        if any(text in str(current).lower() for text in _UNREACHABLE_TEXT):
            return True
        current = current.__cause__ or current.__context__
    return False


def fresh_postgres_schema() -> str:
    """A URL whose search_path is a new, empty schema in the test database."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        engine = create_engine(POSTGRES_URL)
        with engine.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine.dispose()
    except Exception as exc:  # psycopg.OperationalError and friends; others re-raised
        service_missing("PostgreSQL at 127.0.0.1:5432", exc)
    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"


def drop_postgres_schema(url: str) -> None:
    schema = url.rsplit("%3D", 1)[1]
    engine = create_engine(POSTGRES_URL)
    with engine.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture
def tender_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A clean Tender environment under tmp_path (SQLite, embedded broker)."""
    isolate(monkeypatch, tmp_path / "data")
    _reset_process()
    yield tmp_path
    monkeypatch.undo()
    _reset_process()


def _reset_process() -> None:
    """Forget settings, engines and the worker runtime, so the environment is re-read."""
    from workers import runtime
    from workers.core.app import reconfigure

    reset_settings()
    forget_databases()
    runtime.reset()
    reconfigure()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tender_env: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A migrated, empty database: a SQLite file, then the real PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tender_env / 'tender.db'}"
    else:
        url = fresh_postgres_schema()
    monkeypatch.setenv("TENDER_DATABASE_URL", url)
    reset_settings()
    upgrade(url)
    yield url
    forget_databases()
    if request.param == "postgresql":
        drop_postgres_schema(url)


@pytest.fixture
def sqlite_url(tender_env: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tender_env / 'tender.db'}"
    monkeypatch.setenv("TENDER_DATABASE_URL", url)
    reset_settings()
    upgrade(url)
    return url


@pytest.fixture
def registry(database_url: str) -> PluginRegistry:
    return PluginRegistry(get_database(database_url), poll_s=0)


SUITE_ORDER = {"unit": 0, "conformance": 1, "services": 2, "integration": 3}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The suite's groups run in their order (pyproject's testpaths): the integration
    session's embedded worker runs in this process until the end, and a unit test after it
    would reset the settings, engines and Celery app under it. An order plugin
    (pytest-randomly) shuffles before this hook; the sort is stable, so tests stay shuffled
    within each group and only the groups keep their order."""
    items.sort(key=lambda item: SUITE_ORDER.get(Path(item.path).parent.name, 0))
