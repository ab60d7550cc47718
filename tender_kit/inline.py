"""Tender run inline, for a plugin's end-to-end tests: Tender's own payment processor and
webhook receiver on an embedded database, in the test's thread, with no broker, worker or
server. The plugin is found by its ``tender.providers`` entry point, as a worker finds it.

The ``tender_inline`` fixture (``tender_kit.pytest_plugin``) gives one on a fresh SQLite
database under the test's ``tmp_path``::

    def test_paid_by_callback(tender_inline, my_fake):
        tender_inline.add_instance("mpesa", my_fake.config(), currencies=["KES"])
        payment = tender_inline.pay("INV-1", "500.00", "KES", metadata={...})
        assert payment.status == "pending"
        reply = tender_inline.webhook("mpesa", my_fake.callback(...))
        assert reply.result == "applied"
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, cast

from config.settings import get_settings
from registry.db import get_database
from registry.instances import InstanceView
from workers import runtime
from workers.events.relay import EventPublisher, InlineRelay
from workers.payments.client import PaymentView, _validated, get_payment, record_payment
from workers.payments.processor import PaymentProcessor
from workers.payments.webhooks import WebhookReply, receive_webhook


class InlineTender:
    """One Tender on the current settings' database (the fixture makes a fresh one).
    ``events`` holds every event it published, as ``(event_type, payload)``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        # Tender's code takes any object with ``publish(rows)``; this one keeps them.
        self.publisher = cast(EventPublisher, self)
        self.database = get_database()
        self.processor = PaymentProcessor(
            self.database,
            runtime.registry(),
            runtime.provider_loop(),
            InlineRelay(self.database, self.publisher),
            get_settings(),
        )

    def publish(self, rows: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """The event publisher Tender's code is given: events are kept, not sent."""
        self.events.extend(rows)

    def add_instance(
        self,
        plugin_name: str,
        config: Mapping[str, Any],
        *,
        currencies: list[str],
        tenant_id: str | None = None,
    ) -> InstanceView:
        """An active instance of the plugin, configured as an operator would."""
        return runtime.registry().create_instance(
            plugin_name, config, currencies=currencies, tenant_id=tenant_id, is_active=True
        )

    def record(
        self,
        order_id: str,
        amount: Decimal | str,
        currency: str,
        *,
        customer_email: str = "ada@example.com",
        payment_method: str = "card",
        metadata: dict[str, Any] | None = None,
        tenant_id: str | None = None,
    ) -> uuid.UUID:
        """A payment recorded as billing's request would record it, not yet processed.
        Input is checked as at Tender's boundary (amount, currency, email, metadata)."""
        fields = _validated(
            order_id,
            amount,
            currency,
            customer_email,
            payment_method,
            metadata,
            tenant_id,
            None,
        )
        payment, _ = record_payment(self.database, fields)
        return payment.id

    def process(self, payment_id: uuid.UUID) -> PaymentView:
        """Run the payment's task once, as a worker would (again: a redelivery)."""
        self.processor.process(payment_id)
        return get_payment(payment_id)

    def pay(
        self,
        order_id: str,
        amount: Decimal | str,
        currency: str,
        **request: Any,
    ) -> PaymentView:
        """:meth:`record` then :meth:`process`: where the payment stands after its task."""
        return self.process(self.record(order_id, amount, currency, **request))

    def webhook(
        self, plugin_name: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> WebhookReply:
        """Hand a webhook to what Tender's endpoint calls: authenticated, then applied.
        Raises what the endpoint turns into 401 or 404 (the body-size limit is the
        endpoint's own and is not applied here)."""
        return receive_webhook(plugin_name, body, headers or {}, publisher=self.publisher)

    def payment(self, payment_id: uuid.UUID) -> PaymentView:
        return get_payment(payment_id)
