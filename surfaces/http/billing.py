"""Billing's routes: request a payment, read it back, refund it, settle a refund by hand.

Amounts are decimal strings in major units (``"1500.50"``); a JSON float is refused.
"""

# No ``from __future__ import annotations``: FastAPI reads the route signatures.
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from providers.money import FloatAmount, MoneyError
from registry.tokens import Scope
from surfaces.http.auth import actor_of, require, tenant_for_body, tenant_of
from surfaces.http.errors import error_responses
from workers.payments.client import (
    IdempotencyConflict,
    InvalidPaymentRequest,
    PaymentNotFound,
    PaymentReceipt,
    PaymentView,
    get_payment,
    request_payment,
)
from workers.payments.methods import (
    PaymentMethodNotFound,
    PaymentMethodView,
    import_payment_method,
    list_payment_methods,
    revoke_payment_method,
)
from workers.payments.refunds import (
    RefundNotFound,
    RefundRefused,
    RefundView,
    list_refunds,
    refund_payment,
    settle_refund_by_operator,
)

# JSON numbers arrive as int or float; floats reach providers.money, which refuses them
# with a message saying to send a string.
Amount = str | int | float


class PaymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order_id: str
    amount: Amount
    currency: str
    customer_email: str
    payment_method: str = "card"
    metadata: dict[str, Any] | None = None
    tenant_id: str | None = None
    idempotency_key: str | None = None
    payment_token: SecretStr | None = Field(
        default=None, description="a saved authorization from the provider"
    )
    save_for_customer: str | None = Field(
        default=None,
        max_length=200,
        description="the customer agreed to save the method they pay with: saved for this "
        "customer reference on success (payment_method.saved)",
    )
    payment_method_id: str | None = Field(
        default=None,
        max_length=40,
        description="a saved payment method (pm_...): charged only by the instance that "
        "issued it, never by another provider",
    )
    # facts routing rules may read (docs/routing.md)
    billing_country: str | None = Field(default=None, max_length=2, description="ISO 3166")
    card_brand: str | None = Field(default=None, max_length=30)
    card_bin: str | None = Field(
        default=None, max_length=8, description="the card's first digits, never the number"
    )


class PaymentMethodImport(BaseModel):
    """A payment method saved outside Tender: the issuing instance's token for it."""

    model_config = ConfigDict(extra="forbid")

    instance_id: str
    token: SecretStr = Field(description="the provider's reusable token (secret)")
    customer_ref: str = Field(min_length=1, max_length=200)
    provider_customer_id: str | None = Field(default=None, max_length=200)
    brand: str | None = Field(default=None, max_length=50)
    last4: str | None = Field(default=None, max_length=4)
    exp_month: int | None = None
    exp_year: int | None = None
    wallet_email: str | None = Field(default=None, max_length=320)


class RefundSettle(BaseModel):
    """An operator's settlement of a refund, after checking it at the provider."""

    model_config = ConfigDict(extra="forbid")

    outcome: Literal["succeeded", "failed"]
    reason: str
    provider_refund_id: str | None = Field(
        default=None, description="the provider's id of the refund; required for succeeded"
    )


class RefundCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: Amount | None = Field(default=None, description="major units; omitted: all left")


def _not_float(amount: Amount) -> str | int:
    if isinstance(amount, float):
        raise FloatAmount(f'amount {amount!r} is a JSON number; send a string such as "{amount}"')
    return amount


@contextmanager
def billing_errors() -> Iterator[None]:
    """Refusals as HTTP answers: unknown payment 404, reused key 409, bad input 422."""
    try:
        yield
    except (PaymentNotFound, RefundNotFound, PaymentMethodNotFound) as exc:
        raise HTTPException(404, str(exc)) from None
    except IdempotencyConflict as exc:
        raise HTTPException(409, str(exc)) from None
    except (InvalidPaymentRequest, RefundRefused, MoneyError) as exc:
        raise HTTPException(422, str(exc)) from None


def billing_router() -> APIRouter:
    router = APIRouter(
        tags=["billing"],
        responses=error_responses(400, 401, 403, 404, 409, 413, 422),
    )

    @router.post("/payments", status_code=201, dependencies=[require(Scope.PAY)])
    def create_payment(body: PaymentCreate, request: Request, response: Response) -> PaymentReceipt:
        tenant = tenant_for_body(request, body.tenant_id)
        with billing_errors():
            receipt = request_payment(
                body.order_id,
                _not_float(body.amount),
                body.currency,
                body.customer_email,
                body.payment_method,
                body.metadata,
                tenant,
                body.idempotency_key,
                payment_token=body.payment_token.get_secret_value() if body.payment_token else None,
                payment_method_id=body.payment_method_id,
                save_for_customer=body.save_for_customer,
                billing_country=body.billing_country,
                card_brand=body.card_brand,
                card_bin=body.card_bin,
            )
        if not receipt.created:
            response.status_code = 200  # the same request again: the first payment
        return receipt

    @router.get("/payments/{payment_id}", dependencies=[require(Scope.READ, Scope.PAY)])
    def read_payment(payment_id: str, request: Request) -> PaymentView:
        with billing_errors():
            return get_payment(payment_id, within_tenant=tenant_of(request))

    @router.post(
        "/payments/{payment_id}/refunds", status_code=201, dependencies=[require(Scope.OPERATE)]
    )
    def create_refund(
        payment_id: str, request: Request, body: RefundCreate | None = None
    ) -> RefundView:
        with billing_errors():
            amount = None if body is None or body.amount is None else _not_float(body.amount)
            return refund_payment(
                payment_id, amount, actor=actor_of(request), within_tenant=tenant_of(request)
            )

    @router.get("/payments/{payment_id}/refunds", dependencies=[require(Scope.READ, Scope.PAY)])
    def read_refunds(payment_id: str, request: Request) -> list[RefundView]:
        with billing_errors():
            return list_refunds(payment_id, within_tenant=tenant_of(request))

    @router.post(
        "/refunds/{refund_id}/settle", tags=["operator"], dependencies=[require(Scope.OPERATE)]
    )
    def settle_refund(refund_id: str, body: RefundSettle, request: Request) -> RefundView:
        """What ``tender refunds settle`` does (see the README's Paystack section)."""
        with billing_errors():
            return settle_refund_by_operator(
                refund_id,
                body.outcome == "succeeded",
                body.reason,
                provider_refund_id=body.provider_refund_id,
                actor=actor_of(request),
                within_tenant=tenant_of(request),
            )

    @router.post(
        "/payment-methods",
        status_code=201,
        tags=["payment methods"],
        dependencies=[require(Scope.PAY, Scope.OPERATE)],
    )
    def import_method(body: PaymentMethodImport, request: Request) -> PaymentMethodView:
        """Save a method issued outside Tender (its issuing instance's token)."""
        with billing_errors():
            return import_payment_method(
                body.instance_id,
                body.token.get_secret_value(),
                body.customer_ref,
                provider_customer_id=body.provider_customer_id,
                brand=body.brand,
                last4=body.last4,
                exp_month=body.exp_month,
                exp_year=body.exp_year,
                wallet_email=body.wallet_email,
                actor=actor_of(request),
                within_tenant=tenant_of(request),
            )

    @router.get(
        "/payment-methods",
        tags=["payment methods"],
        dependencies=[require(Scope.READ, Scope.PAY)],
    )
    def read_methods(request: Request, customer_ref: str | None = None) -> list[PaymentMethodView]:
        """Saved methods (of one customer), masked; a bound token's tenant's only."""
        return list_payment_methods(customer_ref=customer_ref, within_tenant=tenant_of(request))

    @router.delete(
        "/payment-methods/{method_id}",
        tags=["payment methods"],
        dependencies=[require(Scope.PAY, Scope.OPERATE)],
    )
    def revoke_method(method_id: str, request: Request) -> PaymentMethodView:
        """Revoke a method: it is never charged again."""
        with billing_errors():
            return revoke_payment_method(
                method_id, actor=actor_of(request), within_tenant=tenant_of(request)
            )

    return router
