"""Routing rules over HTTP (issue 37).

========  ======================================  ==========================================
GET       /api/routing/rulesets                   versions of a scope (``?tenant_id=``)
POST      /api/routing/rulesets                   save a draft (validated; 422 names the field)
GET       /api/routing/rulesets/{id}              one version
POST      /api/routing/rulesets/{id}/activate     make it the scope's active one
POST      /api/routing/clear                      retire the scope's active one (no rules)
POST      /api/routing/explain                    the route a request or payment gets, and why
GET       /api/routing/outcomes                   approval rate per instance and hour (24 h)
GET/POST  /api/experiments                        A/B experiments: list / start one
GET       /api/experiments/{id}                   results: rates, Wilson intervals, significance
POST      /api/experiments/{id}/stop              end it
POST      /api/experiments/{id}/promote           end it with an arm the winner (routed first)
========  ======================================  ==========================================

Reading and explaining need ``read``; drafting, activating and clearing ``admin``. A token
bound to a tenant sees and changes only its tenant's rulesets and payments.
"""

# No ``from __future__ import annotations``: FastAPI reads the route signatures.
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from registry.db import get_database
from registry.experiments import (
    ExperimentView,
    create_experiment,
    list_experiments,
    promote_arm,
    stop_experiment,
)
from registry.rulesets import (
    RulesetView,
    activate_ruleset,
    clear_rules,
    create_draft,
    get_ruleset,
    list_rulesets,
)
from registry.service import PluginRegistry
from registry.tokens import Scope
from surfaces.http.auth import actor_of, require, tenant_for_body, tenant_of
from surfaces.http.errors import error_responses, operator_errors
from workers.payments.client import PaymentNotFound
from workers.payments.experiments import ExperimentResults, approval_history, experiment_results
from workers.payments.routing import Explanation, explain, explain_payment, request_facts


class RulesetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant_id: str | None = Field(default=None, min_length=1, max_length=100)
    document: dict[str, Any] = Field(
        description="rules (first match wins), default, retry_soft_declines: see docs/routing.md"
    )
    note: str | None = Field(default=None, max_length=500)


class ExperimentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant_id: str | None = Field(default=None, min_length=1, max_length=100)
    name: str = Field(min_length=1, max_length=64)
    arms: list[dict[str, Any]] = Field(
        min_length=2, max_length=5, description="[{name, instance, share (percent)}]"
    )
    control: str = Field(min_length=1, max_length=64)
    min_sample: int = Field(default=200, ge=10, le=10_000_000)
    guardrail_points: float = Field(default=2.0, gt=0, le=50)


class ExperimentStop(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="stopped by an operator", min_length=1, max_length=500)


class ExperimentPromote(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arm: str = Field(min_length=1, max_length=64)


class ClearRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant_id: str | None = Field(default=None, min_length=1, max_length=100)


class ExplainRequest(BaseModel):
    """A payment request as billing would send it, or an existing payment's id."""

    model_config = ConfigDict(extra="forbid")

    payment_id: uuid.UUID | None = None
    tenant_id: str | None = Field(default=None, min_length=1, max_length=100)
    amount: Decimal | None = Field(default=None, description='in major units, as "12.50"')
    currency: str | None = Field(default=None, min_length=3, max_length=3)
    payment_method: str = Field(default="card", max_length=30)
    billing_country: str | None = Field(default=None, max_length=2)
    card_brand: str | None = Field(default=None, max_length=30)
    card_bin: str | None = Field(default=None, max_length=8)
    metadata: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str = Field(default="explain", min_length=1, max_length=200)
    ruleset_id: uuid.UUID | None = Field(
        default=None, description="try this version (a draft) instead of the active one"
    )


def routing_router(get_registry: Callable[[], PluginRegistry]) -> APIRouter:
    router = APIRouter(
        prefix="/api/routing",
        tags=["routing"],
        responses=error_responses(400, 401, 403, 404, 413, 422),
    )
    Registry = Annotated[PluginRegistry, Depends(get_registry)]
    Actor = Annotated[str, Depends(actor_of)]
    Tenant = Annotated[str | None, Depends(tenant_of)]

    @router.get("/rulesets", dependencies=[require(Scope.READ)])
    def rulesets(bound: Tenant, tenant_id: str | None = None) -> list[RulesetView]:
        if bound is not None and tenant_id not in (None, bound):
            raise HTTPException(403, f"this token is bound to tenant {bound!r}")
        return list_rulesets(get_database(), tenant_id=bound or tenant_id)

    @router.post("/rulesets", status_code=201, dependencies=[require(Scope.ADMIN)])
    def draft(body: RulesetCreate, actor: Actor, request: Request) -> RulesetView:
        tenant = tenant_for_body(request, body.tenant_id)
        with operator_errors():
            return create_draft(
                get_database(), body.document, tenant_id=tenant, actor=actor, note=body.note
            )

    @router.get("/rulesets/{ruleset_id}", dependencies=[require(Scope.READ)])
    def ruleset(ruleset_id: str, bound: Tenant) -> RulesetView:
        with operator_errors():
            return get_ruleset(get_database(), ruleset_id, within_tenant=bound)

    @router.post("/rulesets/{ruleset_id}/activate", dependencies=[require(Scope.ADMIN)])
    def activate(ruleset_id: str, bound: Tenant, actor: Actor) -> RulesetView:
        with operator_errors():
            return activate_ruleset(get_database(), ruleset_id, actor=actor, within_tenant=bound)

    @router.post("/clear", dependencies=[require(Scope.ADMIN)])
    def clear(body: ClearRequest, actor: Actor, request: Request) -> RulesetView | None:
        tenant = tenant_for_body(request, body.tenant_id)
        return clear_rules(get_database(), tenant_id=tenant, actor=actor)

    @router.post("/explain", dependencies=[require(Scope.READ)])
    def explain_route(body: ExplainRequest, registry: Registry, request: Request) -> Explanation:
        bound = tenant_of(request)
        with operator_errors():
            if body.payment_id is not None:
                try:
                    return explain_payment(
                        registry, body.payment_id, ruleset_id=body.ruleset_id, within_tenant=bound
                    )
                except PaymentNotFound as exc:
                    raise HTTPException(404, str(exc)) from None
            if body.amount is None or body.currency is None:
                raise HTTPException(422, "give a payment_id, or an amount and a currency")
            tenant = tenant_for_body(request, body.tenant_id)
            facts = request_facts(
                amount=body.amount,
                currency=body.currency,
                payment_method=body.payment_method,
                billing_country=body.billing_country,
                card_brand=body.card_brand,
                card_bin=body.card_bin,
                metadata=body.metadata,
            )
            return explain(
                registry,
                facts,
                tenant_id=tenant,
                idempotency_key=body.idempotency_key,
                ruleset_id=body.ruleset_id,
                within_tenant=bound,
            )

    @router.get("/outcomes", dependencies=[require(Scope.READ)])
    def outcomes(bound: Tenant, hours: int = 24) -> list[dict[str, Any]]:
        if not 1 <= hours <= 168:
            raise HTTPException(422, "hours: 1 to 168")
        return approval_history(get_database(), hours=hours, within_tenant=bound)

    return router


def experiments_router() -> APIRouter:
    router = APIRouter(
        prefix="/api/experiments",
        tags=["experiments"],
        responses=error_responses(400, 401, 403, 404, 413, 422),
    )
    Actor = Annotated[str, Depends(actor_of)]
    Tenant = Annotated[str | None, Depends(tenant_of)]

    @router.get("", dependencies=[require(Scope.READ)])
    def experiments(bound: Tenant) -> list[ExperimentView]:
        return list_experiments(get_database(), within_tenant=bound)

    @router.post("", status_code=201, dependencies=[require(Scope.ADMIN)])
    def start(body: ExperimentCreate, actor: Actor, request: Request) -> ExperimentView:
        tenant = tenant_for_body(request, body.tenant_id)
        spec = body.model_dump(exclude={"tenant_id"})
        with operator_errors():
            return create_experiment(get_database(), spec, tenant_id=tenant, actor=actor)

    @router.get("/{experiment_id}", dependencies=[require(Scope.READ)])
    def results(experiment_id: str, bound: Tenant) -> ExperimentResults:
        with operator_errors():
            return experiment_results(get_database(), experiment_id, within_tenant=bound)

    @router.post("/{experiment_id}/stop", dependencies=[require(Scope.ADMIN)])
    def stop(
        experiment_id: str, body: ExperimentStop, bound: Tenant, actor: Actor
    ) -> ExperimentView:
        with operator_errors():
            return stop_experiment(
                get_database(), experiment_id, reason=body.reason, actor=actor,
                within_tenant=bound,
            )  # fmt: skip

    @router.post("/{experiment_id}/promote", dependencies=[require(Scope.ADMIN)])
    def promote(
        experiment_id: str, body: ExperimentPromote, bound: Tenant, actor: Actor
    ) -> ExperimentView:
        with operator_errors():
            return promote_arm(
                get_database(), experiment_id, body.arm, actor=actor, within_tenant=bound
            )

    return router
