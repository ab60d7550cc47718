"""Flutterwave beside Paystack, through a real worker: a standby that takes over only when
Paystack provably did not charge, and a 50/50 A/B split that keeps each idempotency key on
one provider. Nothing is lost or charged twice."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from typer.testing import CliRunner

from surfaces.cli.main import app as cli
from tests.fakes.flutterwave.server import FakeFlutterwave
from tests.fakes.paystack import FakePaystack
from tests.integration.test_paystack_e2e import paystack_instance, wait_status
from workers import runtime
from workers.payments.client import request_payment

pytestmark = pytest.mark.integration


@pytest.fixture
def fake_flutterwave() -> Iterator[FakeFlutterwave]:
    with FakeFlutterwave() as fake:
        yield fake


def flutterwave_config(fake: FakeFlutterwave) -> dict[str, Any]:
    return {
        "secret_key": fake.secret_key,
        "secret_hash": fake.secret_hash,
        "base_url": fake.base_url,
        "timeout_s": 3,
    }


def pay(tenant: str, key: str | None = None) -> Any:
    order = f"ord-{key}" if key else f"ord-{uuid.uuid4().hex[:8]}"
    return request_payment(
        order, Decimal("2500.00"), "NGN", "ada@example.com", tenant_id=tenant, idempotency_key=key
    )


def test_cli_adds_flutterwave_with_its_secrets_masked(
    worker: Any, tenant: str, fake_flutterwave: FakeFlutterwave
) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "plugins", "add", "flutterwave", "--tenant", tenant, "--currency", "NGN",
            "-c", f"secret_key={fake_flutterwave.secret_key}",
            "-c", f"secret_hash={fake_flutterwave.secret_hash}",
            "-c", f"base_url={fake_flutterwave.base_url}",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert fake_flutterwave.secret_key not in result.output
    assert fake_flutterwave.secret_hash not in result.output


def test_paystack_down_falls_back_to_flutterwave_only_when_provably_not_charged(
    worker: Any, tenant: str, fake_flutterwave: FakeFlutterwave
) -> None:
    with FakePaystack() as fake_paystack:
        paystack_instance(fake_paystack, tenant, name="paystack-primary")
        runtime.registry().create_instance(
            "flutterwave", flutterwave_config(fake_flutterwave), tenant_id=tenant,
            priority=200, is_active=True,
        )  # fmt: skip
        first = wait_status(pay(tenant).payment_id, "pending")
        assert first.provider == "paystack"

        fake_paystack.fault = "5xx"  # after sending: maybe charged -> never fall through
        ambiguous = wait_status(pay(tenant).payment_id, "unknown", "pending", "failed")
        assert ambiguous.provider == "paystack"
        assert fake_flutterwave.charges_count(ambiguous.provider_reference) == 0
        assert ambiguous.provider_reference not in fake_flutterwave.references()

    # Paystack is gone (connection refused): provably not charged -> Flutterwave
    moved = wait_status(pay(tenant).payment_id, "pending")
    assert moved.provider == "flutterwave"
    assert [a.outcome for a in moved.attempts][:1] == ["unavailable"]


def test_an_ab_split_between_paystack_and_flutterwave_is_sticky_per_key(
    worker: Any, tenant: str, fake_flutterwave: FakeFlutterwave
) -> None:
    with FakePaystack() as fake_paystack:
        registry = runtime.registry()
        paystack_instance(fake_paystack, tenant, name="paystack-a")
        registry.create_instance(
            "flutterwave", flutterwave_config(fake_flutterwave), tenant_id=tenant,
            priority=100, weight=1, is_active=True,
        )  # fmt: skip
        keys = [f"cart-{n}" for n in range(24)]
        views = [wait_status(pay(tenant, key).payment_id, "pending") for key in keys]
        by_provider = {v.provider for v in views}
        assert by_provider == {"paystack", "flutterwave"}  # both sides of the split serve
        again = [wait_status(pay(tenant, key).payment_id, "pending") for key in keys]
        assert [v.id for v in again] == [v.id for v in views]  # same key, same payment
        paystack_refs = {r for v in views if fake_paystack.charges_count(r := v.provider_reference)}
        flutterwave_refs = fake_flutterwave.references()
        assert not paystack_refs & flutterwave_refs  # no payment reached both
        assert len(paystack_refs | (flutterwave_refs & {v.provider_reference for v in views})) == 24
        # each payment went where the routing function sends its key (checkouts split;
        # saved cards belong to one provider's account and are not split)
        chosen = {
            key: registry.resolve(tenant_id=tenant, currency="NGN", idempotency_key=key)[0]
            for key in keys
        }
        assert [v.provider for v in views] == [chosen[key].plugin_name for key in keys]
