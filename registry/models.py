"""Registry tables: provider instances, their health history, and the change counter."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from providers.base import utcnow
from registry.db import Base, UTCDateTime


class PluginInstance(Base):
    """A configured provider: one plugin class, one set of keys, one routing slot."""

    __tablename__ = "plugin_instances"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[str | None] = mapped_column(String(100), index=True)
    plugin_name: Mapped[str] = mapped_column(String(100))
    display_name: Mapped[str] = mapped_column(String(200))
    provider_type: Mapped[str] = mapped_column(String(50), default="payment")
    # active | inactive | error (error: its keys or config were rejected)
    status: Mapped[str] = mapped_column(String(20), default="inactive")
    status_message: Mapped[str | None] = mapped_column(Text)
    is_active: Mapped[bool] = mapped_column(Boolean, default=False)
    # Secret fields are stored encrypted ({"$enc": ...}) or as env:/vault: references.
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    priority: Mapped[int] = mapped_column(Integer, default=100)  # lower routes first
    weight: Mapped[int] = mapped_column(Integer, default=1)  # share among equal priority
    currencies: Mapped[list[str]] = mapped_column(JSON, default=list)  # empty: all it supports
    health: Mapped[str] = mapped_column(String(20), default="unknown")
    health_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    health_message: Mapped[str | None] = mapped_column(Text)
    health_latency_ms: Mapped[float | None] = mapped_column(Float)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (Index("ix_plugin_instances_type_active", "provider_type", "is_active"),)


class PluginHealth(Base):
    """One health-check result."""

    __tablename__ = "plugin_health"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    instance_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("plugin_instances.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(20))
    message: Mapped[str] = mapped_column(Text, default="")
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    checked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class RegistryState(Base):
    """A single row whose generation is bumped by every registry change.

    Processes poll this one integer (cheap) to learn that their cached
    configured plugins are stale.
    """

    __tablename__ = "registry_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, default=1)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)


def bump_generation(session: Session) -> None:
    """In the caller's transaction: every process reloads the registry within a poll."""
    session.execute(
        update(RegistryState)
        .where(RegistryState.id == 1)
        .values(generation=RegistryState.generation + 1)
    )


class RoutingRuleset(Base):
    """One version of a scope's routing rules (registry.rules), as a draft, the active
    one, or retired. Activating one retires the scope's previous active version and
    bumps the registry generation, so workers route by it within the hot-swap bound."""

    __tablename__ = "routing_rulesets"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    # the tenant whose instances it routes, "" for the global instances (a plain column,
    # so that (scope, version) can be unique: NULLs never collide)
    scope: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="draft")  # draft|active|retired
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    note: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    activated_by: Mapped[str | None] = mapped_column(String(100))
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("scope", "version", name="uq_routing_rulesets_scope_version"),
        Index("ix_routing_rulesets_status", "status"),
    )


class RoutingExperiment(Base):
    """A named A/B test of instances in one scope (registry.experiments): while it runs,
    each payment of the scope is assigned an arm by its key and goes to that arm's
    instance first; results come from the payments that carry it (workers.payments.experiments)."""

    __tablename__ = "routing_experiments"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    scope: Mapped[str] = mapped_column(String(100))  # a tenant, "" for the global instances
    name: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), default="running")  # running|stopped|promoted
    arms: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # [{name, instance, share}]
    control: Mapped[str] = mapped_column(String(64))
    min_sample: Mapped[int] = mapped_column(Integer, default=200)
    guardrail_points: Mapped[float] = mapped_column(Float, default=2.0)
    created_by: Mapped[str] = mapped_column(String(100))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_reason: Mapped[str | None] = mapped_column(Text)
    winner: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (UniqueConstraint("scope", "name", name="uq_routing_experiments_scope_name"),)
