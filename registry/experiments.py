"""A/B experiments between provider instances (issue 38).

An experiment belongs to a scope (a tenant, or the global instances) and names two to
five **arms**, each an instance of the scope with a traffic share (percent, summing to
100), and which arm is the **control**. While it runs, every payment of the scope is
assigned an arm by its idempotency key (stable across retries) and goes to that arm's
instance first, the rest of its route behind as fallbacks; a payment whose arm's
instance cannot take it is routed as without the experiment and not counted.

Results (counts, approval rates with Wilson intervals, the difference to control and
whether it is significant, p95 provider latency) are read from the payments that carry
the arm (workers.payments.experiments), which also applies the **guardrail**: a variant
whose approval rate is significantly below control's by more than ``guardrail_points``
is stopped, with an alert and an audit record. **Promoting** an arm ends the experiment
and routes its instance first (priority below the scope's lowest).

One experiment runs per scope at a time; creating, stopping and promoting bump the
registry generation, so workers follow within the hot-swap bound.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from providers.base import utcnow
from registry import audit
from registry.db import Database
from registry.errors import RegistryError
from registry.models import PluginInstance, RoutingExperiment, bump_generation

RUNNING, STOPPED, PROMOTED = "running", "stopped", "promoted"
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}", re.ASCII)


class ExperimentNotFound(RegistryError, LookupError):
    """No experiment with that id (or not one the caller's tenant may see)."""


class Arm(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    instance: uuid.UUID
    share: int = Field(ge=1, le=99, description="percent of the scope's payments")


class ExperimentSpec(BaseModel):
    """An experiment as operators write it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    arms: list[Arm] = Field(min_length=2, max_length=5)
    control: str
    min_sample: int = Field(default=200, ge=10, le=10_000_000)
    guardrail_points: float = Field(default=2.0, gt=0, le=50)

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentSpec:
        if not _NAME.fullmatch(self.name):
            raise ValueError("name: 1 to 64 of a-z, 0-9, '_', '-', '.'")
        names = [arm.name for arm in self.arms]
        if any(not _NAME.fullmatch(n) for n in names) or len(set(names)) != len(names):
            raise ValueError("arms: each needs its own name of a-z, 0-9, '_', '-', '.'")
        if len({arm.instance for arm in self.arms}) != len(self.arms):
            raise ValueError("arms: each arm is a different instance")
        if sum(arm.share for arm in self.arms) != 100:
            raise ValueError("arms: the shares add up to 100")
        if self.control not in names:
            raise ValueError(f"control: {self.control!r} is not one of the arms")
        return self


class ExperimentView(BaseModel):
    id: uuid.UUID
    tenant_id: str | None
    name: str
    status: str
    arms: list[dict[str, Any]]
    control: str
    min_sample: int
    guardrail_points: float
    created_by: str
    started_at: datetime
    ended_at: datetime | None
    ended_reason: str | None
    winner: str | None


def _view(row: RoutingExperiment) -> ExperimentView:
    return ExperimentView(
        id=row.id, tenant_id=row.scope or None, name=row.name, status=row.status,
        arms=row.arms, control=row.control, min_sample=row.min_sample,
        guardrail_points=row.guardrail_points, created_by=row.created_by,
        started_at=row.started_at, ended_at=row.ended_at, ended_reason=row.ended_reason,
        winner=row.winner,
    )  # fmt: skip


def create_experiment(
    database: Database, spec: Any, *, tenant_id: str | None = None, actor: str = "code"
) -> ExperimentView:
    """Start an experiment; RegistryError names what is wrong, and nothing is written."""
    try:
        parsed = spec if isinstance(spec, ExperimentSpec) else ExperimentSpec.model_validate(spec)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "experiment"
        raise RegistryError(f"{where}: {str(error['msg']).removeprefix('Value error, ')}") from None
    scope = tenant_id or ""
    with database.transaction() as session:
        for arm in parsed.arms:
            target = session.get(PluginInstance, arm.instance)
            if (
                target is None
                or target.tenant_id not in (None, tenant_id)
                or (target.provider_type != "payment")
            ):
                raise RegistryError(f"arms: no payment instance {arm.instance} in this scope")
        running = session.execute(
            select(func.count()).where(
                RoutingExperiment.scope == scope, RoutingExperiment.status == RUNNING
            )
        ).scalar_one()
        if running:
            raise RegistryError("an experiment is already running in this scope: stop it first")
        taken = session.execute(
            select(func.count()).where(
                RoutingExperiment.scope == scope, RoutingExperiment.name == parsed.name
            )
        ).scalar_one()
        if taken:
            raise RegistryError(f"name: an experiment {parsed.name!r} already exists here")
        row = RoutingExperiment(
            scope=scope, name=parsed.name, status=RUNNING,
            arms=[arm.model_dump(mode="json") for arm in parsed.arms], control=parsed.control,
            min_sample=parsed.min_sample, guardrail_points=parsed.guardrail_points,
            created_by=actor[:100], started_at=utcnow(),
        )  # fmt: skip
        session.add(row)
        session.flush()
        bump_generation(session)
        audit.record(
            session, actor, "experiment.start", str(row.id), None,
            {"name": row.name, "arms": row.arms, "control": row.control}, tenant_id=tenant_id,
        )  # fmt: skip
        return _view(row)


def _row(
    session: Session, experiment_id: uuid.UUID | str, within_tenant: str | None
) -> RoutingExperiment:
    try:
        key = uuid.UUID(str(experiment_id))
    except ValueError:
        raise ExperimentNotFound(f"{experiment_id!r} is not an experiment id") from None
    row = session.get(RoutingExperiment, key)
    if row is None or (within_tenant is not None and row.scope != within_tenant):
        raise ExperimentNotFound(f"no experiment {experiment_id}")
    return row


def get_experiment(
    database: Database, experiment_id: uuid.UUID | str, *, within_tenant: str | None = None
) -> ExperimentView:
    with database.sessions() as session:
        return _view(_row(session, experiment_id, within_tenant))


def list_experiments(
    database: Database, *, within_tenant: str | None = None
) -> list[ExperimentView]:
    query = select(RoutingExperiment).order_by(RoutingExperiment.started_at.desc())
    if within_tenant is not None:
        query = query.where(RoutingExperiment.scope == within_tenant)
    with database.sessions() as session:
        return [_view(row) for row in session.execute(query).scalars()]


def stop_experiment(
    database: Database,
    experiment_id: uuid.UUID | str,
    *,
    reason: str,
    actor: str = "code",
    within_tenant: str | None = None,
    action: str = "experiment.stop",
) -> ExperimentView:
    """End a running experiment (its payments route as without it again)."""
    with database.transaction() as session:
        row = _row(session, experiment_id, within_tenant)
        if row.status != RUNNING:
            raise RegistryError(f"experiment {row.name!r} is {row.status}, not running")
        row.status, row.ended_at, row.ended_reason = STOPPED, utcnow(), reason[:500]
        bump_generation(session)
        audit.record(
            session, actor, action, str(row.id), {"status": RUNNING},
            {"status": STOPPED, "reason": row.ended_reason}, tenant_id=row.scope or None,
        )  # fmt: skip
        return _view(row)


def promote_arm(
    database: Database,
    experiment_id: uuid.UUID | str,
    arm: str,
    *,
    actor: str = "code",
    within_tenant: str | None = None,
) -> ExperimentView:
    """End the experiment with ``arm`` the winner: its instance routes first from now on
    (priority one below the scope's lowest), in the same transaction."""
    with database.transaction() as session:
        row = _row(session, experiment_id, within_tenant)
        chosen = next((a for a in row.arms if a["name"] == arm), None)
        if chosen is None:
            raise RegistryError(f"arm: {arm!r} is not an arm of {row.name!r}")
        if row.status == PROMOTED:
            raise RegistryError(f"experiment {row.name!r} was already promoted")
        instance = session.get(PluginInstance, uuid.UUID(chosen["instance"]))
        if instance is None:
            raise RegistryError(f"arm {arm!r}: its instance was retired")
        scope_filter = (
            PluginInstance.tenant_id.is_(None)
            if instance.tenant_id is None
            else PluginInstance.tenant_id == instance.tenant_id
        )
        lowest = session.execute(
            select(func.min(PluginInstance.priority)).where(
                scope_filter, PluginInstance.id != instance.id
            )
        ).scalar_one()
        before = instance.priority
        instance.priority = max(0, (lowest if lowest is not None else before) - 1)
        instance.version += 1
        instance.updated_at = utcnow()
        row.status, row.winner = PROMOTED, arm
        row.ended_at = row.ended_at or utcnow()
        row.ended_reason = row.ended_reason or f"arm {arm!r} promoted"
        bump_generation(session)
        audit.record(
            session, actor, "experiment.promote", str(row.id), {"priority": before},
            {"arm": arm, "instance": chosen["instance"], "priority": instance.priority},
            tenant_id=row.scope or None,
        )  # fmt: skip
        return _view(row)


# -- what routing reads -----------------------------------------------------------------


@dataclass(frozen=True)
class CompiledExperiment:
    id: uuid.UUID
    name: str
    # (arm name, instance id, cumulative share as a fraction of 2**64)
    arms: tuple[tuple[str, uuid.UUID, int], ...]

    def arm_for(self, idempotency_key: str) -> tuple[str, uuid.UUID]:
        """The payment's arm: the same for every retry of it, in proportion to shares.
        (A hash of its own, not the rendezvous one: arms and route order stay independent.)"""
        digest = hashlib.blake2b(f"{self.id}\x1f{idempotency_key}".encode(), digest_size=8).digest()
        point = int.from_bytes(digest, "big")
        for name, instance_id, upto in self.arms:
            if point < upto:
                return name, instance_id
        name, instance_id, _ = self.arms[-1]
        return name, instance_id


def running_experiments(session: Session) -> dict[str | None, CompiledExperiment]:
    """Every scope's running experiment (what the registry's snapshot holds)."""
    found: dict[str | None, CompiledExperiment] = {}
    rows = session.execute(
        select(RoutingExperiment).where(RoutingExperiment.status == RUNNING)
    ).scalars()
    for row in rows:
        total, arms = 0, []
        for arm in row.arms:
            total += int(arm["share"])
            arms.append((arm["name"], uuid.UUID(arm["instance"]), total * 2**64 // 100))
        found[row.scope or None] = CompiledExperiment(row.id, row.name, tuple(arms))
    return found
