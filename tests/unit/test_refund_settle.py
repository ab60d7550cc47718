"""Refunds no answer will come for: reconcile alerts on a refund left ``requested`` by a
caller that stopped mid-call, and an operator settles it by hand (``tender refunds
settle``), after checking it at the provider."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from config.settings import reset_settings
from registry.db import get_database
from surfaces.cli.main import app as cli
from tests.unit.test_reconcile import Recording
from tests.unit.test_reconcile import run as run_reconcile
from workers import runtime
from workers.ledger.records import Refund
from workers.payments.client import _validated, get_payment, record_payment
from workers.payments.refunds import (
    RefundRefused,
    _reserve,
    list_refunds,
    settle_refund_by_operator,
)
from workers.tasks import processor


@pytest.fixture
def stuck(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A succeeded 10.00 NGN payment with a 4.00 refund reserved whose call never
    answered (the process stopped between reserving and recording)."""
    monkeypatch.setenv("TENDER_RECONCILE_AGE_S", "0.05")
    reset_settings()
    runtime.registry().create_instance(
        "sandbox", {"charge_book": str(tmp_path / "b.db")}, is_active=True
    )
    fields = _validated("o-r", "10.00", "NGN", "ada@example.com", "card", None, None, None)
    payment, _ = record_payment(get_database(), fields)
    processor().process(payment.id)
    assert get_payment(payment.id).status == "succeeded"
    reservation = _reserve(get_database(), runtime.registry(), payment.id, Decimal("4.00"))
    return reservation


def attempts_of(payment_id: Any) -> int:
    return len(get_payment(payment_id).attempts)


def test_a_refund_left_requested_is_alerted_once_then_reminded(
    stuck: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher = Recording()
    first = run_reconcile(publisher).alerts
    assert len(first) == 1
    assert str(stuck.refund_id) in first[0].text and "4.00 NGN" in first[0].text
    assert "tender refunds settle" in first[0].text and "alerted before" not in first[0].text
    assert [t for t, _ in publisher.published] == ["alert.raised"]
    assert run_reconcile(publisher).alerts == []  # within the cooldown: quiet
    monkeypatch.setenv("TENDER_ALERT_COOLDOWN_S", "0.05")
    reset_settings()
    again = run_reconcile(publisher).alerts
    assert len(again) == 1 and "alerted before" in again[0].text


def test_a_refund_still_in_its_call_is_not_alerted(
    stuck: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENDER_RECONCILE_AGE_S", "60")
    reset_settings()
    assert run_reconcile(Recording()).alerts == []


def test_an_operator_fails_it_and_its_amount_is_released(stuck: Any) -> None:
    view = settle_refund_by_operator(
        stuck.refund_id, False, "not in the Paystack dashboard (ada, 14:05)", publisher=Recording()
    )
    assert view.status == "failed" and view.payment_status == "succeeded"
    payment = get_payment(stuck.payment_id)
    assert payment.refunded_minor == 0
    [manual] = [a for a in payment.attempts if a.outcome == "manual"]
    assert manual.operation == "refund" and "not in the Paystack dashboard" in (
        manual.message or ""
    )
    assert run_reconcile(Recording()).alerts == []  # settled: nothing to alert
    # the 4.00 it held is free again: all 10.00 can be refunded
    assert _reserve(get_database(), runtime.registry(), stuck.payment_id, None).amount_minor == 1000


def test_an_operator_settles_it_as_succeeded_with_the_providers_refund_id(stuck: Any) -> None:
    publisher = Recording()
    with pytest.raises(RefundRefused) as caught:  # the webhook would not find it without
        settle_refund_by_operator(stuck.refund_id, True, "shows processed", publisher=publisher)
    assert caught.value.field == "provider_refund_id"
    view = settle_refund_by_operator(
        stuck.refund_id, True, "shows processed", provider_refund_id="RF123", publisher=publisher
    )
    assert view.status == "succeeded" and view.payment_status == "partially_refunded"
    assert view.refunded_minor == 400 and view.provider_refund_id == "RF123"
    assert [(t, p["status"]) for t, p in publisher.published] == [
        ("payment.refunded", "partially_refunded")
    ]
    # another refund cannot claim the provider's refund already recorded
    second = _reserve(get_database(), runtime.registry(), stuck.payment_id, Decimal("2.00"))
    with pytest.raises(RefundRefused, match="already recorded"):
        settle_refund_by_operator(
            second.refund_id, True, "same id", provider_refund_id="RF123", publisher=publisher
        )


def test_a_refund_the_provider_acknowledged_cannot_be_failed_by_hand(stuck: Any) -> None:
    """It has the provider's refund id: its webhook settles it, whatever an operator
    guesses; failing it by hand would free money the provider may still pay out."""
    with get_database().transaction() as session:
        refund = session.get(Refund, stuck.refund_id)
        assert refund is not None
        refund.status, refund.provider_refund_id = "pending", "RF777"
    with pytest.raises(RefundRefused, match="acknowledged it as RF777"):
        settle_refund_by_operator(stuck.refund_id, False, "gave up", publisher=Recording())
    assert [r.status for r in list_refunds(stuck.payment_id)] == ["pending"]


@pytest.mark.parametrize(
    ("refund", "reason", "field"),
    [
        ("not-a-uuid", "checked", "refund"),
        ("00000000-0000-0000-0000-000000000000", "checked", "refund"),
        (None, "   ", "reason"),
        (None, "checked\nALERT forged log line", "reason"),
    ],
)
def test_bad_settlements_are_refused_and_write_nothing(
    stuck: Any, refund: str | None, reason: str, field: str
) -> None:
    before = attempts_of(stuck.payment_id)
    with pytest.raises(RefundRefused) as caught:
        settle_refund_by_operator(refund or stuck.refund_id, False, reason, publisher=Recording())
    assert caught.value.field == field
    assert [r.status for r in list_refunds(stuck.payment_id)] == ["requested"]
    assert attempts_of(stuck.payment_id) == before


def test_a_settled_refund_cannot_be_settled_again(stuck: Any) -> None:
    settle_refund_by_operator(stuck.refund_id, False, "checked", publisher=Recording())
    with pytest.raises(RefundRefused, match="already failed"):
        settle_refund_by_operator(
            stuck.refund_id, True, "checked again", provider_refund_id="RF1", publisher=Recording()
        )
    with get_database().sessions() as session:
        refund = session.get(Refund, stuck.refund_id)
        assert refund is not None and refund.status == "failed"


def test_the_cli_settles_and_explains_a_bad_id(stuck: Any) -> None:
    runner = CliRunner()
    bad = runner.invoke(cli, ["refunds", "settle", "nope", "--failed", "--reason", "checked"])
    assert bad.exit_code == 1 and "is not a refund id" in bad.output
    args = ["refunds", "settle", str(stuck.refund_id), "--succeeded", "--reason", "processed"]
    missing = runner.invoke(cli, args)
    assert missing.exit_code == 1 and "provider_refund_id" in missing.output
    ok = runner.invoke(cli, [*args, "--provider-refund-id", "RF9", "--json"])
    assert ok.exit_code == 0, ok.output
    assert '"status": "succeeded"' in ok.output and '"provider_refund_id": "RF9"' in ok.output


def test_a_timed_out_refund_is_alerted_but_one_the_provider_acknowledged_is_not(
    stuck: Any,
) -> None:
    with get_database().transaction() as session:
        refund = session.get(Refund, stuck.refund_id)
        assert refund is not None
        refund.status = "pending"  # the call timed out: no provider refund id
    [alert] = run_reconcile(Recording()).alerts
    assert str(stuck.refund_id) in alert.text and "pending" in alert.text
    with get_database().transaction() as session:
        refund = session.get(Refund, stuck.refund_id)
        assert refund is not None
        refund.provider_refund_id, refund.alerted_at = "RF5", None  # acknowledged
    assert run_reconcile(Recording()).alerts == []  # its webhook will settle it


def test_a_late_webhook_finds_the_refund_an_operator_settled(stuck: Any) -> None:
    """The provider's refund id recorded by hand is how its webhook, still on its way,
    finds the refund already settled instead of adding the money a second time."""
    from workers.ledger.records import Payment
    from workers.payments.webhooks import _find_refund

    settle_refund_by_operator(
        stuck.refund_id, True, "processed", provider_refund_id="RF123", publisher=Recording()
    )
    with get_database().transaction() as session:
        payment = session.get(Payment, stuck.payment_id)
        assert payment is not None
        found = _find_refund(session, payment, "RF123", 400)
        assert found is not None and found.id == stuck.refund_id and found.status == "succeeded"
