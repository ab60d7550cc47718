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
    # the customer disputed it with their bank or PayPal; the money is held until it closes
    DISPUTED = "disputed"
    # the dispute closed in the customer's favour: the money went back to them
    CHARGED_BACK = "charged_back"


S = PaymentState

TRANSITIONS: dict[PaymentState, frozenset[PaymentState]] = {
    S.REQUESTED: frozenset({S.PROCESSING}),
    # processing -> processing: a crashed worker's lease expired and another takes over.
    S.PROCESSING: frozenset({S.PROCESSING, S.SUCCEEDED, S.FAILED, S.PENDING, S.UNKNOWN}),
    S.PENDING: frozenset({S.SUCCEEDED, S.FAILED}),
    # unknown -> pending: verification found the customer mid-checkout (e.g. Paystack "ongoing").
    S.UNKNOWN: frozenset({S.SUCCEEDED, S.FAILED, S.PENDING}),
    # -> charged_back directly: a dispute reported lost whose opening Tender never saw
    S.SUCCEEDED: frozenset({S.REFUNDED, S.PARTIALLY_REFUNDED, S.DISPUTED, S.CHARGED_BACK}),
    # back down: a refund the provider reports failed after it had succeeded (Stripe's
    # refund.failed: the money went back to the merchant's balance) is refundable again
    S.PARTIALLY_REFUNDED: frozenset(
        {S.PARTIALLY_REFUNDED, S.REFUNDED, S.SUCCEEDED, S.DISPUTED, S.CHARGED_BACK}
    ),
    # failed -> succeeded: money at the provider is the truth. A success reported after
    # Tender recorded a failure (a checkout it expired, a decline the customer retried
    # past) makes the payment succeeded, with an alert and a payment.succeeded event.
    S.FAILED: frozenset({S.SUCCEEDED}),
    S.REFUNDED: frozenset({S.PARTIALLY_REFUNDED, S.SUCCEEDED, S.DISPUTED, S.CHARGED_BACK}),
    # a dispute closes (workers.payments.disputes): won, back to what its refunds make it;
    # lost, charged back. disputed -> disputed: a refund made before the dispute settles
    # (or fails) during it, or one of two disputes closes.
    S.DISPUTED: frozenset(
        {S.DISPUTED, S.SUCCEEDED, S.PARTIALLY_REFUNDED, S.REFUNDED, S.CHARGED_BACK}
    ),
    # an appeal: reopened (disputed) or won outright (back to what its refunds make it)
    S.CHARGED_BACK: frozenset({S.DISPUTED, S.SUCCEEDED, S.PARTIALLY_REFUNDED, S.REFUNDED}),
}

# Final for billing: no worker, webhook or reconcile moves them again on its own
# initiative (only a provider's report moves them: a late success, a dispute, see above).
FINAL_STATES = frozenset(
    {S.SUCCEEDED, S.FAILED, S.REFUNDED, S.PARTIALLY_REFUNDED, S.DISPUTED, S.CHARGED_BACK}
)

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
    S.DISPUTED: "payment.disputed",
    S.CHARGED_BACK: "payment.dispute_closed",
}


def can_transition(current: PaymentState, new: PaymentState) -> bool:
    return new in TRANSITIONS[current]
