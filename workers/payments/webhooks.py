"""Provider webhooks: authenticate, dedupe, move the ledger, emit the event.

:func:`receive_webhook` is what ``POST /webhooks/{plugin}`` calls with the raw body:

1. **authenticate**: the plugin verifies its signature over the raw body (constant-time,
   inside ``parse_webhook``). Several instances of a plugin may exist (tenants, a key
   rotation), so each instance of that plugin is tried until one's key verifies; none:
   :class:`~providers.errors.WebhookSignatureError` (401), and nothing is written. When
   the event names a payment taken by another instance, that instance's key must verify
   it too: one tenant's key cannot move another tenant's payment.
2. **dedupe and apply**, in one transaction: a :class:`~workers.ledger.records.WebhookReceipt`
   keyed ``(provider, event_id)`` is inserted with the state change it caused, so a
   redelivery hits the unique constraint and changes nothing.
3. **publish** the outbox event after the commit.

A receipt's ``result`` says what the webhook did (:class:`WebhookResult`). Amounts and
currencies in a success must match the ledger, otherwise nothing moves, the receipt says
``mismatch`` and an ``alert.raised`` event goes out with the state change's transaction.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from config.logging import log_context
from config.settings import Settings, get_settings
from providers.base import (
    OutcomeStatus,
    PaymentOutcome,
    PaymentProvider,
    RefundStatus,
    WebhookEvent,
    utcnow,
)
from providers.errors import ConfigurationError, ProviderUnavailable, WebhookSignatureError
from registry.db import Database, get_database
from registry.errors import RegistryError
from registry.instances import InstanceView
from registry.secrets import SecretBox
from registry.service import PluginRegistry
from workers.core.threads import CallTimeout, ProviderLoop
from workers.events.relay import EventPublisher, publish_now
from workers.ledger.outbox import AlertEvent, add_event
from workers.ledger.records import (
    Payment,
    Refund,
    WebhookReceipt,
    apply_transition,
    late_success_alert,
    payment_event,
)
from workers.ledger.states import OUTCOME_STATE, PaymentState
from workers.payments.disputes import DisputeConflict, apply_dispute
from workers.payments.methods import save_from_success
from workers.payments.processor import outcome_mismatch
from workers.payments.refunds import (
    OPEN_REFUNDS,
    REFUNDABLE,
    RefundMismatch,
    RefundState,
    fail_refund,
    lock_payment,
    refundable_minor,
    settle_refund,
)

log = logging.getLogger(__name__)


class WebhookResult(StrEnum):
    """What one webhook did; stored on its receipt and answered to the provider."""

    APPLIED = "applied"  # the payment or refund moved
    NO_CHANGE = "no_change"  # already in that state (e.g. the worker saw the charge first)
    IGNORED = "ignored"  # an event type Tender does not act on
    UNKNOWN_REFERENCE = "unknown_reference"  # no payment with that reference
    MISMATCH = "mismatch"  # amount or currency disagrees with the ledger: alert
    CONFLICT = "conflict"  # contradicts a final state (e.g. success for a failed payment)
    DUPLICATE = "duplicate"  # a redelivery: a receipt exists (never stored itself)
    IN_PROGRESS = "in_progress"  # a worker holds the payment: answered 409, not stored


class WebhookPluginNotFound(LookupError):
    """No such plugin, or no instance of it to verify signatures with: answer 404."""


@dataclass(frozen=True)
class WebhookReply:
    result: WebhookResult
    http_status: int
    payment_id: uuid.UUID | None = None
    detail: str = ""


class _NotYet(Exception):
    """Roll the webhook's transaction back (its receipt too) and answer ``reply``."""

    def __init__(self, reply: WebhookReply) -> None:
        super().__init__(reply.detail)
        self.reply = reply


# Payment states a charge webhook may settle; the rest are final or owned by a worker.
_OPEN_PAYMENT = (PaymentState.PENDING, PaymentState.UNKNOWN)
_IN_FLIGHT = (PaymentState.REQUESTED, PaymentState.PROCESSING)


def receive_webhook(
    plugin_name: str,
    raw_body: bytes,
    headers: Mapping[str, str],
    *,
    database: Database | None = None,
    registry: PluginRegistry | None = None,
    loop: ProviderLoop | None = None,
    publisher: EventPublisher | None = None,
    settings: Settings | None = None,
) -> WebhookReply:
    """Authenticate and apply one webhook. Raises :class:`WebhookPluginNotFound` (404),
    :class:`~providers.errors.WebhookSignatureError` (401) or
    :class:`~providers.errors.WebhookPayloadError` (400); nothing is written then."""
    from workers import runtime

    database = database or get_database()
    registry = registry or runtime.registry()
    loop = loop or runtime.provider_loop()
    settings = settings or get_settings()
    if publisher is None:
        from workers.core.app import app

        publisher = EventPublisher(app)

    verifier = _Verifier(plugin_name, raw_body, headers, registry, loop, settings)
    instance, event = verifier.authenticate()
    with log_context(reference=event.reference, instance=instance.display_name):
        return _receive(database, publisher, plugin_name, instance, event, verifier)


def _receive(
    database: Database,
    publisher: EventPublisher,
    plugin_name: str,
    instance: InstanceView,
    event: WebhookEvent,
    verifier: _Verifier,
) -> WebhookReply:
    try:
        with database.transaction() as session:
            reply, outbox_ids = _apply(session, event, instance, verifier)
    except _NotYet as not_yet:  # rolled back, receipt included: the redelivery will apply
        return not_yet.reply
    except IntegrityError as exc:
        if "uq_webhook_receipts_event" not in str(exc.orig) and not _receipt_exists(
            database, plugin_name, event.event_id
        ):
            # Another constraint (e.g. a refund id already recorded elsewhere): not a
            # redelivery. Answer 500 so the provider retries, and leave a loud trace.
            log.error(
                "webhook %s %s could not be recorded: %s", plugin_name, event.event_id, exc.orig
            )
            return WebhookReply(WebhookResult.CONFLICT, 500, detail="could not be recorded")
        # The receipt's unique (provider, event_id): this event was already handled.
        log.info("webhook %s %s redelivered; already handled", plugin_name, event.event_id)
        return WebhookReply(WebhookResult.DUPLICATE, 200, detail="already received")
    publish_now(database, publisher, outbox_ids)
    return reply


def _receipt_exists(database: Database, provider: str, event_id: str) -> bool:
    with database.sessions() as session:
        found = session.execute(
            select(WebhookReceipt.id).where(
                WebhookReceipt.provider == provider, WebhookReceipt.event_id == event_id
            )
        ).first()
    return found is not None


# --- authentication -------------------------------------------------------------------


class _Verifier:
    """Finds the instance whose key signed the body; checks a payment's own instance."""

    def __init__(
        self,
        plugin_name: str,
        raw_body: bytes,
        headers: Mapping[str, str],
        registry: PluginRegistry,
        loop: ProviderLoop,
        settings: Settings,
    ) -> None:
        self.plugin_name = plugin_name
        self.raw_body = raw_body
        self.headers = headers
        self.registry = registry
        self.loop = loop
        self.timeout_s = settings.provider_timeout_s

    def authenticate(self) -> tuple[InstanceView, WebhookEvent]:
        try:
            self.registry.catalogue.get(self.plugin_name)
        except RegistryError:
            raise WebhookPluginNotFound(f"no plugin named {self.plugin_name!r}") from None
        last: WebhookSignatureError | None = None
        for fresh in (False, True):  # an instance created a moment ago may not be cached yet
            if fresh:
                self.registry.refresh(force=True)
            candidates = self._candidates()
            for instance, plugin in candidates:
                try:
                    return instance, self._parse(plugin)
                except WebhookSignatureError as exc:
                    last = exc
            if not candidates and fresh:
                raise WebhookPluginNotFound(
                    f"no {self.plugin_name} instance is configured to verify webhooks with"
                )
        log.warning("rejected %s webhook: %s", self.plugin_name, last)
        raise last or WebhookSignatureError("signature not verified")

    def signed_by(self, instance_id: uuid.UUID) -> bool | None:
        """Does this instance's key verify the body? None: the instance is gone."""
        instance = next((v for v in self.registry.snapshot() if v.id == instance_id), None)
        if instance is None:
            return None
        try:
            self._parse(self.registry.plugin_for(instance))
        except (WebhookSignatureError, ConfigurationError):
            return False
        return True

    def _candidates(self) -> list[tuple[InstanceView, PaymentProvider]]:
        """This plugin's instances that can verify, switched-on ones first."""
        views = [v for v in self.registry.snapshot() if v.plugin_name == self.plugin_name]
        views.sort(key=lambda v: (not v.routable, not v.is_active, v.priority))
        return list(self._configured(views))

    def _configured(
        self, views: list[InstanceView]
    ) -> Iterator[tuple[InstanceView, PaymentProvider]]:
        for view in views:
            try:
                yield view, self.registry.plugin_for(view)
            except ConfigurationError as exc:  # e.g. an env: reference unset in this process
                log.warning("cannot verify webhooks with %s: %s", view.label, exc)

    def _parse(self, plugin: PaymentProvider) -> WebhookEvent:
        try:
            return self.loop.run(plugin.parse_webhook(self.raw_body, self.headers), self.timeout_s)
        except CallTimeout:
            # the provider's own verification (PayPal's) did not answer in time: nothing
            # was applied, the provider delivers again (503, not a 500)
            raise ProviderUnavailable(
                f"{plugin.name} did not verify the event within {self.timeout_s:.0f} s",
                provider=plugin.name,
                code="verify_timeout",
            ) from None


# --- applying -------------------------------------------------------------------------


def _apply(
    session: Session, event: WebhookEvent, instance: InstanceView, verifier: _Verifier
) -> tuple[WebhookReply, list[int]]:
    receipt = WebhookReceipt(
        provider=event.provider,
        event_id=event.event_id,
        event_type=event.event_type,
        reference=event.reference,
        result=WebhookResult.IGNORED.value,
    )
    session.add(receipt)
    session.flush()  # a redelivery fails here, before anything else is written

    acts = event.refund is not None or event.dispute is not None
    if not acts and event.status not in (OutcomeStatus.SUCCEEDED, OutcomeStatus.FAILED):
        log.info("webhook %s %s: not an event Tender acts on", event.provider, event.event_type)
        return WebhookReply(WebhookResult.IGNORED, 200), []

    payment = None
    if event.reference:
        payment = lock_payment(session, reference=event.reference)
    elif event.provider_id:  # a provider whose webhooks name only its own id (M-Pesa)
        payment = lock_payment(session, provider_id=(event.provider, event.provider_id))
        receipt.reference = payment.reference if payment is not None else None
    if payment is None or payment.plugin_name not in (None, event.provider):
        log.warning(
            "webhook %s %s for unknown reference %r: acknowledged, nothing changed",
            event.provider,
            event.event_type,
            event.reference or event.provider_id,
        )
        receipt.result = WebhookResult.UNKNOWN_REFERENCE.value
        return WebhookReply(WebhookResult.UNKNOWN_REFERENCE, 200), []

    _check_instance(payment, instance, verifier)
    if event.dispute is not None:
        reply, outbox_ids = _apply_dispute(session, event, payment)
    elif event.refund is not None:
        reply, outbox_ids = _apply_refund(session, event, payment)
    else:
        reply, outbox_ids = _apply_charge(session, event, payment, verifier.registry.box)
    if reply.result is WebhookResult.IN_PROGRESS:
        raise _NotYet(reply)
    receipt.result = reply.result.value
    session.flush()
    return reply, outbox_ids


def _check_instance(payment: Payment, verified_by: InstanceView, verifier: _Verifier) -> None:
    """The key of the instance that took the payment must have signed its webhook."""
    if payment.instance_id is None or payment.instance_id == verified_by.id:
        return
    signed = verifier.signed_by(payment.instance_id)
    if signed is None and verified_by.tenant_id in (None, payment.tenant_id):
        return  # its instance was retired; a key of the same tenant (or global) vouches
    if not signed:
        raise WebhookSignatureError(
            f"payment {payment.id} was taken by another {payment.plugin_name} instance, "
            "whose key did not sign this webhook"
        )


def _apply_charge(
    session: Session, event: WebhookEvent, payment: Payment, box: SecretBox
) -> tuple[WebhookReply, list[int]]:
    assert event.status is not None
    current = PaymentState(payment.status)
    new = OUTCOME_STATE[event.status]
    if current in _IN_FLIGHT:
        return _reply(WebhookResult.IN_PROGRESS, payment, 409, "a worker is charging it"), []
    if current is new or (new is PaymentState.SUCCEEDED and current in REFUNDABLE):
        # already settled by another of the provider's events (Stripe sends the session's
        # and the intent's): the one that names the saved method still saves it
        saved = (
            save_from_success(session, payment, event.saved_method, box)
            if (new is PaymentState.SUCCEEDED)
            else []
        )
        reply = _reply(WebhookResult.NO_CHANGE, payment, 200, f"already {current.value}")
        return reply, [row.id for row in saved]
    # Money at the provider is the truth: a success for a payment Tender failed (a checkout
    # it expired, a decline the customer retried past) makes it succeeded, loudly.
    late_success = current is PaymentState.FAILED and new is PaymentState.SUCCEEDED
    if current not in _OPEN_PAYMENT and not late_success:
        text = (
            f"{event.provider} says payment {payment.id} ({payment.reference}) "
            f"{event.status.value} but the ledger has it {current.value}"
        )
        return _alerting(session, WebhookResult.CONFLICT, payment, text)
    # the worker's rule for what counts as paid, "as asked" (FIXED_AMOUNT) included
    reported = PaymentOutcome(
        status=event.status,
        reference=payment.reference,
        amount_minor=event.amount_minor,
        currency=event.currency,
        amount_as_asked=event.amount_as_asked,
    )
    if new is PaymentState.SUCCEEDED and outcome_mismatch(
        reported, payment.amount_minor, payment.currency
    ):
        text = (
            f"{event.provider} reports {event.amount_minor} {event.currency} paid for payment "
            f"{payment.id} ({payment.reference}); the ledger expects "
            f"{payment.amount_minor} {payment.currency}. Not marked succeeded."
        )
        return _alerting(session, WebhookResult.MISMATCH, payment, text)
    failed = new is PaymentState.FAILED
    fields: dict[str, Any] = {
        "error_code": "declined" if failed else None,
        "error_message": (event.message or "failed at the provider") if failed else None,
    }
    if not apply_transition(session, payment.id, current, new, **fields):
        # Unreachable while the row is locked; answering 409 makes the provider retry.
        return _reply(WebhookResult.IN_PROGRESS, payment, 409, "payment changed meanwhile"), []
    previous = current if late_success else None
    outbox = add_event(session, payment_event(payment, new, previous_status=previous, **fields))
    rows = [outbox]
    if new is PaymentState.SUCCEEDED:
        rows += save_from_success(session, payment, event.saved_method, box)
    if late_success:
        alert = late_success_alert(payment, event.provider)
        log.warning("webhook: %s", alert.text)
        rows.append(add_event(session, alert))
    session.flush()
    log.info("webhook %s: payment %s %s -> %s", event.event_type, payment.id, current, new)
    return _reply(WebhookResult.APPLIED, payment, 200, new.value), [row.id for row in rows]


def _apply_refund(
    session: Session, event: WebhookEvent, payment: Payment
) -> tuple[WebhookReply, list[int]]:
    outcome = event.refund
    assert outcome is not None
    if outcome.currency is not None and outcome.currency != payment.currency:
        text = (
            f"{event.provider} refund {outcome.refund_id} for payment {payment.id} is in "
            f"{outcome.currency}; the payment is in {payment.currency}"
        )
        return _alerting(session, WebhookResult.MISMATCH, payment, text)
    refund = _find_refund(session, payment, outcome.refund_id, outcome.amount_minor)
    if refund is None and outcome.status is RefundStatus.FAILED and outcome.refund_id is None:
        # a refund the provider names no id for, failing after it succeeded
        refund = _find_refund(
            session, payment, None, outcome.amount_minor, (RefundState.SUCCEEDED.value,)
        )
    if refund is None:
        if outcome.status is RefundStatus.FAILED or outcome.amount_minor is None:
            return _reply(WebhookResult.IGNORED, payment, 200, "no such refund"), []
        if outcome.amount_minor > refundable_minor(session, payment):
            text = (
                f"{event.provider} reports a refund of {outcome.amount_minor} for payment "
                f"{payment.id}, more than is left to refund"
            )
            return _alerting(session, WebhookResult.MISMATCH, payment, text)
        # Made outside Tender (the provider's dashboard): record it so the ledger agrees.
        refund = Refund(
            id=uuid.uuid4(),
            payment_id=payment.id,
            amount_minor=outcome.amount_minor,
            status=RefundState.PENDING.value,
            provider_refund_id=outcome.refund_id,
        )
        session.add(refund)
        log.warning("payment %s: refund %s made outside Tender", payment.id, outcome.refund_id)
    elif outcome.amount_minor is not None and outcome.amount_minor != refund.amount_minor:
        text = (
            f"{event.provider} refund {outcome.refund_id} of payment {payment.id} is for "
            f"{outcome.amount_minor}; the ledger recorded {refund.amount_minor}"
        )
        return _alerting(session, WebhookResult.MISMATCH, payment, text)

    if outcome.status is RefundStatus.FAILED and refund.status != RefundState.FAILED.value:
        # open, or succeeded and now reversed by the provider: the truth is at the provider
        if outcome.refund_id and refund.provider_refund_id is None:
            refund.provider_refund_id = outcome.refund_id
        try:
            rows = fail_refund(session, payment, refund, outcome.message)
        except RefundMismatch as exc:
            return _alerting(session, WebhookResult.MISMATCH, payment, str(exc))
        log.info(
            "webhook %s: refund %s of payment %s failed", event.event_type, refund.id, payment.id
        )
        return _reply(WebhookResult.APPLIED, payment, 200, "refund failed"), [r.id for r in rows]
    if refund.status not in OPEN_REFUNDS:
        return _reply(WebhookResult.NO_CHANGE, payment, 200, f"refund already {refund.status}"), []
    if outcome.refund_id and refund.provider_refund_id is None:
        refund.provider_refund_id = outcome.refund_id
    refund.message = outcome.message
    refund.updated_at = utcnow()
    outbox_ids: list[int] = []
    if outcome.status is RefundStatus.SUCCEEDED:
        try:
            outbox = settle_refund(session, payment, refund)
        except RefundMismatch as exc:
            return _alerting(session, WebhookResult.MISMATCH, payment, str(exc))
        if outbox is not None:
            outbox_ids.append(outbox.id)
    else:
        refund.status = RefundState.PENDING.value
    session.flush()
    log.info("webhook %s: refund %s of payment %s", event.event_type, refund.id, payment.id)
    return _reply(WebhookResult.APPLIED, payment, 200, f"refund {refund.status}"), outbox_ids


def _apply_dispute(
    session: Session, event: WebhookEvent, payment: Payment
) -> tuple[WebhookReply, list[int]]:
    assert event.dispute is not None
    if PaymentState(payment.status) in _IN_FLIGHT:
        return _reply(WebhookResult.IN_PROGRESS, payment, 409, "a worker is charging it"), []
    try:
        applied = apply_dispute(session, payment, event.dispute, event.provider)
    except DisputeConflict as exc:
        return _alerting(session, WebhookResult.CONFLICT, payment, str(exc))
    result = WebhookResult.APPLIED if applied.changed else WebhookResult.NO_CHANGE
    log.info("webhook %s: payment %s %s", event.event_type, payment.id, applied.detail)
    return _reply(result, payment, 200, applied.detail), [row.id for row in applied.events]


def _find_refund(
    session: Session,
    payment: Payment,
    refund_id: str | None,
    amount_minor: int | None,
    statuses: tuple[str, ...] = OPEN_REFUNDS,
) -> Refund | None:
    """By the provider's refund id; else an open refund of this payment for that amount:
    one still waiting for the provider's id (its webhook can beat the provider's answer to
    our own refund call), or, when the event names no refund at all (Paystack's refund
    events carry none), any open one, oldest first."""
    unnamed = Refund.provider_refund_id.is_(None)
    if refund_id is not None:
        found = session.execute(
            select(Refund).where(Refund.provider_refund_id == refund_id).with_for_update()
        ).scalar_one_or_none()
        if found is not None:
            return found if found.payment_id == payment.id else None
    return (
        session.execute(
            select(Refund)
            .where(
                Refund.payment_id == payment.id,
                *([unnamed] if refund_id is not None else []),
                Refund.status.in_(statuses),
                Refund.amount_minor == amount_minor,
            )
            .order_by(Refund.created_at)
            .limit(1)
            .with_for_update()
        )
        .scalars()
        .first()
    )


def _reply(
    result: WebhookResult, payment: Payment, http_status: int, detail: str = ""
) -> WebhookReply:
    return WebhookReply(result, http_status, payment.id, detail)


def _alerting(
    session: Session, result: WebhookResult, payment: Payment, text: str
) -> tuple[WebhookReply, list[int]]:
    """Change nothing, log an error and raise an ``alert.raised`` event for operators."""
    log.error("webhook %s: %s", result.value, text)
    alert = add_event(
        session,
        AlertEvent(
            severity="critical",
            title=f"payment webhook {result.value}",
            text=text,
            instance_id=payment.instance_id,
            tenant_id=payment.tenant_id,
        ),
    )
    session.flush()
    return _reply(result, payment, 200, text), [alert.id]
