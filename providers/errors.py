"""Every error a provider plugin may raise, classified by what is safe to do next.

Each plugin translates its SDK's failures onto these at one seam (a table), so
the worker decides retries and fallbacks from the class alone:

=====================  =========================================  ===========================
error                  when                                       safe next step
=====================  =========================================  ===========================
ConfigurationError     bad or rejected keys, invalid config       mark instance ``error``, alert
ProviderUnavailable    provably not charged (refused, 5xx before  try the next instance
                       acceptance, circuit open)
RequestRefused         this request refused for the merchant's    try the next instance, alert;
                       account settings (an amount limit, a       the instance stays on
                       method or permission not enabled)
PaymentDeclined        the customer's money said no               final: fail the payment
OutcomeUnknown         the request was sent, no answer came back  verify with the same provider
=====================  =========================================  ===========================
"""

from __future__ import annotations


class ProviderError(Exception):
    """Base of every provider failure. Messages never contain secrets."""

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        code: str | None = None,
        provider_id: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.code = code
        # The provider's own id for the payment when it gave one before failing (an order
        # created, then its capture declined or its answer lost): the ledger keeps it, so
        # every later verify or refund reads the payment by it.
        self.provider_id = provider_id

    def __str__(self) -> str:
        prefix = f"[{self.provider}] " if self.provider else ""
        suffix = f" ({self.code})" if self.code else ""
        return f"{prefix}{self.message}{suffix}"


class ConfigurationError(ProviderError):
    """The instance's configuration is invalid or its credentials were rejected.

    Safe next: stop routing to the instance (status ``error``) and alert an operator.
    Nothing was charged.
    """


class ProviderUnavailable(ProviderError):
    """The provider could not take the request, and provably did not charge.

    Raised for connection refused, DNS failure, a 5xx returned before acceptance, a rate
    limit, or an open circuit. Safe next: try the next instance in the route.
    ``retry_after_s``: the provider's own hint (a rate limit's Retry-After), when it gave one.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ):
        super().__init__(message, provider=provider, code=code)
        self.retry_after_s = retry_after_s


class RequestRefused(ProviderError):
    """The provider refused this one request because of the merchant account's own
    settings: an amount outside the account's limits, a currency, method or permission
    the account or key does not have. Nothing was charged and the key works.

    Neither a decline (the customer's money was never asked) nor an outage (the provider
    answered): safe next is the next instance in the route, with an alert naming this
    instance and the refusal, for an operator to fix the account or the route.
    """


class PaymentDeclined(ProviderError):
    """The provider processed the request and said no (insufficient funds, bad card...).

    Final for this payment: do not retry elsewhere, fail it with the provider's message.
    """


class OutcomeUnknown(ProviderError):
    """The request was sent but no answer came back (read timeout, dropped connection).

    The customer may or may not have been charged. Safe next: verify with the same
    provider by reference before anything else; never fall through to another one.
    """


class WebhookError(Exception):
    """A webhook Tender will not act on. Nothing is changed."""


class WebhookSignatureError(WebhookError):
    """The signature is missing or does not match the raw body: answer 401."""


class WebhookPayloadError(WebhookError):
    """Correctly signed, but the body is not an event Tender can read: answer 400."""
