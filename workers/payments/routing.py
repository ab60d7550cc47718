"""Routing as billing and operators see it: the facts a payment is routed by, and
explanations (``tender route explain``, ``POST /api/routing/explain``, the console's
Routing page) of the route a request or an existing payment gets and why.

The decision itself is registry.routing.decide, a pure function; this module only
gathers its inputs from the ledger and shapes its answer.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from providers.money import MoneyError, normalize_currency, to_minor
from registry.db import Database
from registry.errors import RegistryError
from registry.routing import RouteDecision
from registry.rules import (
    CompiledRuleSet,
    RouteFacts,
    RulesError,
    compile_ruleset,
    parse_ruleset,
    validated_route_facts,
)
from registry.rulesets import get_ruleset
from registry.service import PluginRegistry
from workers.ledger.records import Payment, PaymentRecord
from workers.payments.client import PaymentNotFound, in_tenant, payment_key


def facts_of(payment: PaymentRecord | Payment) -> RouteFacts:
    """The routing facts of a recorded payment."""
    given = payment.route_facts or {}
    return RouteFacts(
        currency=payment.currency,
        amount_minor=payment.amount_minor,
        payment_method=payment.payment_method,
        billing_country=given.get("billing_country"),
        card_brand=given.get("card_brand"),
        card_bin=given.get("card_bin"),
        metadata=payment.metadata_ or {},
    )


class RoutedInstance(BaseModel):
    instance_id: uuid.UUID
    display_name: str
    plugin_name: str
    tenant_id: str | None


class LeftOut(RoutedInstance):
    reason: str


class Explanation(BaseModel):
    """The route a payment gets now, primary first, and why; ``recorded``: the decision
    an existing payment was made by."""

    route: list[RoutedInstance]
    rule: str | None
    ruleset_id: uuid.UUID | None
    ruleset_version: int | None
    reason: str
    left_out: list[LeftOut]
    retry_soft_declines: bool
    payment_id: uuid.UUID | None = None
    recorded: dict[str, Any] | None = None


def _shaped(decision: RouteDecision) -> Explanation:
    return Explanation(
        route=[
            RoutedInstance(
                instance_id=v.id,
                display_name=v.display_name,
                plugin_name=v.plugin_name,
                tenant_id=v.tenant_id,
            )
            for v in decision.route
        ],
        rule=decision.rule,
        ruleset_id=decision.ruleset_id,
        ruleset_version=decision.ruleset_version,
        reason=decision.reason,
        left_out=[
            LeftOut(
                instance_id=x.instance.id,
                display_name=x.instance.display_name,
                plugin_name=x.instance.plugin_name,
                tenant_id=x.instance.tenant_id,
                reason=x.reason,
            )
            for x in decision.excluded
        ],
        retry_soft_declines=decision.retry_soft_declines,
    )


def request_facts(
    *,
    amount: Decimal | int | str,
    currency: str,
    payment_method: str = "card",
    billing_country: str | None = None,
    card_brand: str | None = None,
    card_bin: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> RouteFacts:
    """RouteFacts from a payment request as billing would send it; RulesError names a bad
    field."""
    try:
        code = normalize_currency(currency)
        minor = to_minor(amount, code)
    except MoneyError as exc:
        raise RulesError(
            "amount" if "amount" in str(exc).lower() else "currency", str(exc)
        ) from None
    return RouteFacts(
        currency=code,
        amount_minor=minor,
        payment_method=payment_method,
        **validated_route_facts(
            {"billing_country": billing_country, "card_brand": card_brand, "card_bin": card_bin}
        ),
        metadata=metadata or {},
    )


def explain(
    registry: PluginRegistry,
    facts: RouteFacts,
    *,
    tenant_id: str | None,
    idempotency_key: str = "explain",
    ruleset_id: uuid.UUID | str | None = None,
    within_tenant: str | None = None,
) -> Explanation:
    """The route a payment with ``facts`` would get now, by the active ruleset or by the
    draft ``ruleset_id`` (a dry run: nothing is charged or written)."""
    if within_tenant is not None and tenant_id != within_tenant:
        raise RegistryError("tenant_id: a tenant-bound caller explains its own tenant's routes")
    decision = registry.decide(
        facts,
        tenant_id=tenant_id,
        idempotency_key=idempotency_key,
        ruleset=_tried(registry.database, ruleset_id, within_tenant),
        explain=True,
    )
    return _shaped(decision)


def _tried(
    database: Database, ruleset_id: uuid.UUID | str | None, within_tenant: str | None
) -> CompiledRuleSet | None:
    """A ruleset version to try instead of the active one (None: the active one)."""
    if ruleset_id is None:
        return None
    view = get_ruleset(database, ruleset_id, within_tenant=within_tenant)
    return compile_ruleset(
        parse_ruleset(view.document), id=view.id, version=view.version, tenant_id=view.tenant_id
    )


def explain_payment(
    registry: PluginRegistry,
    payment_id: uuid.UUID | str,
    *,
    ruleset_id: uuid.UUID | str | None = None,
    within_tenant: str | None = None,
) -> Explanation:
    """An existing payment's route as it would be decided now, with the decision it was
    recorded with."""
    key = payment_key(payment_id)
    with registry.database.sessions() as session:
        payment = session.get(Payment, key)
        if payment is None or not in_tenant(payment.tenant_id, within_tenant):
            raise PaymentNotFound(f"no payment {payment_id}")
        facts = facts_of(payment)
        recorded = payment.route_decision
        tenant_id, idempotency_key = payment.tenant_id, payment.idempotency_key
        pinned = payment.pinned_instance_id
    decision = registry.decide(
        facts,
        tenant_id=tenant_id,
        idempotency_key=idempotency_key,
        pinned_instance_id=pinned,
        ruleset=_tried(registry.database, ruleset_id, within_tenant),
        explain=True,
    )
    return _shaped(decision).model_copy(update={"payment_id": key, "recorded": recorded})
