"""Reconcile on the embedded database: open payments resolve once, and payments that stay
pending cannot starve the rest."""

from __future__ import annotations

import time
from typing import Any

import pytest

from config.settings import get_settings, reset_settings
from providers.base import OutcomeStatus
from registry.db import get_database
from workers import reconcile as reconcile_module
from workers import runtime
from workers.client import _validated, get_payment, record_payment
from workers.relay import EventPublisher
from workers.tasks import processor


class Recording(EventPublisher):
    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    def publish(self, rows: Any) -> None:
        self.published.extend(rows)


@pytest.fixture
def fast_reconcile(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENDER_RECONCILE_AGE_S", "0.05")
    reset_settings()


def pending_payment(order_id: str) -> Any:
    fields = _validated(
        order_id, "10.00", "NGN", "ada@example.com", "bank_transfer", None, None, None
    )
    payment, _ = record_payment(get_database(), fields)
    processor().process(payment.id)  # the sandbox answers pending for bank transfers
    assert get_payment(payment.id).status == "pending"
    return payment.id


def run(publisher: Recording) -> reconcile_module.ReconcileReport:
    time.sleep(0.1)  # older than the reconcile age
    return reconcile_module.reconcile(
        get_database(),
        runtime.registry(),
        runtime.provider_loop(),
        publisher,
        get_settings(),
        lambda payment_id: True,
    )


def test_still_pending_payments_rotate_so_none_starves(
    fast_reconcile, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    runtime.registry().create_instance(
        "sandbox", {"charge_book": str(tmp_path / "b.db")}, is_active=True
    )
    ids = [pending_payment(f"o-{i}") for i in range(3)]
    monkeypatch.setattr(reconcile_module, "BATCH", 2)
    first = run(Recording())
    second = run(Recording())
    assert set(first.still_open) | set(second.still_open) == set(ids)


def test_pending_payment_resolves_once_with_one_event(fast_reconcile, tmp_path) -> None:  # type: ignore[no-untyped-def]
    instance = runtime.registry().create_instance(
        "sandbox", {"charge_book": str(tmp_path / "b.db")}, is_active=True
    )
    payment_id = pending_payment("o-9")
    plugin = runtime.registry().plugin_for(instance)
    plugin.settle(get_payment(payment_id).provider_reference, OutcomeStatus.SUCCEEDED)  # type: ignore[attr-defined]
    publisher = Recording()
    assert run(publisher).resolved == {payment_id: "succeeded"}
    assert run(publisher).resolved == {}
    assert [t for t, _ in publisher.published] == ["payment.succeeded"]
    assert get_payment(payment_id).status == "succeeded"
