"""Leased named locks in the database, so periodic tasks never overlap.

``with hold("reconcile", ttl_s=60) as got:`` runs the body only if no other
process holds a live lease on the name. A crashed holder's lease simply expires.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy import String, delete, insert, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from providers.base import utcnow
from registry.db import Base, Database, UTCDateTime


class TaskLock(Base):
    __tablename__ = "task_locks"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def acquire(database: Database, name: str, ttl_s: float) -> str | None:
    """Take the lock; return the holder token, or None if someone else holds it."""
    holder = _holder()
    now = utcnow()
    expires = now + timedelta(seconds=ttl_s)
    with database.transaction() as session:
        taken = session.execute(
            update(TaskLock)
            .where(TaskLock.name == name, TaskLock.expires_at < now)
            .values(holder=holder, expires_at=expires)
        )
        if taken.rowcount == 1:  # type: ignore[attr-defined]
            return holder
    try:
        with database.transaction() as session:
            session.execute(insert(TaskLock).values(name=name, holder=holder, expires_at=expires))
        return holder
    except IntegrityError:
        return None


def release(database: Database, name: str, holder: str) -> None:
    with database.transaction() as session:
        session.execute(delete(TaskLock).where(TaskLock.name == name, TaskLock.holder == holder))


@contextmanager
def hold(database: Database, name: str, ttl_s: float) -> Iterator[bool]:
    """Yield True while holding ``name``; False (and run nothing) if it is taken."""
    holder = acquire(database, name, ttl_s)
    try:
        yield holder is not None
    finally:
        if holder is not None:
            release(database, name, holder)
