"""Operations on a payment: request it, charge it, refund it, reconcile it, apply webhooks."""
