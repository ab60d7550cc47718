"""Routing: a pure function of (instances, ruleset, request) -> a route and its reasons.

In order:

1. **Scope.** A tenant with instances of its own is routed only through them (they hold
   that merchant's keys), by the tenant's ruleset; otherwise through the global
   instances, by the global ruleset.
2. **Binding.** A payment with a saved method goes only to the instance that issued it,
   or one declared as the same provider account; rules do not move it.
3. **Rules.** The first rule of the scope's active ruleset whose conditions all hold
   names the instances, with a priority and weight each; none matching, the ruleset's
   default; no ruleset or no default, every instance of the scope with its own
   priority and weight (registry.rules).
4. **Usable.** Switched on, not in ``error``, circuit closed (not ``unhealthy``), and the
   currency is in the instance's list (empty list: all its plugin supports).
5. **Order.** Lower priority first. Among equal priority, a weighted rendezvous hash of
   the idempotency key spreads payments by weight and keeps a payment's order stable
   across retries.

:func:`decide` returns the route with the decision that made it (the rule, the
ruleset's version, a reason), which the ledger records on the payment; with
``explain=True`` it also says why each instance of the scope was left out.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from registry.instances import InstanceStatus, InstanceView
from registry.rules import CompiledRuleSet, RouteFacts, Target

Supports = Callable[[str, str], bool]


def in_scope(
    instances: Iterable[InstanceView], tenant_id: str | None, provider_type: str
) -> list[InstanceView]:
    typed = [i for i in instances if i.provider_type == provider_type]
    own = [i for i in typed if tenant_id is not None and i.tenant_id == tenant_id]
    return own or [i for i in typed if i.tenant_id is None]


def accepts(instance: InstanceView, currency: str, supports: Supports) -> bool:
    if instance.currencies and currency not in instance.currencies:
        return False
    return supports(instance.plugin_name, currency)


def same_account(view: InstanceView, issuer: InstanceView | None, issuer_id: uuid.UUID) -> bool:
    """Whether ``view`` may charge a method saved by ``issuer``: it is the issuer, or an
    instance of the same plugin and tenant declared as the same provider account."""
    if view.id == issuer_id:
        return True
    account = view.config.get("account_id")
    return bool(
        account
        and issuer is not None
        and issuer.plugin_name == view.plugin_name
        and issuer.tenant_id == view.tenant_id
        and issuer.config.get("account_id") == account
    )


def unusable_reason(instance: InstanceView, currency: str, supports: Supports) -> str | None:
    """Why ``instance`` cannot take this payment now, or None if it can."""
    if not instance.is_active:
        return "switched off"
    if instance.status == InstanceStatus.ERROR:
        return f"in error: {instance.status_message or 'its keys were refused'}"
    if instance.health == "unhealthy":
        return "circuit open (health check unhealthy)"
    if instance.currencies and currency not in instance.currencies:
        return f"{currency} is not in its currencies ({', '.join(instance.currencies)})"
    if not supports(instance.plugin_name, currency):
        return f"{instance.plugin_name} does not take {currency}"
    return None


def _rendezvous_score(key: str, instance_id: uuid.UUID, weight: int) -> float:
    digest = hashlib.blake2b(f"{key}\x1f{instance_id}".encode(), digest_size=8).digest()
    uniform = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)  # in (0, 1)
    return -math.log(uniform) / max(weight, 1)


@dataclass(frozen=True)
class Excluded:
    """An instance of the scope the route leaves out, and why."""

    instance: InstanceView
    reason: str


@dataclass(frozen=True)
class RouteDecision:
    route: list[InstanceView]
    reason: str
    rule: str | None = None
    ruleset_id: uuid.UUID | None = None
    ruleset_version: int | None = None
    retry_soft_declines: bool = False
    excluded: tuple[Excluded, ...] = ()

    def record(self) -> dict[str, Any]:
        """What the ledger keeps on the payment (payments.route_decision)."""
        return {
            "rule": self.rule,
            "ruleset_id": str(self.ruleset_id) if self.ruleset_id else None,
            "ruleset_version": self.ruleset_version,
            "reason": self.reason,
        }


# (instance, priority, weight): an instance with its place in the route
_Candidate = tuple[InstanceView, int, int]


def decide(
    instances: Iterable[InstanceView],
    *,
    tenant_id: str | None,
    facts: RouteFacts,
    idempotency_key: str,
    supports: Supports,
    ruleset: CompiledRuleSet | None = None,
    pinned_instance_id: uuid.UUID | None = None,
    provider_type: str = "payment",
    explain: bool = False,
) -> RouteDecision:
    """The instances to try for this payment, primary first, and why. Empty: no route."""
    instances = list(instances)
    scope = in_scope(instances, tenant_id, provider_type)
    left_out: list[Excluded] = []
    rule_name = None
    if pinned_instance_id is not None:
        issuer = next((v for v in instances if v.id == pinned_instance_id), None)
        candidates: list[_Candidate] = []
        for v in scope:
            if same_account(v, issuer, pinned_instance_id):
                candidates.append((v, v.priority, v.weight))
            elif explain:
                left_out.append(Excluded(v, "the saved method is bound to another instance"))
        reason = (
            f"saved method bound to {issuer.label if issuer else pinned_instance_id} "
            "(or the same provider account); rules do not move it"
        )
        ruleset_used = None
    elif ruleset is not None:
        rule = ruleset.first_match(facts)
        targets = rule.route if rule is not None else ruleset.default
        if rule is not None:
            rule_name = rule.name
            reason = f"rule {rule.name!r} matched (ruleset v{ruleset.version})"
        elif targets is not None:
            reason = f"no rule matched; the default route of ruleset v{ruleset.version}"
        else:
            reason = (
                f"no rule matched in ruleset v{ruleset.version}; every instance by its own "
                "priority and weight"
            )
        candidates = _targeted(scope, targets, rule_name, left_out if explain else None)
        ruleset_used = ruleset
    else:
        candidates = [(v, v.priority, v.weight) for v in scope]
        reason = "no routing rules for this scope; every instance by its own priority and weight"
        ruleset_used = None
    currency = facts.currency
    usable: list[_Candidate] = []
    for candidate in candidates:
        instance = candidate[0]
        if instance.routable and accepts(instance, currency, supports):
            usable.append(candidate)
        elif explain:
            why = unusable_reason(instance, currency, supports) or "not usable"
            left_out.append(Excluded(instance, why))
    if len(usable) > 1:
        usable.sort(key=lambda c: (c[1], _rendezvous_score(idempotency_key, c[0].id, c[2])))
    return RouteDecision(
        route=[c[0] for c in usable],
        reason=reason,
        rule=rule_name,
        ruleset_id=ruleset_used.id if ruleset_used else None,
        ruleset_version=ruleset_used.version if ruleset_used else None,
        retry_soft_declines=bool(ruleset and ruleset.retry_soft_declines),
        excluded=tuple(left_out),
    )


def _targeted(
    scope: list[InstanceView],
    targets: tuple[Target, ...] | None,
    rule_name: str | None,
    left_out: list[Excluded] | None,
) -> list[_Candidate]:
    if targets is None:
        return [(v, v.priority, v.weight) for v in scope]
    by_id = {v.id: v for v in scope}
    candidates = [(by_id[t.instance], t.priority, t.weight) for t in targets if t.instance in by_id]
    if left_out is not None:
        named = {t.instance for t in targets}
        where = f"rule {rule_name!r}" if rule_name else "the default route"
        left_out.extend(Excluded(v, f"not in {where}") for v in scope if v.id not in named)
    return candidates


def resolve_route(
    instances: Iterable[InstanceView],
    *,
    tenant_id: str | None,
    currency: str,
    idempotency_key: str,
    supports: Supports,
    provider_type: str = "payment",
    ruleset: CompiledRuleSet | None = None,
) -> list[InstanceView]:
    """The instances to try, primary first, by currency alone (no other facts)."""
    return decide(
        instances,
        tenant_id=tenant_id,
        facts=RouteFacts(currency=currency),
        idempotency_key=idempotency_key,
        supports=supports,
        ruleset=ruleset,
        provider_type=provider_type,
    ).route
