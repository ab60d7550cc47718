"""The provider contract: request/outcome models, the error taxonomy, references, configs."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import Field, SecretStr, ValidationError

from providers.base import (
    REFERENCE_PATTERN,
    HealthCheck,
    HealthStatus,
    OutcomeStatus,
    PaymentOutcome,
    PaymentProvider,
    PaymentRequest,
    ProviderConfig,
    RefundOutcome,
    RefundStatus,
    WebhookEvent,
    derive_reference,
)
from providers.errors import (
    ConfigurationError,
    OutcomeUnknown,
    PaymentDeclined,
    ProviderError,
    ProviderUnavailable,
    WebhookError,
    WebhookPayloadError,
    WebhookSignatureError,
)

# Paystack: "Only -, ., = and alphanumeric characters allowed."
PAYSTACK_REFERENCE = re.compile(r"^[A-Za-z0-9.=\-]+$")
LEAK = "sk_live_DO_NOT_LEAK_9f3a"


def request_fields(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "payment_id": uuid.uuid4(),
        "reference": derive_reference("order-1"),
        "order_id": "order-1",
        "amount_minor": 150_000,
        "currency": "NGN",
        "customer_email": "ada@example.com",
    }
    fields.update(overrides)
    return fields


# -- PaymentRequest ------------------------------------------------------------------


def test_payment_request_accepts_a_valid_charge() -> None:
    request = PaymentRequest(**request_fields(metadata={"cart": "c-1", "items": 3}))
    assert request.amount_minor == 150_000
    assert request.currency == "NGN"
    assert request.payment_method == "card"
    assert request.metadata == {"cart": "c-1", "items": 3}


@pytest.mark.parametrize("currency", ["ngn", "XXX", "NG", "", "Naira"])
def test_payment_request_rejects_an_unknown_currency(currency: str) -> None:
    with pytest.raises(ValidationError, match="currency"):
        PaymentRequest(**request_fields(currency=currency))


@pytest.mark.parametrize("email", ["not-an-email", "ada@", "@example.com", "", "ada example.com"])
def test_payment_request_rejects_a_bad_email(email: str) -> None:
    with pytest.raises(ValidationError, match="customer_email"):
        PaymentRequest(**request_fields(customer_email=email))


@pytest.mark.parametrize("reference", ["", "has space", "slash/ref", "x" * 101, "ref#1", "ñ"])
def test_payment_request_rejects_a_reference_providers_refuse(reference: str) -> None:
    with pytest.raises(ValidationError, match="reference"):
        PaymentRequest(**request_fields(reference=reference))


@pytest.mark.parametrize("amount", [0, -1, 1.5, 10.0, True, "100", None, 2**63])
def test_payment_request_rejects_a_bad_amount(amount: object) -> None:
    with pytest.raises(ValidationError, match="amount_minor"):
        PaymentRequest(**request_fields(amount_minor=amount))


def test_payment_request_rejects_unknown_fields_and_is_immutable() -> None:
    with pytest.raises(ValidationError, match="amount"):
        PaymentRequest(**request_fields(amount="1500.00"))
    request = PaymentRequest(**request_fields())
    with pytest.raises(ValidationError):
        request.amount_minor = 1  # type: ignore[misc]


def test_payment_request_hides_a_saved_card_token() -> None:
    request = PaymentRequest(**request_fields(payment_token=LEAK))
    assert request.payment_token is not None
    assert request.payment_token.get_secret_value() == LEAK
    assert LEAK not in repr(request)
    assert LEAK not in str(request)
    assert LEAK not in request.model_dump_json()


def test_payment_request_survives_json() -> None:
    request = PaymentRequest(**request_fields())
    assert PaymentRequest.model_validate_json(request.model_dump_json()) == request


# -- outcomes ------------------------------------------------------------------------


def test_payment_outcome_status_is_one_of_the_contract_states() -> None:
    outcome = PaymentOutcome(status="pending", reference="r-1", authorization_url="https://x")
    assert outcome.status is OutcomeStatus.PENDING
    with pytest.raises(ValidationError):
        PaymentOutcome(status="maybe", reference="r-1")
    assert {s.value for s in OutcomeStatus} == {"succeeded", "pending", "failed", "not_found"}


def test_refund_outcome_status_is_one_of_the_refund_states() -> None:
    refund = RefundOutcome(status="succeeded", reference="r-1", amount_minor=500, currency="NGN")
    assert refund.status is RefundStatus.SUCCEEDED
    with pytest.raises(ValidationError):
        RefundOutcome(status="not_found", reference="r-1")


def test_health_check_has_a_status_a_latency_and_an_aware_timestamp() -> None:
    check = HealthCheck(status="degraded", message="slow", latency_ms=812.5)
    assert check.status is HealthStatus.DEGRADED
    assert check.checked_at.tzinfo is UTC
    with pytest.raises(ValidationError, match="latency_ms"):
        HealthCheck(status="healthy", latency_ms=-1)
    with pytest.raises(ValidationError, match="status"):
        HealthCheck(status="fine", latency_ms=1)


def test_webhook_event_carries_a_stable_event_id_and_an_optional_refund() -> None:
    event = WebhookEvent(
        provider="sandbox",
        event_id="evt-1",
        event_type="refund.processed",
        reference="r-1",
        refund=RefundOutcome(status="succeeded", reference="r-1", amount_minor=100),
    )
    assert WebhookEvent.model_validate_json(event.model_dump_json()) == event
    with pytest.raises(ValidationError, match="event_id"):
        WebhookEvent(provider="sandbox", event_type="charge.success")  # type: ignore[call-arg]


# -- errors --------------------------------------------------------------------------

PROVIDER_ERRORS = [ConfigurationError, ProviderUnavailable, PaymentDeclined, OutcomeUnknown]


@pytest.mark.parametrize("error", PROVIDER_ERRORS)
def test_every_provider_failure_is_a_provider_error(error: type[ProviderError]) -> None:
    assert issubclass(error, ProviderError)
    # Disjoint: the worker decides what is safe next from the class alone.
    for other in PROVIDER_ERRORS:
        if other is not error:
            assert not issubclass(error, other)


def test_webhook_errors_are_not_provider_errors() -> None:
    assert issubclass(WebhookSignatureError, WebhookError)
    assert issubclass(WebhookPayloadError, WebhookError)
    assert not issubclass(WebhookSignatureError, WebhookPayloadError)
    assert not issubclass(WebhookError, ProviderError)


def test_provider_error_names_provider_and_code() -> None:
    error = PaymentDeclined("Insufficient funds", provider="paystack", code="51")
    assert str(error) == "[paystack] Insufficient funds (51)"
    assert (error.message, error.provider, error.code) == ("Insufficient funds", "paystack", "51")
    assert str(OutcomeUnknown("read timeout")) == "read timeout"


# -- references ----------------------------------------------------------------------


def test_derive_reference_is_deterministic() -> None:
    assert derive_reference("order-1:attempt") == derive_reference("order-1:attempt")
    assert derive_reference("k", "tenant-a") == derive_reference("k", "tenant-a")


def test_derive_reference_differs_per_key_and_per_tenant() -> None:
    assert derive_reference("order-1") != derive_reference("order-2")
    assert derive_reference("order-1", "tenant-a") != derive_reference("order-1", "tenant-b")
    assert derive_reference("order-1", "tenant-a") != derive_reference("order-1")


@given(st.text(), st.none() | st.text(min_size=1))
def test_derived_references_match_the_paystack_charset(key: str, tenant: str | None) -> None:
    reference = derive_reference(key, tenant)
    assert PAYSTACK_REFERENCE.fullmatch(reference)
    assert re.fullmatch(REFERENCE_PATTERN, reference)
    assert reference == derive_reference(key, tenant)


# -- plugin configs ------------------------------------------------------------------


class AcmeConfig(ProviderConfig):
    secret_key: SecretStr = Field(min_length=12)
    webhook_secret: SecretStr | None = None
    public_key: str
    timeout_s: float = 10.0


class AcmeProvider(PaymentProvider):
    name: ClassVar[str] = "acme"
    display_name: ClassVar[str] = "Acme Pay"
    supported_currencies: ClassVar[frozenset[str]] = frozenset({"NGN", "GHS"})
    config_model: ClassVar[type[ProviderConfig]] = AcmeConfig

    async def process_payment(self, request: PaymentRequest) -> PaymentOutcome:
        raise NotImplementedError

    async def verify_payment(
        self, reference: str, *, provider_id: str | None = None
    ) -> PaymentOutcome:
        raise NotImplementedError

    async def refund(
        self,
        reference: str,
        amount_minor: int | None = None,
        *,
        refund_key: str | None = None,
        provider_id: str | None = None,
        currency: str | None = None,
    ) -> RefundOutcome:
        raise NotImplementedError

    async def health_check(self) -> HealthCheck:
        raise NotImplementedError

    async def parse_webhook(self, raw_body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        raise NotImplementedError


def test_secret_fields_come_from_secretstr_annotations() -> None:
    assert AcmeConfig.secret_fields() == {"secret_key", "webhook_secret"}
    assert ProviderConfig.secret_fields() == frozenset()


def test_validate_config_names_the_missing_field() -> None:
    with pytest.raises(ConfigurationError, match=r"config\.public_key") as caught:
        AcmeProvider.validate_config({"secret_key": LEAK})
    assert caught.value.provider == "acme"
    assert LEAK not in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"secret_key": "short", "public_key": "pk"}, "secret_key"),
        ({"secret_key": LEAK, "public_key": "pk", "timeout_s": LEAK}, "timeout_s"),
        ({"secret_key": LEAK, "public_key": "pk", "typo": LEAK}, "typo"),
        ({"secret_key": 12345678901234, "public_key": "pk"}, "secret_key"),
    ],
)
def test_validate_config_names_the_field_and_never_the_value(
    raw: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        AcmeProvider.validate_config(raw)
    message = str(caught.value)
    assert f"config.{field}" in message
    assert LEAK not in message
    assert "short" not in message
    assert "12345678901234" not in message
    # Nor anywhere a traceback would print it.
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_configure_applies_a_valid_config_and_masks_it_in_repr() -> None:
    plugin = AcmeProvider()
    with pytest.raises(ConfigurationError, match="before configure"):
        _ = plugin.config
    plugin.configure({"secret_key": LEAK, "public_key": "pk_test"})
    assert isinstance(plugin.config, AcmeConfig)
    assert plugin.config.secret_key.get_secret_value() == LEAK
    assert LEAK not in repr(plugin) + repr(plugin.config) + str(plugin.config)


def test_a_plugin_declares_the_currencies_it_supports() -> None:
    assert AcmeProvider.supports("NGN")
    assert not AcmeProvider.supports("USD")
    assert AcmeProvider.provider_type == "payment"


def test_a_plugin_must_implement_the_whole_contract() -> None:
    class HalfProvider(PaymentProvider):
        name = "half"

        async def process_payment(self, request: PaymentRequest) -> PaymentOutcome:
            raise NotImplementedError

    with pytest.raises(TypeError, match="abstract"):
        HalfProvider()  # type: ignore[abstract]
