"""The fake Paystack is faithful: its answers validate against pypaystack2's own response
models, called through the real SDK, and its rules (auth, unique references, refund
limits, faults, signed webhooks) behave as Paystack's do."""

# ruff: noqa: F811 - tests take the imported ``fake_paystack`` fixture as an argument

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Coroutine, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx
import pytest
from pypaystack2 import AsyncPaystackClient
from pypaystack2.base_clients import AbstractAPIClient
from pypaystack2.enums import Country, Currency
from pypaystack2.exceptions import ClientNetworkError
from pypaystack2.models import Bank, InitTransaction, Refund, Response, Transaction

from providers.base import OutcomeStatus
from providers.paystack import PaystackProvider
from tests.fakes.paystack import (
    DECLINED_AUTHORIZATION,
    GOOD_AUTHORIZATION,
    FakePaystack,
    sign,
)
from tests.fakes.paystack.fixtures import fake_paystack  # noqa: F401

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def sdk(fake: FakePaystack, secret_key: str | None = None) -> AsyncPaystackClient:
    client = AsyncPaystackClient(secret_key=secret_key or fake.secret_key)
    for api_client in (client, *vars(client).values()):
        if isinstance(api_client, AbstractAPIClient):
            api_client._BASE_URL = fake.base_url
    return client


@pytest.fixture
def sdk_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """pypaystack2 logs a warning whenever a body fails its models; there must be none."""
    caplog.set_level(logging.WARNING, logger="pypaystack2")
    yield caplog
    assert [r for r in caplog.records if r.name.startswith("pypaystack2")] == []


def test_every_answer_validates_against_the_sdk_models(
    fake_paystack: FakePaystack, sdk_warnings: pytest.LogCaptureFixture
) -> None:
    client = sdk(fake_paystack)

    async def scenario() -> None:
        init: Response[Any] = await client.transactions.initialize(
            amount=10_000, email="a@example.com", currency=Currency.GHS, reference="ref-init"
        )
        assert init.status and isinstance(init.data, InitTransaction)
        assert init.data.reference == "ref-init"

        abandoned: Response[Any] = await client.transactions.verify("ref-init")
        assert isinstance(abandoned.data, Transaction)
        assert abandoned.data.status == "abandoned" and abandoned.data.currency == "GHS"

        charge: Response[Any] = await client.transactions.charge(
            amount=25_000, email="a@example.com", auth_code=GOOD_AUTHORIZATION, reference="ref-c"
        )
        assert charge.message == "Charge attempted"
        assert isinstance(charge.data, Transaction) and charge.data.status == "success"

        declined: Response[Any] = await client.transactions.charge(
            amount=25_000, email="a@example.com", auth_code=DECLINED_AUTHORIZATION
        )
        assert isinstance(declined.data, Transaction)
        assert declined.data.status == "failed"
        assert declined.data.gateway_response == "Insufficient Funds"

        paid: Response[Any] = await client.transactions.verify("ref-c")
        assert isinstance(paid.data, Transaction) and paid.data.paid_at is not None

        listed: Response[Any] = await client.transactions.get_transactions(pagination=2)
        assert isinstance(listed.data, list) and len(listed.data) == 2
        assert all(isinstance(tx, Transaction) for tx in listed.data)
        assert listed.meta and listed.meta["perPage"] == 2 and listed.meta["total"] == 3

        refund: Response[Any] = await client.refunds.create(transaction="ref-c", amount=5_000)
        assert isinstance(refund.data, Refund)
        assert refund.data.status == "pending" and refund.data.amount == 5_000

        banks: Response[Any] = await client.miscellaneous.get_banks(country=Country.GHANA)
        assert isinstance(banks.data, list) and len(banks.data) == 2
        assert all(isinstance(bank, Bank) and bank.currency == "GHS" for bank in banks.data)

    run(scenario())


def test_wrong_or_missing_key_is_401_invalid_key(fake_paystack: FakePaystack) -> None:
    answer = run(sdk(fake_paystack, "sk_test_wrong").transactions.verify("x"))

    assert answer.status_code == 401
    assert answer.raw == {
        "status": False,
        "message": "Invalid key",
        "meta": {
            "nextStep": "Ensure that you provide the correct authorization key for the request"
        },
        "type": "validation_error",
        "code": "invalid_Key",
    }
    bare = httpx.get(f"{fake_paystack.base_url}/bank")
    assert bare.status_code == 401 and bare.json()["message"] == "Invalid key"


def test_duplicate_reference_is_refused_and_charges_nothing(fake_paystack: FakePaystack) -> None:
    client = sdk(fake_paystack)

    async def scenario() -> list[Any]:
        return [
            await client.transactions.initialize(amount=100, email="a@b.co", reference="dup-1"),
            await client.transactions.initialize(amount=100, email="a@b.co", reference="dup-1"),
            await client.transactions.charge(
                amount=100, email="a@b.co", auth_code=GOOD_AUTHORIZATION, reference="dup-1"
            ),
        ]

    first, *repeats = run(scenario())

    assert first.status
    for answer in repeats:
        assert answer.status_code == 400 and answer.status is False
        assert answer.message == "Duplicate Transaction Reference"
        assert answer.code == "duplicate_reference" and answer.type == "validation_error"
    assert fake_paystack.charges_count("dup-1") == 1
    assert fake_paystack.charges_count("never") == 0


def test_reference_characters_are_checked(fake_paystack: FakePaystack) -> None:
    answer = run(
        sdk(fake_paystack).transactions.initialize(amount=100, email="a@b.co", reference="a/b c")
    )

    assert answer.status_code == 400 and answer.code == "invalid_reference"


def test_unknown_reference_verifies_as_not_found(fake_paystack: FakePaystack) -> None:
    answer = run(sdk(fake_paystack).transactions.verify("nothing-here"))

    assert answer.status_code == 400
    assert answer.message == "Transaction reference not found"
    assert answer.code == "transaction_not_found"


@pytest.mark.parametrize(
    "status", ["success", "failed", "abandoned", "ongoing", "pending", "reversed"]
)
def test_tests_can_set_transaction_status(fake_paystack: FakePaystack, status: str) -> None:
    client = sdk(fake_paystack)
    run(client.transactions.initialize(amount=100, email="a@b.co", reference="st-1"))

    fake_paystack.set_status("st-1", status)
    answer = run(client.transactions.verify("st-1"))

    assert isinstance(answer.data, Transaction) and answer.data.status == status


def test_unknown_status_is_refused(fake_paystack: FakePaystack) -> None:
    with pytest.raises(ValueError, match="unknown Paystack status"):
        fake_paystack.set_status("st-1", "paid")


def test_refunds_never_exceed_the_charge(fake_paystack: FakePaystack) -> None:
    client = sdk(fake_paystack)

    async def scenario() -> list[Any]:
        await client.transactions.charge(
            amount=1_000, email="a@b.co", auth_code=GOOD_AUTHORIZATION, reference="rf-1"
        )
        await client.transactions.initialize(amount=1_000, email="a@b.co", reference="rf-unpaid")
        return [
            await client.refunds.create(transaction="rf-1", amount=600),
            await client.refunds.create(transaction="rf-1", amount=401),
            await client.refunds.create(transaction="rf-1"),
            await client.refunds.create(transaction="rf-1"),
            await client.refunds.create(transaction="rf-unpaid"),
            await client.refunds.create(transaction="rf-missing"),
        ]

    partial, too_much, rest, after_full, unpaid, missing = run(scenario())

    assert partial.status and partial.data.amount == 600
    assert too_much.status_code == 400 and "cannot be more than" in too_much.message
    assert rest.status and rest.data.amount == 400
    assert (
        after_full.status_code == 400
        and after_full.message == "Transaction has been fully reversed"
    )
    assert unpaid.status_code == 400
    assert missing.status_code == 404
    assert fake_paystack.refunded_minor("rf-1") == 1_000


def test_fault_5xx_answers_paystack_error_body(fake_paystack: FakePaystack) -> None:
    fake_paystack.fault = "5xx"

    answer = run(sdk(fake_paystack).transactions.verify("x"))

    assert answer.status_code == 500 and answer.status is False
    assert answer.type == "api_error"


def test_fault_html_is_a_page_the_sdk_cannot_read(fake_paystack: FakePaystack) -> None:
    fake_paystack.fault = "html"

    answer = run(sdk(fake_paystack).transactions.verify("x"))

    assert answer.status_code == 502 and answer.status is False
    assert isinstance(answer.raw, bytes) and answer.raw.startswith(b"<!DOCTYPE html>")


def test_fault_drop_processes_then_closes_without_answer(fake_paystack: FakePaystack) -> None:
    fake_paystack.fault = "drop"

    with pytest.raises(ClientNetworkError) as caught:
        run(
            sdk(fake_paystack).transactions.charge(
                amount=100, email="a@b.co", auth_code=GOOD_AUTHORIZATION, reference="drop-1"
            )
        )

    assert isinstance(caught.value.original_exception, httpx.RemoteProtocolError)
    assert fake_paystack.charges_count("drop-1") == 1


def test_fault_slow_processes_then_holds_the_answer(fake_paystack: FakePaystack) -> None:
    fake_paystack.fault = "slow"
    fake_paystack.slow_s = 0.6
    client = sdk(fake_paystack)

    with pytest.raises(TimeoutError):
        run(asyncio.wait_for(client.transactions.verify("x"), timeout=0.2))
    started = time.perf_counter()
    answer = run(client.transactions.initialize(amount=1, email="a@b.co", reference="slow-1"))

    assert answer.status and time.perf_counter() - started >= 0.6
    assert fake_paystack.charges_count("slow-1") == 1


def test_stop_does_not_wait_for_a_held_answer() -> None:
    fake = FakePaystack(slow_s=30).start()
    fake.fault = "slow"
    client = sdk(fake)
    with pytest.raises(TimeoutError):
        run(asyncio.wait_for(client.transactions.verify("x"), timeout=0.2))

    started = time.perf_counter()
    fake.stop()

    assert time.perf_counter() - started < 15  # the held answer would take 30 s


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[bytes, dict[str, str]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((body, {k.lower(): v for k, v in self.headers.items()}))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_send_webhook_posts_a_body_the_provider_accepts(fake_paystack: FakePaystack) -> None:
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    _Receiver.received.clear()
    try:
        client = sdk(fake_paystack)
        run(
            client.transactions.charge(
                amount=700, email="a@b.co", auth_code=GOOD_AUTHORIZATION, reference="wh-1"
            )
        )
        url = f"http://127.0.0.1:{receiver.server_address[1]}/webhooks/paystack"
        status = fake_paystack.send_webhook(
            url, "charge.success", fake_paystack.event_data("charge.success", "wh-1")
        )
    finally:
        receiver.shutdown()
        receiver.server_close()

    assert status == 200
    ((body, headers),) = _Receiver.received
    assert headers["x-paystack-signature"] == sign(fake_paystack.secret_key, body)
    assert json.loads(body)["data"]["reference"] == "wh-1"
    provider = PaystackProvider()
    provider.configure(
        {"secret_key": fake_paystack.secret_key, "public_key": fake_paystack.public_key}
    )
    event = run(provider.parse_webhook(body, headers))
    assert event.status is OutcomeStatus.SUCCEEDED and event.amount_minor == 700
