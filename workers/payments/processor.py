"""Processing one payment: claim, route, charge, record. The heart of the worker.

The rules, from DESIGN.md:

* claim the payment (compare-and-set ``requested -> processing`` with a lease);
* try the route's instances in order, moving on **only** on ``ProviderUnavailable``
  or ``ConfigurationError`` (both provably not charged);
* on ``OutcomeUnknown`` (or a call that timed out) verify with the **same**
  provider before anything else; never fall through to another one;
* write the attempt rows, the new state and the outbox event in one transaction;
* a worker that takes over an expired lease (its predecessor crashed) verifies
  with the instance its predecessor was calling before it charges again.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import SecretStr
from sqlalchemy import bindparam, update

from config.celery import MAX_REDELIVERIES
from config.logging import bind_log_context, log_context
from config.settings import Settings
from providers.base import (
    Capability,
    DeclineKind,
    OutcomeStatus,
    PaymentOutcome,
    PaymentProvider,
    PaymentRequest,
    customer_action,
    retry_reference,
    utcnow,
)
from providers.errors import (
    ConfigurationError,
    OutcomeUnknown,
    PaymentDeclined,
    ProviderUnavailable,
    RequestRefused,
)
from registry.db import Database
from registry.instances import InstanceStatus, InstanceView
from registry.routing import RouteDecision
from registry.rules import RouteFacts
from registry.secrets import sanitize, secret_values
from registry.service import PluginRegistry
from workers.core import metrics
from workers.core.threads import CallTimeout, ProviderLoop
from workers.events.relay import EventRelay, InlineRelay, publish_now
from workers.ledger.group_commit import ClaimWrite, FinishWrite, LedgerWriter
from workers.ledger.leases import LeaseKeeper
from workers.ledger.outbox import AlertEvent, EventType, add_event, outbox_row
from workers.ledger.records import (
    Claim,
    PaymentMethodRow,
    PaymentRecord,
    payment_event,
    payments_table,
    read_payment,
)
from workers.ledger.states import OUTCOME_STATE, PaymentState
from workers.payments.methods import method_gone
from workers.payments.routing import facts_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Busy:
    """Another worker holds a live claim; look again after ``retry_in_s``."""

    retry_in_s: float


@dataclass(frozen=True)
class Done:
    state: PaymentState | None  # None: nothing to do (final, or lost the race)


@dataclass
class _Attempt:
    instance: InstanceView
    operation: str
    outcome: str
    latency_ms: float
    error_code: str | None = None
    message: str | None = None
    reference: str | None = None  # the provider reference the call was made under

    def row(self, payment_id: uuid.UUID) -> dict[str, Any]:
        return {
            "payment_id": payment_id,
            "instance_id": self.instance.id,
            "plugin_name": self.instance.plugin_name,
            "operation": self.operation,
            "outcome": self.outcome,
            "error_code": self.error_code,
            "message": self.message,
            "latency_ms": self.latency_ms,
            "created_at": utcnow(),
            "reference": self.reference,
        }


@dataclass
class _Decision:
    state: PaymentState
    instance: InstanceView | None = None
    outcome: PaymentOutcome | None = None
    error_code: str | None = None
    error_message: str | None = None
    attempts: list[_Attempt] = field(default_factory=list)
    # The provider's id for the payment when no outcome carries it (an order made before
    # its capture's answer was lost): stored at once, so later verifies read by it.
    provider_id: str | None = None
    route: RouteDecision | None = None  # the routing decision it was made by
    reference: str | None = None  # set when a retry charged under a new reference

    @property
    def provider_transaction_id(self) -> str | None:
        given = self.outcome.provider_transaction_id if self.outcome is not None else None
        return given or self.provider_id


_MARK_HOP = (
    update(payments_table)
    .where(
        payments_table.c.id == bindparam("pid"),
        payments_table.c.lease_token == bindparam("token"),
        # a worker past its lease must not name an instance: a successor may own it now
        payments_table.c.lease_expires_at > bindparam("now"),
    )
    .values(instance_id=bindparam("instance_id"), plugin_name=bindparam("plugin_name"))
)
# A soft decline retried on the next instance: that instance and the retry's own
# reference in one statement, so a successor verifies the retry where it was sent.
_MARK_RETRY_HOP = _MARK_HOP.values(reference=bindparam("reference"))


def outcome_mismatch(outcome: PaymentOutcome, amount_minor: int, currency: str) -> str | None:
    """Why a successful outcome disagrees with the ledger's amount or currency, if it does.

    A success that does not say what was paid is not taken on trust either (a plugin that
    could not read the provider's amount sets None): the payment goes to ``unknown`` with
    an alert, as the webhook path already does, never to ``succeeded``."""
    if outcome.status is not OutcomeStatus.SUCCEEDED:
        return None
    if outcome.amount_as_asked and outcome.amount_minor is None:
        # the provider charges exactly what it was asked or nothing (FIXED_AMOUNT)
        if outcome.currency not in (None, currency):
            return f"provider reports currency {outcome.currency}, ledger expects {currency}"
        return None
    if outcome.amount_minor is None or outcome.currency is None:
        return (
            f"provider reports success without the amount paid ({outcome.amount_minor} "
            f"{outcome.currency}), ledger expects {amount_minor} {currency}"
        )
    if outcome.amount_minor != amount_minor:
        return f"provider reports {outcome.amount_minor} minor units paid, ledger expects {amount_minor}"
    if outcome.currency != currency:
        return f"provider reports currency {outcome.currency}, ledger expects {currency}"
    return None


# (instance, refusal code) -> when this process last alerted it (time.monotonic)
_REFUSALS_ALERTED: dict[tuple[uuid.UUID, str | None], float] = {}
_REFUSALS_LOCK = threading.Lock()


class LeaseLost(Exception):
    """Our claim expired and another worker took the payment over."""


@dataclass(frozen=True)
class RouteHint:
    """The routing facts of a payment, carried in its task message so the worker can
    resolve the route and claim the payment in one statement."""

    tenant_id: str | None
    currency: str
    idempotency_key: str
    # a saved method's issuing instance: the only one the payment may go to
    pinned_instance_id: uuid.UUID | None = None

    @classmethod
    def of(cls, payment: PaymentRecord) -> RouteHint:
        return cls(
            payment.tenant_id,
            payment.currency,
            payment.idempotency_key,
            payment.pinned_instance_id,
        )


class PaymentProcessor:
    """Runs the payment flow for one process (its registry, loop and event relay)."""

    def __init__(
        self,
        database: Database,
        registry: PluginRegistry,
        loop: ProviderLoop,
        relay: InlineRelay | EventRelay,
        settings: Settings,
        on_unavailable: Any = None,
        writer: LedgerWriter | None = None,
        leases: LeaseKeeper | None = None,
    ) -> None:
        self.database = database
        # Claims and finishes; the worker's is shared by its threads (group commit).
        self.writer = writer or LedgerWriter(database, batched=False)
        self.registry = registry
        self.loop = loop
        self.relay = relay
        self.settings = settings
        # Called as on_unavailable(instance, message) when a live call finds a provider down.
        self.on_unavailable = on_unavailable
        # Renews the leases of claims in progress (workers.ledger.leases); None: the lease
        # runs its course (tests, and processes that hold claims briefly).
        self.leases = leases

    # -- entry point -------------------------------------------------------------

    def process(self, payment_id: uuid.UUID, hint: RouteHint | None = None) -> Busy | Done:
        # Routed before the claim from the message's facts alone, unless the scope has
        # rules (they read the amount, method, country and metadata): then after it, from
        # the row.
        decision = None
        if hint is not None and (
            hint.pinned_instance_id is not None or not self.registry.has_rules(hint.tenant_id)
        ):
            decision = self._route(hint)
        route = decision.route if decision is not None else None
        if hint is not None and hint.pinned_instance_id is not None and not route:
            waiting = self._wait_for_issuer(payment_id)
            if waiting is not None:
                return waiting
        first_hop = route[0] if route else None
        claimed = self.writer.claim(
            ClaimWrite(
                payment_id,
                self.settings.payment_lease_s,
                instance_id=first_hop.id if first_hop else None,
                plugin_name=first_hop.plugin_name if first_hop else None,
            )
        )
        if claimed is None:
            return self._busy_or_done(payment_id)
        claim, payment = claimed
        with log_context(
            payment_id=payment.id, tenant=payment.tenant_id, reference=payment.reference
        ):
            if self.leases is None:
                return self._process_claimed(claim, payment, decision, hint)
            with self.leases.holding(payment.id, claim.token):
                return self._process_claimed(claim, payment, decision, hint)

    def _process_claimed(
        self,
        claim: Claim,
        payment: PaymentRecord,
        decision: RouteDecision | None,
        hint: RouteHint | None,
    ) -> Busy | Done:
        # A takeover of a crashed claim verifies where its predecessor was calling; if the
        # predecessor died before naming an instance, nothing was sent: route as new.
        charging = not claim.recovering or payment.instance_id is None
        route = decision.route if decision is not None else None
        hop_recorded = not claim.recovering and bool(route) and hint == RouteHint.of(payment)
        if charging and not hop_recorded:
            stale_hop = bool(route) and hint != RouteHint.of(payment)
            if decision is None or not route or stale_hop:
                decision = self._route(RouteHint.of(payment), payment)
                route = decision.route
            try:
                if route or stale_hop:
                    self._mark_hop(claim, route[0] if route else None)
            except LeaseLost:
                return Done(None)
        if charging and route and self.settings.metrics_enabled:
            first = route[0]
            metrics.PAYMENTS_STARTED.labels(first.plugin_name, first.metric_label).inc()
            metrics.ROUTING_DECISIONS.labels(first.plugin_name, first.metric_label).inc()
        try:
            made = self._decide(payment, claim, decision if charging else None)
            return Done(self._finish(payment, claim, made))
        except LeaseLost:
            log.warning("payment %s: lease lost to another worker; leaving it to them", payment.id)
            return Done(None)

    def _wait_for_issuer(self, payment_id: uuid.UUID) -> Busy | None:
        """A saved method's issuer cannot take payments now: wait for it (unclaimed, so
        nothing is charged meanwhile) until ``saved_method_wait_s`` after the payment was
        asked for; past that, None, and the payment fails payment_method_unavailable."""
        with self.database.statement() as connection:
            payment = read_payment(connection, payment_id)
        if payment is None or payment.status != PaymentState.REQUESTED:
            return None
        age_s = (utcnow() - payment.created_at).total_seconds()
        if age_s >= self.settings.saved_method_wait_s:
            return None
        return Busy(retry_in_s=min(30.0, self.settings.saved_method_wait_s - age_s))

    def _route(self, hint: RouteHint, payment: PaymentRecord | None = None) -> RouteDecision:
        """The route and why. From the message's facts (``hint``: currency and tenant,
        enough without rules) or the payment's row (every fact a rule may read). A saved
        method's payment goes only to its issuer or the same provider account
        (registry.routing.same_account), with no fallback that would hand its token to
        another provider."""
        facts = facts_of(payment) if payment is not None else RouteFacts(currency=hint.currency)

        def resolve() -> RouteDecision:
            return self.registry.decide(
                facts,
                tenant_id=hint.tenant_id,
                idempotency_key=hint.idempotency_key,
                pinned_instance_id=hint.pinned_instance_id,
            )

        decision = resolve()
        if not decision.route:  # the cache may be up to registry_poll_s old: look again
            self.registry.refresh(force=True)
            decision = resolve()
        return decision

    def _busy_or_done(self, payment_id: uuid.UUID) -> Busy | Done:
        with self.database.statement() as connection:
            payment = read_payment(connection, payment_id)
        if payment is None:
            log.error("payment %s not found; dropping its task", payment_id)
            return Done(None)
        if payment.status != PaymentState.PROCESSING or payment.lease_expires_at is None:
            return Done(None)  # final, pending or unknown: webhooks and reconcile own it
        remaining = (payment.lease_expires_at - utcnow()).total_seconds()
        return Busy(retry_in_s=max(remaining, 0.0) + 0.5)

    # -- deciding ----------------------------------------------------------------

    def _decide(
        self, payment: PaymentRecord, claim: Claim, routed: RouteDecision | None
    ) -> _Decision:
        if payment.claims > MAX_REDELIVERIES:
            return _Decision(
                PaymentState.UNKNOWN,
                error_code="worker_lost",
                error_message=(
                    f"worker lost {payment.claims - 1} times mid-payment; reconcile will verify"
                ),
            )
        request = self._request(payment)
        if claim.recovering and payment.instance_id is not None:
            return self._recover(payment, claim, request)
        route = routed.route if routed is not None else []
        if not route and payment.pinned_instance_id is not None:
            made = _Decision(
                PaymentState.FAILED,
                error_code="payment_method_unavailable",
                error_message=(
                    f"the instance that issued payment method {payment.payment_method_id} "
                    f"({payment.pinned_instance_id}) cannot take payments now (inactive, its "
                    "circuit open, retired or not for this currency); not charged elsewhere"
                ),
            )
        elif not route:
            made = _Decision(
                PaymentState.FAILED,
                error_code="no_route",
                error_message=(
                    f"no active payment provider accepts {payment.currency} for tenant "
                    f"{payment.tenant_id or '(global)'}"
                    + (f" ({routed.reason})" if routed is not None and routed.rule else "")
                ),
            )
        else:
            made = self._charge_along(route, claim, request, self._may_retry(payment, routed))
        made.route = routed
        return made

    def _may_retry(self, payment: PaymentRecord, routed: RouteDecision | None) -> bool:
        """Whether a soft decline of this payment may be charged once more on the route's
        next instance: switched on for its tenant (its ruleset or TENDER_RETRY_SOFT_DECLINES),
        and nothing ties it to one provider (a saved method or a provider's own token)."""
        if payment.payment_method_id is not None or payment.payment_token:
            return False
        if routed is not None and routed.retry_soft_declines:
            return True
        tenants = self.settings.retry_soft_declines
        return bool(tenants) and ("*" in tenants or (payment.tenant_id or "_platform") in tenants)

    def _charge_along(
        self, route: list[InstanceView], claim: Claim, request: PaymentRequest, may_retry: bool
    ) -> _Decision:
        attempts: list[_Attempt] = []
        retried = False
        for hop, instance in enumerate(route):
            if hop > 0:
                self._mark_hop(claim, instance, request.reference if retried else None)
            decision = self._charge(instance, request, attempts)
            if decision is None:
                continue
            if (
                may_retry
                and not retried
                and hop + 1 < len(route)
                and self._soft(decision)
                and all(a.outcome != "unknown" for a in attempts)  # a clean answer only
            ):
                # Declined, so nothing was charged, and the issuer said "try again". The
                # next instance charges under a reference (so an idempotency key) of its
                # own, recorded with the hop before the call, so a successor verifies there.
                retried = True
                request = request.model_copy(
                    update={"reference": retry_reference(request.reference)}
                )
                log.info(
                    "payment %s: soft decline %s at %s; retrying once on the next instance",
                    request.payment_id,
                    decision.error_code,
                    instance.label,
                )
                continue
            decision.attempts = attempts
            if retried:
                decision.reference = request.reference
            return decision
        last = attempts[-1].message if attempts else "no provider answered"
        return _Decision(
            PaymentState.FAILED,
            instance=route[-1],
            error_code="providers_unavailable",
            error_message=f"every provider in the route was unavailable; last: {last}",
            attempts=attempts,
            reference=request.reference if retried else None,
        )

    def _soft(self, decision: _Decision) -> bool:
        """A decline the plugin's table calls soft (or a provider-side processing failure):
        worth one more try elsewhere. Hard declines and unknown codes never are."""
        if decision.state is not PaymentState.FAILED or decision.instance is None:
            return False
        if decision.outcome is None and decision.error_code is None:
            return False
        try:
            plugin_cls = self.registry.catalogue.get(decision.instance.plugin_name)
        except Exception:
            return False
        return plugin_cls.decline_kind(decision.error_code) in (
            DeclineKind.SOFT,
            DeclineKind.OUTAGE,
        )

    def _charge(
        self, instance: InstanceView, request: PaymentRequest, attempts: list[_Attempt]
    ) -> _Decision | None:
        """One hop. None means: provably not charged, try the next instance."""
        bind_log_context(instance=instance.display_name)
        started = time.perf_counter()

        def attempt(outcome: str, code: str | None = None, message: str | None = None) -> None:
            latency = (time.perf_counter() - started) * 1000
            attempts.append(
                _Attempt(instance, "charge", outcome, latency, code, message, request.reference)
            )

        try:
            plugin = self.registry.plugin_for(instance)
        except Exception as exc:  # could not even build the plugin: nothing was sent
            # Local to this process (a missing env reference, a broken install): fall
            # through, but do not switch the instance off for every other worker.
            code = exc.code if isinstance(exc, ConfigurationError) else "plugin_load_failed"
            log.error("cannot build plugin for %s in this process: %s", instance.label, exc)
            attempt("config_error", code, str(exc))
            return None
        try:
            outcome = self.loop.run(
                plugin.process_payment(request), self.settings.provider_timeout_s
            )
        except ConfigurationError as exc:  # keys rejected: the provider refused to act
            attempt("config_error", exc.code, str(exc))
            self.registry.mark_error(instance.id, plugin.scrub(str(exc)))
            return None
        except ProviderUnavailable as exc:
            attempt("unavailable", exc.code, str(exc))
            if self.on_unavailable is not None:
                self.on_unavailable(instance, plugin.scrub(str(exc)))
            return None
        except RequestRefused as exc:
            # The account's own settings refused this payment: nothing was charged and
            # the instance works for others. Neither a decline nor an outage (no circuit
            # count, no `error`): the next instance tries, and an operator is told.
            message = plugin.scrub(str(exc))
            attempt("refused", exc.code, message)
            self._alert_refusal(instance, request, exc.code, message)
            return None
        except PaymentDeclined as exc:
            attempt("failed", exc.code, exc.message)
            return _Decision(
                PaymentState.FAILED,
                instance,
                error_code=exc.code or "declined",
                error_message=exc.message,
                provider_id=exc.provider_id,
            )
        except (OutcomeUnknown, CallTimeout) as exc:
            attempt("unknown", getattr(exc, "code", None), str(exc))
            given = getattr(exc, "provider_id", None)
            decision = self._verify(
                instance, plugin, request, attempts, reason=str(exc), provider_id=given
            )
            decision.provider_id = decision.provider_id or given
            return decision
        except Exception as exc:  # a plugin bug after sending is as ambiguous as a timeout
            log.exception("plugin %s raised unexpectedly", instance.plugin_name)
            attempt("unknown", "plugin_error", f"{type(exc).__name__}: {exc}")
            return self._verify(instance, plugin, request, attempts, reason="plugin error")
        attempt(outcome.status.value, outcome.code, outcome.message)
        return self._from_outcome(instance, outcome, request)

    def _verify(
        self,
        instance: InstanceView,
        plugin: PaymentProvider,
        request: PaymentRequest,
        attempts: list[_Attempt],
        *,
        reason: str,
        provider_id: str | None = None,
    ) -> _Decision:
        """After an ambiguous charge: ask the same provider (by its own id for the payment,
        when the ledger holds one). Unresolved: state unknown."""
        started = time.perf_counter()
        try:
            outcome = self.loop.run(
                plugin.verify_payment(request.reference, provider_id=provider_id),
                self.settings.provider_timeout_s,
            )
        except Exception as exc:
            latency = (time.perf_counter() - started) * 1000
            attempts.append(
                _Attempt(
                    instance, "verify", "unknown", latency, getattr(exc, "code", None), str(exc)
                )
            )
            return _Decision(
                PaymentState.UNKNOWN,
                instance,
                error_code="outcome_unknown",
                error_message=f"{reason}; verification failed too ({exc}); reconcile will verify",
            )
        latency = (time.perf_counter() - started) * 1000
        attempts.append(
            _Attempt(
                instance, "verify", outcome.status.value, latency, outcome.code, outcome.message
            )
        )
        if outcome.status is OutcomeStatus.NOT_FOUND:
            return _Decision(
                PaymentState.UNKNOWN,
                instance,
                error_code="outcome_unknown",
                error_message=f"{reason}; the provider has no record yet; reconcile will verify",
            )
        return self._from_outcome(instance, outcome, request)

    def _recover(self, payment: PaymentRecord, claim: Claim, request: PaymentRequest) -> _Decision:
        """A predecessor crashed while calling ``payment.instance_id``: verify there first."""
        instance = next((v for v in self.registry.snapshot() if v.id == payment.instance_id), None)
        if instance is None:
            return _Decision(
                PaymentState.UNKNOWN,
                error_code="instance_gone",
                error_message="worker crashed mid-payment and its provider instance was retired",
            )
        attempts: list[_Attempt] = []
        try:
            plugin = self.registry.plugin_for(instance)
        except ConfigurationError as exc:
            return _Decision(
                PaymentState.UNKNOWN, instance, error_code="config_error", error_message=str(exc)
            )
        usable = instance.is_active and instance.status != InstanceStatus.ERROR
        if payment.provider_transaction_id is None and (
            Capability.REPLAYS_TO_RECOVER in plugin.capabilities
        ):
            # No id to read the payment by, and no lookup by reference at this provider:
            # the same charge again is a replay (its idempotency returns what the
            # predecessor's call made), or the first charge if that call never arrived.
            charge_again = True
        else:
            decision = self._verify(
                instance,
                plugin,
                request,
                attempts,
                reason="worker crashed mid-payment",
                provider_id=payment.provider_transaction_id,
            )
            never_charged = attempts[-1].outcome == OutcomeStatus.NOT_FOUND.value
            charge_again = decision.state is PaymentState.UNKNOWN and never_charged and usable
        if charge_again:
            # Charge again at the same instance only: the same reference lets the
            # provider refuse a duplicate if the predecessor's call lands late. Its circuit
            # may be open (a blip the predecessor saw): that keeps new payments away, but
            # this one has nowhere else to go, and one call tells whether it is back.
            decision = self._charge(instance, request, attempts) or _Decision(
                PaymentState.UNKNOWN,
                instance,
                error_code="outcome_unknown",
                error_message="provider unavailable while recovering; reconcile will verify",
            )
        decision.attempts = attempts
        return decision

    @staticmethod
    def _from_outcome(
        instance: InstanceView, outcome: PaymentOutcome, request: PaymentRequest
    ) -> _Decision:
        mismatch = outcome_mismatch(outcome, request.amount_minor, request.currency)
        if mismatch is not None:
            # Never report a payment as paid for an amount the customer did not pay.
            log.error("payment %s: %s", request.payment_id, mismatch)
            return _Decision(
                PaymentState.UNKNOWN,
                instance,
                outcome=outcome,
                error_code="amount_mismatch",
                error_message=mismatch,
            )
        state = OUTCOME_STATE[outcome.status]
        failed = state is PaymentState.FAILED
        return _Decision(
            state,
            instance,
            outcome=outcome,
            error_code=(outcome.code or "declined") if failed else None,
            error_message=outcome.message if failed else None,
        )

    # -- writing -----------------------------------------------------------------

    def _request(self, payment: PaymentRecord) -> PaymentRequest:
        token = (
            self.registry.box.decrypt({"$enc": payment.payment_token})
            if payment.payment_token
            else None
        )
        customer_id = None
        if payment.payment_method_id is not None:
            # a saved method: the provider's customer it belongs to (Stripe refuses a
            # saved PaymentMethod without it), charged with nobody present (off-session)
            with self.database.sessions() as session:
                method = session.get(PaymentMethodRow, payment.payment_method_id)
                customer_id = method.provider_customer_id if method is not None else None
        # Every field was validated at the boundary (request_payment) before it was
        # stored; re-validating the email on each charge costs more than the charge.
        return PaymentRequest.model_construct(
            payment_id=payment.id,
            reference=payment.reference,
            order_id=payment.order_id,
            amount_minor=payment.amount_minor,
            currency=payment.currency,
            customer_email=payment.customer_email,
            payment_method=payment.payment_method,  # type: ignore[arg-type]
            payment_token=SecretStr(token) if token else None,
            metadata=payment.metadata_ or {},
            tenant_id=payment.tenant_id,
            customer_id=customer_id,
            off_session=payment.payment_method_id is not None,
            save_method=payment.save_method_for is not None,
        )

    def _mark_hop(
        self, claim: Claim, instance: InstanceView | None, reference: str | None = None
    ) -> None:
        """Record which instance we are about to call, so a successor can verify there
        (None: clear a hop recorded from a message whose routing facts were wrong), and
        under which reference when a retry charges under its own."""
        params = {
            "pid": claim.payment_id,
            "token": claim.token,
            "now": utcnow(),
            "instance_id": instance.id if instance else None,
            "plugin_name": instance.plugin_name if instance else None,
        }
        statement = _MARK_HOP
        if reference is not None:
            statement, params["reference"] = _MARK_RETRY_HOP, reference
        with self.database.statement() as connection:
            if connection.execute(statement, params).rowcount != 1:
                raise LeaseLost()

    def _scrub(self, decision: _Decision) -> None:
        """Provider and SDK error texts go into events billing reads: strip secrets first."""
        secrets: list[str] = []
        for instance in {a.instance.id: a.instance for a in decision.attempts}.values():
            try:
                secrets += secret_values(self.registry.plugin_for(instance))
            except Exception:  # cannot be built here: nothing of its config to leak
                continue
        for attempt in decision.attempts:
            if attempt.message:
                attempt.message = sanitize(attempt.message, secrets)
        if decision.error_message:
            decision.error_message = sanitize(decision.error_message, secrets)

    def _alert_refusal(
        self, instance: InstanceView, request: PaymentRequest, code: str | None, message: str
    ) -> None:
        """One ``alert.raised`` per instance and refusal code per ``alert_cooldown_s`` in
        this process (a processor is made per task, so the memory is the module's): a route that keeps sending small amounts to an instance with a
        minimum must not page someone for every payment."""
        key = (instance.id, code)
        now = time.monotonic()
        with _REFUSALS_LOCK:
            last = _REFUSALS_ALERTED.get(key)
            if last is not None and now - last < self.settings.alert_cooldown_s:
                return
            _REFUSALS_ALERTED[key] = now
        with self.database.transaction() as session:
            add_event(
                session,
                AlertEvent(
                    severity="warning",
                    title=f"{instance.label} refused a payment: {code or 'refused'}",
                    text=(
                        f"{instance.label} refused payment {request.payment_id} "
                        f"({request.amount_minor} {request.currency}) for its account's "
                        f"settings, charging nothing; the next instance was tried. {message}"
                    ),
                    instance_id=instance.id,
                    tenant_id=request.tenant_id,
                ),
            )

    def _alert_mismatch(self, payment: PaymentRecord, decision: _Decision) -> None:
        """A provider reported success for another amount or currency: the payment is
        ``unknown`` for a person to look at, and they are told (``alert.raised``, relayed by
        the outbox sweep). Rare, so off the batched path."""
        with self.database.transaction() as session:
            add_event(
                session,
                AlertEvent(
                    severity="critical",
                    title="payment succeeded for another amount or currency",
                    text=f"payment {payment.id} left unknown: {decision.error_message}",
                    instance_id=decision.instance.id if decision.instance else None,
                    tenant_id=payment.tenant_id,
                ),
            )

    def _finish(self, payment: PaymentRecord, claim: Claim, decision: _Decision) -> PaymentState:
        if decision.error_message or any(a.message for a in decision.attempts):
            self._scrub(decision)
        instance = decision.instance
        outcome = decision.outcome
        fields: dict[str, Any] = {
            "lease_token": None,
            "lease_expires_at": None,
            "error_code": decision.error_code,
            "error_message": decision.error_message,
        }
        if instance is not None:
            fields |= {"instance_id": instance.id, "plugin_name": instance.plugin_name}
        next_action = None
        if outcome is not None:
            fields |= {"authorization_url": outcome.authorization_url}
            if decision.state is PaymentState.PENDING:
                next_action = customer_action(outcome)
                fields["next_action"] = next_action
        provider_id = decision.provider_transaction_id
        if provider_id is not None:
            fields["provider_transaction_id"] = provider_id
        route_decision = decision.route.record() if decision.route is not None else None
        if route_decision is not None:
            fields["route_decision"] = route_decision
        if decision.reference is not None:  # a retry charged under its own reference
            fields["reference"] = decision.reference
            fields["charge_attempts"] = [
                {
                    "instance_id": str(a.instance.id),
                    "provider": a.instance.plugin_name,
                    "reference": a.reference,
                    "outcome": a.outcome,
                    "error_code": a.error_code,
                }
                for a in decision.attempts
                if a.operation == "charge"
            ]
        expires_at = None
        if decision.state is PaymentState.PENDING and instance is not None:
            expires_at = self._expiry(payment, instance)
            fields["expires_at"] = expires_at
        action_required = (
            decision.state is PaymentState.PENDING
            and outcome is not None
            and outcome.code == "authentication_required"
        )
        event = outbox_row(
            payment_event(
                payment,
                decision.state,
                event_type=EventType.PAYMENT_ACTION_REQUIRED if action_required else None,
                **fields,
            )
        )
        finished = self.writer.finish(
            FinishWrite(
                claim,
                decision.state,
                event,
                attempts=[a.row(payment.id) for a in decision.attempts],
                instance_id=instance.id if instance else None,
                plugin_name=instance.plugin_name if instance else None,
                error_code=decision.error_code,
                error_message=decision.error_message,
                provider_transaction_id=provider_id,
                authorization_url=outcome.authorization_url if outcome else None,
                next_action=next_action,
                expires_at=expires_at,
                route_decision=route_decision,
                publish=self.relay.submit,  # with the rest of its batch, once committed
            )
        )
        if not finished:
            raise LeaseLost()
        if self.settings.metrics_enabled:
            _count(decision, instance)
        if decision.error_code == "amount_mismatch":
            self._alert_mismatch(payment, decision)
        if payment.payment_method_id is not None and decision.state is PaymentState.FAILED:
            self._method_gone(payment.payment_method_id, instance, decision.error_code)
        if log.isEnabledFor(logging.INFO):  # its arguments cost more than the check
            log.info(
                "payment %s %s via %s%s",
                payment.id,
                decision.state.value,
                instance.label if instance else "no provider",
                f": {decision.error_message}" if decision.error_message else "",
            )
        return decision.state

    def _method_gone(self, method_id: str, instance: InstanceView | None, code: str | None) -> None:
        """A saved method's charge declined with a code its plugin says means the method
        is gone (expired card, deleted token): stop charging it, tell billing."""
        if instance is None or code is None:
            return
        try:
            gone = self.registry.catalogue.get(instance.plugin_name).method_gone_codes.get(code)
        except Exception:
            return
        if gone is not None:
            ids = method_gone(self.database, method_id, gone)
            publish_now(self.database, self.relay.publisher, ids)

    def _expiry(self, payment: PaymentRecord, instance: InstanceView) -> datetime:
        """When a payment that waits on its customer ends: its instance's checkout lifetime
        after the payment was asked for."""
        try:
            lifetime_s = self.registry.plugin_for(instance).lifetime_s
        except Exception:  # the plugin answered a moment ago; a default beats no expiry
            lifetime_s = PaymentProvider.checkout_lifetime_s
        return payment.created_at + timedelta(seconds=lifetime_s)


def _count(decision: _Decision, instance: InstanceView | None) -> None:
    """The finished payment's metrics: its provider calls, hops and verifications."""
    for attempt in decision.attempts:
        provider = attempt.instance.plugin_name
        metrics.PROVIDER_CALL_SECONDS.labels(provider, attempt.operation).observe(
            attempt.latency_ms / 1000
        )
        if attempt.operation == "verify":
            metrics.VERIFICATIONS.labels(provider, attempt.outcome).inc()
        elif attempt.outcome in ("unavailable", "config_error", "refused"):
            metrics.FALLBACKS.labels(provider, attempt.instance.metric_label).inc()
    metrics.PAYMENTS_FINISHED.labels(
        instance.plugin_name if instance else "none",
        instance.metric_label if instance else "none",
        decision.state.value,
    ).inc()
