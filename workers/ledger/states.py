"""Payment states and their transitions, declared as data in one place.

``apply_transition`` in :mod:`workers.ledger.records` is the only code that changes a
payment's status, and it refuses anything this table does not list.
"""

from __future__ import annotations

from enum import StrEnum

from providers.base import OutcomeStatus


class PaymentState(StrEnum):
    REQUESTED = "requested"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PENDING = "pending"
    UNKNOWN = "unknown"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"


S = PaymentState

TRANSITIONS: dict[PaymentState, frozenset[PaymentState]] = {
    S.REQUESTED: frozenset({S.PROCESSING}),
    # processing -> processing: a crashed worker's lease expired and another takes over.
    S.PROCESSING: frozenset({S.PROCESSING, S.SUCCEEDED, S.FAILED, S.PENDING, S.UNKNOWN}),
    S.PENDING: frozenset({S.SUCCEEDED, S.FAILED}),
    # unknown -> pending: verification found the customer mid-checkout (e.g. Paystack "ongoing").
    S.UNKNOWN: frozenset({S.SUCCEEDED, S.FAILED, S.PENDING}),
    S.SUCCEEDED: frozenset({S.REFUNDED, S.PARTIALLY_REFUNDED}),
    # back down: a refund the provider reports failed after it had succeeded (Stripe's
    # refund.failed: the money went back to the merchant's balance) is refundable again
    S.PARTIALLY_REFUNDED: frozenset({S.PARTIALLY_REFUNDED, S.REFUNDED, S.SUCCEEDED}),
    # failed -> succeeded: money at the provider is the truth. A success reported after
    # Tender recorded a failure (a checkout it expired, a decline the customer retried
    # past) makes the payment succeeded, with an alert and a payment.succeeded event.
    S.FAILED: frozenset({S.SUCCEEDED}),
    S.REFUNDED: frozenset({S.PARTIALLY_REFUNDED, S.SUCCEEDED}),
}

# Final for billing: no worker, webhook or reconcile moves them again on its own
# initiative (only a provider's late success moves failed, see above).
FINAL_STATES = frozenset({S.SUCCEEDED, S.FAILED, S.REFUNDED, S.PARTIALLY_REFUNDED})

# What a provider's answer means for the payment.
OUTCOME_STATE: dict[OutcomeStatus, PaymentState] = {
    OutcomeStatus.SUCCEEDED: S.SUCCEEDED,
    OutcomeStatus.PENDING: S.PENDING,
    OutcomeStatus.FAILED: S.FAILED,
}

# The result event each state emits.
STATE_EVENT: dict[PaymentState, str] = {
    S.SUCCEEDED: "payment.succeeded",
    S.FAILED: "payment.failed",
    S.PENDING: "payment.pending",
    S.UNKNOWN: "payment.unknown",
    S.REFUNDED: "payment.refunded",
    S.PARTIALLY_REFUNDED: "payment.refunded",
}


def can_transition(current: PaymentState, new: PaymentState) -> bool:
    return new in TRANSITIONS[current]
