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

import dataclasses
import hashlib
import math
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from registry.adaptive import Adaptive, StatsReader, no_stats, order_by_success, segment_of
from registry.experiments import CompiledExperiment
from registry.instances import InstanceStatus, InstanceView
from registry.rules import CompiledRule, CompiledRuleSet, RouteFacts, Target

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


_MASK = 2**64 - 1


def _key_hash(key: str) -> int:
    """A payment's idempotency key as 64 stable bits (the same in every process)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def _rendezvous_score(key_hash: int, instance_id: uuid.UUID, weight: int) -> float:
    """Weighted rendezvous: -ln(u)/weight, the lowest wins, u uniform per (key,
    instance). u is splitmix64 of the key's hash and the instance id's low 64 bits: stable
    across processes and restarts, and a fraction of a blake2b per instance."""
    return _score(key_hash, instance_id.int & _MASK, 1 / max(weight, 1))


def _score(key_hash: int, salt: int, inverse_weight: float) -> float:
    x = ((key_hash ^ salt) + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    x ^= x >> 31
    return -math.log((x + 1) / (2**64 + 1)) * inverse_weight


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
    # (experiment id, its name, the payment's arm) when an experiment placed it
    experiment: tuple[uuid.UUID, str, str] | None = None

    def record(self) -> dict[str, Any]:
        """What the ledger keeps on the payment (payments.route_decision)."""
        recorded: dict[str, Any] = {
            "rule": self.rule,
            "ruleset_id": str(self.ruleset_id) if self.ruleset_id else None,
            "ruleset_version": self.ruleset_version,
            "reason": self.reason,
        }
        if self.experiment is not None:
            experiment_id, name, arm = self.experiment
            recorded |= {"experiment_id": str(experiment_id), "experiment": name, "arm": arm}
        return recorded


def with_experiment(
    decision: RouteDecision, experiment: CompiledExperiment | None, idempotency_key: str
) -> RouteDecision:
    """The route with the payment's arm's instance first, when an experiment runs in its
    scope and that instance can take the payment; otherwise as it was (not counted)."""
    if experiment is None or not decision.route:
        return decision
    arm, instance_id = experiment.arm_for(idempotency_key)
    chosen = next((v for v in decision.route if v.id == instance_id), None)
    if chosen is None:
        return decision
    route = [chosen, *(v for v in decision.route if v is not chosen)]
    return dataclasses.replace(
        decision,
        route=route,
        reason=f"experiment {experiment.name!r}, arm {arm!r}: {chosen.display_name} first; "
        + decision.reason,
        experiment=(experiment.id, experiment.name, arm),
    )


# (instance, priority, weight): an instance with its place in the route
_Candidate = tuple[InstanceView, int, int]


def _first_two(entry: tuple[int, float, InstanceView]) -> tuple[int, float]:
    return entry[0], entry[1]


@dataclass(frozen=True)
class RoutePlan:
    """Everything of a route but its order among equal priorities, which the payment's
    key decides: the same for every payment of a scope, rule and currency while the
    registry's snapshot stands, so the registry keeps it (PluginRegistry.decide)."""

    candidates: tuple[_Candidate, ...]  # usable ones, by priority
    tied: bool  # some share a priority: the key orders them
    reason: str
    rule: str | None = None
    ruleset_id: uuid.UUID | None = None
    ruleset_version: int | None = None
    retry_soft_declines: bool = False
    excluded: tuple[Excluded, ...] = ()
    adaptive: Adaptive | None = None  # success-rate mode: the order is the bandit's

    # (priority, the id's low 64 bits, 1/weight) per candidate: what ordering them costs
    @cached_property
    def _ordering(self) -> tuple[tuple[int, int, float, InstanceView], ...]:
        return tuple((c[1], c[0].id.int & _MASK, 1 / max(c[2], 1), c[0]) for c in self.candidates)

    def decision(
        self,
        idempotency_key: str,
        facts: RouteFacts | None = None,
        stats: StatsReader = no_stats,
    ) -> RouteDecision:
        if self.adaptive is not None and self.candidates:
            return self._by_success(idempotency_key, facts, stats, self.adaptive)
        if self.tied:
            key = _key_hash(idempotency_key)
            scored = [
                (priority, _score(key, salt, inverse), view)
                for priority, salt, inverse, view in self._ordering
            ]
            scored.sort(key=_first_two)
            route = [entry[2] for entry in scored]
        else:
            route = [c[0] for c in self.candidates]
        return RouteDecision(
            route=route,
            reason=self.reason,
            rule=self.rule,
            ruleset_id=self.ruleset_id,
            ruleset_version=self.ruleset_version,
            retry_soft_declines=self.retry_soft_declines,
            excluded=self.excluded,
        )

    def _by_success(
        self,
        idempotency_key: str,
        facts: RouteFacts | None,
        stats: StatsReader,
        adaptive: Adaptive,
    ) -> RouteDecision:
        fields = adaptive.segment_by
        segment = segment_of(facts.values() if facts is not None else {}, fields)
        views = [c[0] for c in self.candidates]
        arms = [stats(fields, segment, v.id) for v in views]
        route, eliminated, explored = order_by_success(
            views, arms, _key_hash(idempotency_key), adaptive
        )
        where = ", ".join(f"{f}={v}" for f, v in zip(fields, segment, strict=True))
        first = arms[views.index(route[0])]
        measured = (
            f"{first.rate:.0%} of {first.attempts}" if first.rate is not None else "no outcomes yet"
        )
        how = "an exploration pick" if explored else f"by recent success rate ({measured})"
        return RouteDecision(
            route=route,
            reason=f"{self.reason}; {route[0].display_name} first, {how}, segment {where}",
            rule=self.rule,
            ruleset_id=self.ruleset_id,
            ruleset_version=self.ruleset_version,
            retry_soft_declines=self.retry_soft_declines,
            excluded=self.excluded + tuple(Excluded(v, why) for v, why in eliminated),
        )


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
    stats: StatsReader = no_stats,
    experiment: CompiledExperiment | None = None,
) -> RouteDecision:
    """The instances to try for this payment, primary first, and why. Empty: no route.
    ``stats``: the windowed outcomes success-rate rules order by; ``experiment``: the
    scope's running A/B test, which puts the payment's arm first."""
    rule = (
        ruleset.first_match(facts) if ruleset is not None and pinned_instance_id is None else None
    )
    decision = plan(
        instances, tenant_id=tenant_id, currency=facts.currency, supports=supports,
        ruleset=ruleset, rule=rule, pinned_instance_id=pinned_instance_id,
        provider_type=provider_type, explain=explain,
    ).decision(idempotency_key, facts, stats)  # fmt: skip
    if pinned_instance_id is not None:
        return decision  # a saved method's issuer: no experiment moves it
    return with_experiment(decision, experiment, idempotency_key)


def plan(
    instances: Iterable[InstanceView],
    *,
    tenant_id: str | None,
    currency: str,
    supports: Supports,
    ruleset: CompiledRuleSet | None,
    rule: CompiledRule | None,
    pinned_instance_id: uuid.UUID | None = None,
    provider_type: str = "payment",
    explain: bool = False,
) -> RoutePlan:
    """The route's plan once the rule is chosen (``rule``: the ruleset's first match for
    the payment, None when none matched)."""
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
    usable: list[_Candidate] = []
    for candidate in candidates:
        instance = candidate[0]
        if instance.routable and accepts(instance, currency, supports):
            usable.append(candidate)
        elif explain:
            why = unusable_reason(instance, currency, supports) or "not usable"
            left_out.append(Excluded(instance, why))
    usable.sort(key=lambda c: c[1])
    return RoutePlan(
        candidates=tuple(usable),
        tied=len({c[1] for c in usable}) < len(usable),
        reason=reason,
        rule=rule_name,
        ruleset_id=ruleset_used.id if ruleset_used else None,
        ruleset_version=ruleset_used.version if ruleset_used else None,
        retry_soft_declines=bool(ruleset and ruleset.retry_soft_declines),
        excluded=tuple(left_out),
        adaptive=rule.adaptive if rule is not None and pinned_instance_id is None else None,
    )


def _targeted(
    scope: list[InstanceView],
    targets: tuple[Target, ...] | None,
    rule_name: str | None,
    left_out: list[Excluded] | None,
) -> list[_Candidate]:
    if targets is None:
        return [(v, v.priority, v.weight) for v in scope]
    by_id = {v.id.int: v for v in scope}  # by the id's integer: hash(uuid) costs a µs
    candidates = [
        (by_id[t.instance.int], t.priority, t.weight) for t in targets if t.instance.int in by_id
    ]
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
