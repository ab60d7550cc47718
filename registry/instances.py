"""The read model of a plugin instance, safe to cache, route on and show (secrets masked)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from registry.models import PluginInstance


class InstanceStatus:
    ACTIVE = "active"
    INACTIVE = "inactive"
    ERROR = "error"


class InstanceView(BaseModel):
    """A plugin instance as a process sees it. ``config`` is masked."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    tenant_id: str | None
    plugin_name: str
    display_name: str
    provider_type: str
    status: str
    status_message: str | None
    is_active: bool
    config: dict[str, Any]
    priority: int
    weight: int
    currencies: list[str]
    health: str
    health_since: datetime | None
    health_message: str | None
    health_latency_ms: float | None
    consecutive_failures: int
    last_checked_at: datetime | None
    created_at: datetime
    updated_at: datetime
    version: int

    @property
    def routable(self) -> bool:
        """Switched on, not broken, and its circuit is closed."""
        return self.is_active and self.status != InstanceStatus.ERROR and self.health != "unhealthy"

    @property
    def label(self) -> str:
        return f"{self.display_name} ({self.plugin_name}, {str(self.id)[:8]})"

    @property
    def metric_label(self) -> str:
        """The ``instance`` label of metrics: display names need not be unique, so two
        instances called alike would emit one series twice; the short id tells them apart."""
        return metric_instance(self.display_name, self.id)


def metric_instance(display_name: str, instance_id: uuid.UUID) -> str:
    return f"{display_name}#{str(instance_id)[:8]}"


def to_view(row: PluginInstance, masked_config: dict[str, Any]) -> InstanceView:
    return InstanceView(
        id=row.id,
        tenant_id=row.tenant_id,
        plugin_name=row.plugin_name,
        display_name=row.display_name,
        provider_type=row.provider_type,
        status=row.status,
        status_message=row.status_message,
        is_active=row.is_active,
        config=masked_config,
        priority=row.priority,
        weight=row.weight,
        currencies=list(row.currencies or []),
        health=row.health,
        health_since=row.health_since,
        health_message=row.health_message,
        health_latency_ms=row.health_latency_ms,
        consecutive_failures=row.consecutive_failures,
        last_checked_at=row.last_checked_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        version=row.version,
    )
