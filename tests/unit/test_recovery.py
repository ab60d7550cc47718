"""Recovery that does not wait on long timers (issue 28): the requeue sweep, renewed
leases, and one quiet line per expected fault."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from config.settings import get_settings, reset_settings
from providers.base import utcnow
from registry.db import get_database
from workers.events.broker import OutageLog
from workers.ledger.leases import LeaseKeeper
from workers.ledger.records import Payment
from workers.payments.client import _validated, enqueue_payment, record_payment
from workers.payments.reconcile import requeue_lost


def new_payment(order_id: str) -> uuid.UUID:
    fields = _validated(order_id, "10.00", "NGN", "ada@example.com", "card", None, None, None)
    payment, _ = record_payment(get_database(), fields)
    return payment.id


def age(payment_id: uuid.UUID, seconds: float, **values: object) -> None:
    with get_database().transaction() as session:
        session.execute(
            update(Payment)
            .where(Payment.id == payment_id)
            .values(updated_at=utcnow() - timedelta(seconds=seconds), **values)
        )


def test_requeue_sweep_sends_lost_payments_again_within_seconds(sqlite_url: str) -> None:
    settings = get_settings()
    lost, fresh, dead_worker, live_worker = (new_payment(f"o-{i}") for i in range(4))
    age(lost, settings.requeue_after_s + 1)
    age(dead_worker, 60, status="processing", lease_expires_at=utcnow() - timedelta(seconds=1))
    age(live_worker, 60, status="processing", lease_expires_at=utcnow() + timedelta(seconds=9))
    sent: list[uuid.UUID] = []
    assert requeue_lost(get_database(), settings, lambda pid: sent.append(pid) or True) == sent
    assert sorted(sent) == sorted([lost, dead_worker])
    # Sent once, the lost payment waits requeue_after_s before it is sent again.
    sent.clear()
    requeue_lost(get_database(), settings, lambda pid: sent.append(pid) or True)
    assert lost not in sent and fresh not in sent


def test_requeue_sweep_stops_at_the_first_refused_enqueue(sqlite_url: str) -> None:
    for i in range(3):
        age(new_payment(f"o-{i}"), 60)
    attempts: list[uuid.UUID] = []
    assert (
        requeue_lost(get_database(), get_settings(), lambda pid: attempts.append(pid) and False)
        == []
    )
    assert len(attempts) == 1


def test_a_renewed_lease_outlives_its_length_and_a_taken_one_is_not_renewed(
    sqlite_url: str,
) -> None:
    mine, taken = new_payment("o-mine"), new_payment("o-taken")
    my_token, old_token = uuid.uuid4(), uuid.uuid4()
    soon = utcnow() + timedelta(seconds=1)
    age(mine, 0, status="processing", lease_token=my_token, lease_expires_at=soon)
    # A successor took the other one over: it holds a token of its own now.
    age(taken, 0, status="processing", lease_token=uuid.uuid4(), lease_expires_at=soon)
    keeper = LeaseKeeper(get_database(), lease_s=30)
    with keeper.holding(mine, my_token), keeper.holding(taken, old_token):
        assert keeper.renew() == 1
    with get_database().sessions() as session:
        expiry = dict(session.execute(select(Payment.id, Payment.lease_expires_at)).all())
    assert expiry[mine] > utcnow() + timedelta(seconds=25)
    assert expiry[taken] <= soon
    assert keeper.renew() == 0  # released when the block ended
    keeper.close()


def test_a_refused_enqueue_is_one_warning_line_and_the_return_one_info_line(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from workers.core.app import reconfigure

    caplog.set_level(logging.INFO, logger="workers.payments.client")
    monkeypatch.setenv("TENDER_BROKER_URL", "redis://127.0.0.1:1/0")
    reset_settings()
    reconfigure()
    try:
        payment_id = new_payment("o-outage")
        assert enqueue_payment(payment_id) is False
    finally:
        monkeypatch.delenv("TENDER_BROKER_URL")
        reset_settings()
        reconfigure()
    [record] = [r for r in caplog.records if r.name == "workers.payments.client"]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert str(payment_id) in record.getMessage() and "requeue sweep" in record.getMessage()
    assert "\n" not in record.getMessage()
    assert enqueue_payment(new_payment("o-back")) is True
    back = [r.getMessage() for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(back) == 1


def test_outage_log_says_once_that_the_dependency_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    outage = OutageLog(logging.getLogger("test.outage"), "broker")
    for n in range(3):
        outage.failed(f"item {n} not sent", ConnectionError("refused\nsecond line"))
    outage.succeeded()
    outage.succeeded()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4 and all("\n" not in m for m in messages)
    assert messages[-1].startswith("broker reachable again") and "3 failure(s)" in messages[-1]
    assert not any(r.exc_info for r in caplog.records)


def test_outage_tracebacks_become_one_line_and_bugs_keep_theirs() -> None:
    import sys

    from workers.core.app import OneLineOutages

    def record_of(error: BaseException) -> logging.LogRecord:
        try:
            raise error
        except BaseException:
            exc_info = sys.exc_info()
        return logging.LogRecord(
            "celery", logging.ERROR, __file__, 1, "consumer: %s", ("lost",), exc_info
        )

    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as refused:
            raise RuntimeError("Couldn't apply scheduled task requeue-lost") from refused
    except RuntimeError as wrapped:
        chained = wrapped
    for error in (ConnectionResetError(104, "reset by peer"), chained):
        record = record_of(error)
        assert OneLineOutages().filter(record)
        assert record.exc_info is None and "\n" not in record.getMessage()
        assert record.getMessage().startswith("consumer: lost (")
    bug = record_of(KeyError("a bug"))
    OneLineOutages().filter(bug)
    assert bug.exc_info is not None  # a real bug keeps its traceback
