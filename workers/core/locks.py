"""Named locks that keep periodic sweeps from overlapping, held by the process at work.

``with hold(database, "reconcile") as held:`` runs the body only if no other process
holds ``name``. The lock lives exactly as long as its holder:

* PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) on a connection the
  holder keeps for the run. The server frees it when that session ends: a killed worker
  (its socket closes), a dropped connection or a database restart frees it at once.
* SQLite, the embedded default on one machine: an ``flock`` on a file beside the
  database, which the kernel frees when the holder's process dies.

Nothing has a lifetime of its own. The table lease this replaced was released in a
``finally`` that needed the database: a sweep caught by a PostgreSQL restart could not
release it, and every requeue sweep then stood still for the lease's 65 s while a
payment whose message the broker had lost sat ``requested`` (issue 32).

A holder whose connection drops mid-run may overlap with the next holder. That is safe:
every sweep is idempotent (compare-and-set claims and transitions); the lock only saves
the work of two at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text

from registry.db import Database

log = logging.getLogger(__name__)

# The key is per schema, so deployments (and test sessions) sharing one PostgreSQL
# database on schemas of their own never lock each other out.
_KEY = "hashtextextended('tender:' || current_schema() || ':' || :name, 0)"
_TRY_LOCK = text(f"SELECT pg_try_advisory_lock({_KEY})")
_UNLOCK = text(f"SELECT pg_advisory_unlock({_KEY})")
_NAME = re.compile(r"\A[a-z0-9_]{1,60}\Z")

_memory_locks: dict[str, threading.Lock] = {}  # in-memory SQLite: one process is all there is
_memory_guard = threading.Lock()


@contextmanager
def hold(database: Database, name: str) -> Iterator[bool]:
    """Yield True while holding ``name``; False (and run nothing) if another holds it."""
    if not _NAME.match(name):
        raise ValueError(f"lock names are lower-case words: {name!r}")
    locking = _file_lock if database.is_sqlite else _advisory_lock
    with locking(database, name) as held:
        yield held


@contextmanager
def _advisory_lock(database: Database, name: str) -> Iterator[bool]:
    connection = database.autocommit_connection()
    try:
        held = bool(connection.execute(_TRY_LOCK, {"name": name}).scalar())
    except Exception:
        connection.invalidate()
        connection.close()
        raise
    try:
        yield held
    finally:
        try:
            if held:
                connection.execute(_UNLOCK, {"name": name})
        except Exception as exc:
            # The session is gone (a database restart, a dropped connection) and its
            # lock with it; make sure the pool never hands this connection out again.
            log.info("lock %s: freed with its connection (%s)", name, type(exc).__name__)
            connection.invalidate()
        finally:
            connection.close()


@contextmanager
def _file_lock(database: Database, name: str) -> Iterator[bool]:
    path = database.engine.url.database
    if not path or path == ":memory:":
        with _memory_guard:
            lock = _memory_locks.setdefault(name, threading.Lock())
        held = lock.acquire(blocking=False)
        try:
            yield held
        finally:
            if held:
                lock.release()
        return
    # Each open is an open file description of its own, so two threads of one process
    # exclude each other too.
    lock_file = Path(f"{path}.{name}.lock")
    descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            held = False
        try:
            yield held
        finally:
            if held:
                with contextlib.suppress(OSError):
                    fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)
