"""Observability without the services: the payment on every log line, secrets masked in
every record, JSON lines, metrics that count what the processor did with the right labels,
and label sets that stay bounded however many payments pass."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from config.logging import install, log_context, remember_secrets
from config.settings import get_settings
from registry.db import get_database
from workers import runtime
from workers.events.relay import InlineRelay
from workers.payments.client import _validated, record_payment
from workers.payments.processor import PaymentProcessor

CANARY = "sk_canary_observability_0123456789"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger(f"tender.test.{id(stream)}")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def test_a_line_about_a_payment_names_it_and_secrets_never_show(captured: Any) -> None:
    logger, stream = captured
    install(logger.handlers[0], json_lines=False)
    remember_secrets([CANARY])
    with log_context(payment_id="p-1", tenant="acme", reference="tdr-1"):
        logger.info("charging with %s", CANARY)
        try:
            raise RuntimeError(f"provider echoed {CANARY}")
        except RuntimeError:
            logger.exception("it failed")
    logger.info("outside any payment")
    text = stream.getvalue()
    assert CANARY not in text and text.count("****") == 2  # the message, the traceback
    first = text.splitlines()[0]
    assert first.endswith("[payment_id=p-1 tenant=acme reference=tdr-1]")
    assert "outside any payment\n" in text


def test_json_lines_carry_the_payment_as_fields(captured: Any) -> None:
    logger, stream = captured
    install(logger.handlers[0], json_lines=True)
    remember_secrets([CANARY])
    with log_context(payment_id="p-2", tenant=None, reference="tdr-2", instance="Paystack NG"):
        logger.warning("declined; key %s", CANARY)
    line = json.loads(stream.getvalue())
    assert line["payment_id"] == "p-2" and line["instance"] == "Paystack NG"
    assert line["reference"] == "tdr-2" and "tenant" not in line
    assert line["level"] == "WARNING" and CANARY not in json.dumps(line)


class _Quiet:
    def publish(self, rows: Any) -> None:
        pass


def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """This process's metrics, through the Prometheus text format and its parser."""
    samples = {}
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def tender_series(samples: dict[tuple[str, Any], float]) -> set[tuple[str, Any]]:
    return {key for key in samples if key[0].startswith("tender_")}


@pytest.fixture
def processor(sqlite_url: str) -> PaymentProcessor:
    registry = runtime.registry()
    registry.create_instance(
        "sandbox", {"api_key": CANARY}, display_name="Sandbox M", is_active=True
    )
    return PaymentProcessor(
        get_database(), registry, runtime.provider_loop(),
        InlineRelay(get_database(), _Quiet()), get_settings(),  # type: ignore[arg-type]
    )  # fmt: skip


def pay(processor: PaymentProcessor, n: int, email: str = "ada@example.com") -> None:
    fields = _validated(f"o-{n}", "10.00", "NGN", email, "card", None, None, None)
    payment, _ = record_payment(get_database(), fields, box=processor.registry.box)
    processor.process(payment.id)


def test_the_processor_counts_what_it_did_with_bounded_labels(
    processor: PaymentProcessor,
) -> None:
    def value(name: str, **labels: str) -> float:
        return scrape().get((name, tuple(sorted(labels.items()))), 0.0)

    [made] = processor.registry.list_instances()
    assert made.metric_label == f"Sandbox M#{str(made.id)[:8]}"
    where = {"provider": "sandbox", "instance": made.metric_label}
    before_ok = value("tender_payments_finished_total", **where, outcome="succeeded")
    before_no = value("tender_payments_finished_total", **where, outcome="failed")
    before_calls = value(
        "tender_provider_call_seconds_count", provider="sandbox", operation="charge"
    )
    before_routed = value("tender_routing_decisions_total", **where)
    pay(processor, 0)
    pay(processor, 1, "decline-me@example.com")
    assert value("tender_payments_finished_total", **where, outcome="succeeded") == before_ok + 1
    assert value("tender_payments_finished_total", **where, outcome="failed") == before_no + 1
    assert (
        value("tender_provider_call_seconds_count", provider="sandbox", operation="charge")
        == before_calls + 2
    )
    assert value("tender_routing_decisions_total", **where) == before_routed + 2

    # A thousand more payments, each with its own reference: not one new series.
    series = tender_series(scrape())
    for n in range(2, 1002):
        pay(processor, n)
    after = scrape()
    assert tender_series(after) == series
    assert value("tender_payments_finished_total", **where, outcome="succeeded") == before_ok + 1001
    assert not any(CANARY in str(key) for key in after)


def test_two_instances_with_one_name_are_two_series(processor: PaymentProcessor) -> None:
    """Display names are the operator's and need not be unique (issue 36): the instance
    label carries the short id, so two instances called alike never share a series."""
    twin = processor.registry.create_instance(
        "sandbox", {"api_key": CANARY}, display_name="Sandbox M", is_active=True, priority=50
    )
    pay(processor, 90)  # routed to the twin (lower priority number first)
    series = {
        dict(labels).get("instance")
        for name, labels in scrape()
        if name == "tender_payments_finished_total"
    }
    assert twin.metric_label in series
    assert "Sandbox M" not in series
