"""Provider text never carries a key, whole or in part (issue 21, finding 6)."""

# ruff: noqa: F811 - tests take the imported ``fake_paystack`` fixture as an argument

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from config.settings import get_settings
from providers.redaction import MAX_MESSAGE_CHARS, redact, sanitize
from registry.db import get_database
from tests.fakes.paystack.fixtures import fake_paystack  # noqa: F401
from tests.fakes.paystack.server import GOOD_AUTHORIZATION, FakePaystack
from workers import runtime
from workers.events.relay import InlineRelay
from workers.monitoring.health import health_check_all
from workers.payments.client import _validated, get_payment, record_payment
from workers.payments.processor import PaymentProcessor

KEY = "sk_live_9f8e7d6c5b4a39281706f5e4d3c2b1a0"


def test_a_quoted_piece_of_a_key_is_masked_with_or_without_its_prefix() -> None:
    assert redact(f"key {KEY[8:20]} refused", [KEY]) == "key *** refused"
    assert redact(f"key ...{KEY[-9:]}", [KEY]) == "key ...***"
    assert redact(f"{KEY[3:30]} and {KEY[10:25]}", [KEY]) == "*** and ***"


def test_runs_shorter_than_eight_characters_and_other_text_stay() -> None:
    assert redact(f"code {KEY[8:15]} and ok", [KEY]) == f"code {KEY[8:15]} and ok"
    assert redact("nothing secret here", [KEY, "short"]) == "nothing secret here"


@given(st.text(min_size=8, max_size=40), st.integers(0, 40), st.integers(8, 40))
def test_no_run_of_eight_or_more_secret_characters_survives(
    secret: str, start: int, length: int
) -> None:
    piece = secret[start : start + length]
    out = redact(f"before {piece} after", [secret])
    for i in range(len(secret) - 7):
        assert secret[i : i + 8] not in out


def test_sanitize_collapses_control_characters_and_bounds_the_length() -> None:
    assert sanitize("line one\r\nline\x00two\x1b[31m") == "line one line two [31m"
    assert len(sanitize("x" * 5000)) == MAX_MESSAGE_CHARS


def test_a_provider_echoing_part_of_its_key_reaches_no_row_event_or_log(
    sqlite_url: str, fake_paystack: FakePaystack, caplog: pytest.LogCaptureFixture
) -> None:
    """The canary: the fake quotes 20 characters of the secret key (without "sk_test_")
    in its refusal. Nothing Tender stores, publishes or logs may contain 8 of them."""
    caplog.set_level(logging.DEBUG)
    registry = runtime.registry()
    registry.create_instance(
        "paystack",
        {
            "secret_key": fake_paystack.secret_key,
            "public_key": fake_paystack.public_key,
            "base_url": fake_paystack.base_url,
        },
        is_active=True,
    )
    published: list[object] = []

    class Publisher:
        def publish(self, rows: list[object]) -> None:
            published.extend(rows)

    fake_paystack.fault = "echo_key"
    relay = InlineRelay(get_database(), Publisher())  # type: ignore[arg-type]
    processor = PaymentProcessor(
        get_database(), registry, runtime.provider_loop(), relay, get_settings()
    )
    fields = _validated("ord-canary", "10.00", "NGN", "ada@example.com", "card", None, None, None)
    payment, _ = record_payment(
        get_database(), fields, payment_token=GOOD_AUTHORIZATION, box=registry.box
    )
    processor.process(payment.id)
    health_check_all(force=True)

    view = get_payment(payment.id)
    assert view.status == "failed" and view.error  # the refusal itself arrived
    with get_database().engine.connect() as connection:
        rows = [
            str(row)
            for table in ("payments", "payment_attempts", "outbox", "plugin_health")
            for row in connection.execute(text(f"SELECT * FROM {table}"))
        ]
        rows += [str(r) for r in connection.execute(text("SELECT * FROM plugin_instances"))]
    everything = "\n".join([*rows, str(published), caplog.text, view.model_dump_json()])
    secret = fake_paystack.secret_key
    leaked = [secret[i : i + 8] for i in range(len(secret) - 7) if secret[i : i + 8] in everything]
    assert leaked == []
    assert "merchant_disabled" in everything  # the provider's code is kept
