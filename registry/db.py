"""Database engine and sessions. SQLite file by default, PostgreSQL in production.

SQLite runs in WAL mode and opens write transactions with ``BEGIN IMMEDIATE`` so
concurrent writers (client, worker threads, beat) wait for each other instead of
failing with "database is locked" halfway through a transaction.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, DateTime, Engine, MetaData, TypeDecorator, create_engine, event
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from config.settings import get_settings

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs (psycopg2 is not a dependency)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    # Writers take the lock up front; readers use a plain (deferred) snapshot.
    writes = connection.get_execution_options().get(WRITE_OPTION, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


def _private_file(path: Path) -> None:
    """Create the SQLite file readable by its owner only, as the key file beside it is: it
    holds encrypted keys and customers' emails. SQLite gives its -wal and -shm files the
    same mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        if url.startswith("sqlite:///") and ":memory:" not in url:
            _private_file(Path(url.removeprefix("sqlite:///")))
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    settings = get_settings()
    # Threads hold a connection only around SQL, never across a provider call, so a small
    # pool per process serves many payments in flight and bounds PostgreSQL's connections.
    return create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=30,
        # No pre-ping: it costs a round trip per checkout (half the hot path's). A dead
        # connection fails its statement instead; payment tasks retry on that, and the
        # ledger's claims make the retry safe.
        pool_pre_ping=False,
        pool_recycle=600,
        # A database that does not answer fails the statement in seconds, not after the
        # operating system's TCP timeout (minutes), so tasks retry instead of hanging.
        connect_args={"connect_timeout": 10},
    )


WRITE_OPTION = "tender_writes"


class Database:
    """An engine and its session factory."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.engine = make_engine(self.url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_engine = self.engine.execution_options(**{WRITE_OPTION: True})
        self._writer = sessionmaker(self._write_engine, expire_on_commit=False)
        self._autocommit_engine = (
            self._write_engine
            if self.is_sqlite
            else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error.

        Use it for anything that writes; ``sessions()`` is for reads.
        """
        with self._writer.begin() as session:
            yield session

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A Core connection in one write transaction (no ORM): the worker's hot path."""
        with self._write_engine.begin() as connection:
            yield connection

    @contextmanager
    def statement(self) -> Iterator[Connection]:
        """A connection for self-contained statements, each atomic on its own.

        PostgreSQL: autocommit, so one statement is one round trip (no BEGIN/COMMIT).
        SQLite: a short write transaction.
        """
        if self.is_sqlite:
            with self._write_engine.begin() as connection:
                yield connection
        else:
            with self._autocommit_engine.connect() as connection:
                yield connection

    def autocommit_connection(self) -> Connection:
        """A connection of one's own for self-contained statements (PostgreSQL: autocommit);
        the caller keeps it open across many and closes it."""
        return self._autocommit_engine.connect()

    def dispose(self) -> None:
        self.engine.dispose()


_lock = threading.Lock()
_databases: dict[str, Database] = {}


def get_database(url: str | None = None) -> Database:
    """The process's Database for ``url`` (default: from settings)."""
    key = normalize_url(url or get_settings().resolved_database_url)
    with _lock:
        if key not in _databases:
            _databases[key] = Database(key)
        return _databases[key]


def forget_databases(*, close: bool = True) -> None:
    """Drop cached engines: after a fork (``close=False``) or between tests."""
    with _lock:
        for database in _databases.values():
            database.engine.dispose(close=close)
        _databases.clear()
