"""The audit trail: who changed which provider instance, token or key, when, from what to
what. A record is written in the same transaction as the change it describes (a change
that fails leaves none), with secrets masked as every surface masks them.

``actor`` is the token's name for HTTP and console changes, ``cli:<user>`` from the CLI,
``code`` from Python unless the caller names itself, ``tender`` for the system's own.
Read with ``tender audit`` or ``GET /api/audit``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from providers.base import utcnow
from registry.db import Base, Database, UTCDateTime


class AuditRecord(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(50), index=True)
    target: Mapped[str] = mapped_column(String(100), index=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # the tenant the change belongs to (None: the platform's own), for tenant-bound readers
    tenant_id: Mapped[str | None] = mapped_column(String(100), index=True)


def record(
    session: Session,
    actor: str,
    action: str,
    target: str,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    *,
    tenant_id: str | None = None,
) -> None:
    """Append a record in the caller's transaction (``before``/``after`` already masked;
    ``tenant_id``: the tenant whose object changed, None for the platform's)."""
    session.add(
        AuditRecord(
            actor=actor[:100],
            action=action,
            target=target,
            before=before,
            after=after,
            tenant_id=tenant_id,
        )
    )


def list_audit(
    database: Database,
    *,
    target: str | None = None,
    action: str | None = None,
    actor: str | None = None,
    tenant_id: str | None = None,
    limit: int = 100,
) -> list[AuditRecord]:
    """Newest first, filtered (``tenant_id``: that tenant's records only)."""
    query = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(limit)
    if tenant_id is not None:
        query = query.where(AuditRecord.tenant_id == tenant_id)
    if target is not None:
        query = query.where(AuditRecord.target == target)
    if action is not None:
        query = query.where(AuditRecord.action == action)
    if actor is not None:
        query = query.where(AuditRecord.actor == actor)
    with database.sessions() as session:
        return list(session.execute(query).scalars())
