"""Group commit (workers.ledger.group_commit.LedgerWriter) on the embedded SQLite database.

The ``check_*`` scenarios take a :class:`registry.db.Database` and hold for every
backend: they run here on SQLite (the ledger's per-payment statements, one transaction
per batch) and in tests/integration/test_group_commit_pg.py on PostgreSQL (a statement
per kind of write over ``unnest``-ed arrays).

Batches are made deterministic with :func:`in_one_batch`: a writer without its batch
thread, whose callers' writes the test takes off the queue and settles as one batch.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from config.settings import get_settings
from providers.base import utcnow
from providers.sandbox import charge_book
from registry.db import Database, get_database
from registry.service import PluginRegistry
from workers import runtime
from workers.events.relay import InlineRelay
from workers.ledger.group_commit import (
    ClaimResult,
    ClaimWrite,
    FinishWrite,
    LedgerWriter,
    PublishedMark,
    Write,
    _Pending,
)
from workers.ledger.outbox import outbox_row, outbox_table
from workers.ledger.records import (
    Claim,
    InvalidTransition,
    PaymentRecord,
    attempts_table,
    claim_payment,
    new_token,
    payment_event,
    payments_table,
    read_payment,
)
from workers.ledger.states import PaymentState
from workers.payments.client import _validated, record_payment
from workers.payments.processor import Done, PaymentProcessor

LEASE_S = 30.0
THREADS = 40

# -- helpers (also imported by the PostgreSQL tests) -------------------------------------


def new_payment(database: Database, tenant_id: str | None = None) -> PaymentRecord:
    """A fresh ``requested`` payment (as the billing client records it)."""
    key = uuid.uuid4().hex
    fields = _validated(
        f"gc-{key}", "12.50", "NGN", "ada@example.com", "card", {"k": "v"}, tenant_id, f"gc-{key}"
    )
    payment, created = record_payment(database, fields)
    assert created and payment.status == PaymentState.REQUESTED
    return payment


def read(database: Database, payment_id: uuid.UUID) -> PaymentRecord:
    with database.statement() as connection:
        payment = read_payment(connection, payment_id)
    assert payment is not None
    return payment


def set_payment(database: Database, payment_id: uuid.UUID, **values: Any) -> None:
    with database.statement() as connection:
        connection.execute(
            update(payments_table).where(payments_table.c.id == payment_id).values(**values)
        )


def ledger_claim(
    database: Database, payment_id: uuid.UUID, **hop: Any
) -> tuple[Claim, PaymentRecord]:
    """A claim taken through the ledger itself (the setup of the finish scenarios)."""
    with database.begin() as connection:
        claimed = claim_payment(connection, payment_id, LEASE_S, **hop)
    assert claimed is not None
    return claimed


def expire_lease(database: Database, payment_id: uuid.UUID) -> None:
    set_payment(database, payment_id, lease_expires_at=utcnow() - timedelta(seconds=5))


def attempts_of(database: Database, payment_id: uuid.UUID) -> list[dict[str, Any]]:
    with database.statement() as connection:
        rows = connection.execute(
            select(attempts_table)
            .where(attempts_table.c.payment_id == payment_id)
            .order_by(attempts_table.c.id)
        ).all()
    return [dict(row._mapping) for row in rows]


def outbox_with(database: Database, event_id: uuid.UUID) -> list[dict[str, Any]]:
    with database.statement() as connection:
        rows = connection.execute(
            select(outbox_table).where(outbox_table.c.event_id == event_id)
        ).all()
    return [dict(row._mapping) for row in rows]


def outbox_about(database: Database, payment_id: uuid.UUID) -> list[dict[str, Any]]:
    """Every outbox row whose payload names ``payment_id``."""
    with database.statement() as connection:
        rows = connection.execute(select(outbox_table)).all()
    return [dict(r._mapping) for r in rows if r.payload.get("payment_id") == str(payment_id)]


def attempt_rows(payment_id: uuid.UUID, count: int, outcome: str = "succeeded") -> list[dict]:
    return [
        {
            "payment_id": payment_id,
            "instance_id": uuid.uuid4(),
            "plugin_name": "sandbox",
            "operation": "charge" if n == 0 else "verify",
            "outcome": outcome,
            "error_code": None,
            "message": f"attempt {n}",
            "latency_ms": 12.5 + n,
            "created_at": utcnow(),
        }
        for n in range(count)
    ]


def finish_of(
    claim: Claim,
    payment: PaymentRecord,
    state: PaymentState = PaymentState.SUCCEEDED,
    *,
    attempts: int = 1,
    event_id: uuid.UUID | None = None,
    **fields: Any,
) -> FinishWrite:
    """The FinishWrite PaymentProcessor._finish would build (event from payment_event)."""
    publish = fields.pop("publish", None)
    changed = {k: v for k, v in fields.items() if v is not None}
    event = outbox_row(payment_event(payment, state, **changed))
    if event_id is not None:
        event["event_id"] = event_id
        event["payload"] = {**event["payload"], "event_id": str(event_id)}
    return FinishWrite(
        claim, state, event, attempts=attempt_rows(payment.id, attempts), publish=publish, **fields
    )


def relayed(*writes: FinishWrite) -> list[tuple[uuid.UUID, str, dict[str, Any]]]:
    """The items a finish hands its relay: (event_id, event_type, payload)."""
    return [(w.event["event_id"], w.event["event_type"], w.event["payload"]) for w in writes]


def quiet_writer(database: Database) -> LedgerWriter:
    """A writer without a batch thread: the test settles its batches itself."""
    return LedgerWriter(database, batched=False)


def record_batches(writer: LedgerWriter) -> list[int]:
    """Spy on the writer's runner: the size of every batch it is given, in order."""
    sizes: list[int] = []
    run = writer._run

    def spy(connection: Any, writes: Sequence[Write]) -> list[Any]:
        sizes.append(len(writes))
        return run(connection, writes)

    writer._run = spy
    return sizes


def settle(writer: LedgerWriter, writes: Sequence[Write]) -> list[Future[Any]]:
    """Run ``writes`` as exactly one batch of the writer (as its batch thread would)."""
    pending = [_Pending(write) for write in writes]
    writer._settle(pending)
    return [p.future for p in pending]


def outcome(future: Future[Any]) -> Any:
    """The future's result, or the exception it carries."""
    error = future.exception(timeout=10)
    return error if error is not None else future.result()


def in_one_batch(writer: LedgerWriter, calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Make concurrent callers' writes (``calls``, each e.g. ``writer.claim(...)``) one
    batch: they queue with no batch thread running; the test settles them together.
    Returns each call's result or exception."""
    assert writer._thread is None, "needs a writer without its batch thread"
    writer.batched = True
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        batch = [writer._queue.get(timeout=10) for _ in calls]
        assert writer._queue.empty()
        try:
            writer._settle(batch)
        finally:  # never leave a caller blocked, whatever happened
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(AssertionError("not settled"))
        return [outcome(f) for f in futures]


def concurrently(count: int, call: Callable[[int], Any]) -> list[Any]:
    """``call(i)`` from ``count`` threads released together; results or exceptions."""
    barrier = threading.Barrier(count)

    def body(i: int) -> Any:
        barrier.wait(timeout=10)
        return call(i)

    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(body, i) for i in range(count)]
        return [outcome(f) for f in futures]


def assert_claimed(
    database: Database, result: ClaimResult, write: ClaimWrite, *, recovering: bool, claims: int
) -> None:
    """``result`` is ``write``'s claim, and the row shows it."""
    assert result is not None, f"claim of {write.payment_id} lost"
    claim, payment = result
    assert claim.payment_id == write.payment_id and claim.token == write.token
    assert claim.recovering is recovering
    assert claim.expires_at > utcnow() + timedelta(seconds=LEASE_S - 10)
    assert payment.id == write.payment_id
    assert payment.status == PaymentState.PROCESSING and payment.lease_token == write.token
    assert payment.claims == claims
    stored = read(database, write.payment_id)
    assert stored.status == PaymentState.PROCESSING
    assert stored.lease_token == write.token and stored.claims == claims
    assert stored.lease_expires_at == claim.expires_at == payment.lease_expires_at
    assert stored == payment


# -- scenarios (every backend) ----------------------------------------------------------------


def check_concurrent_claims(database: Database, writer: LedgerWriter) -> None:
    """THREADS threads claim distinct payments at once: each gets its own claim."""
    payments = [new_payment(database) for _ in range(THREADS)]
    writes = [
        ClaimWrite(p.id, LEASE_S, instance_id=uuid.uuid4(), plugin_name=f"plugin-{i}")
        if i % 2 == 0
        else ClaimWrite(p.id, LEASE_S)
        for i, p in enumerate(payments)
    ]
    results = concurrently(THREADS, lambda i: writer.claim(writes[i]))
    for write, result in zip(writes, results, strict=True):
        assert not isinstance(result, BaseException), result
        assert_claimed(database, result, write, recovering=False, claims=1)
        stored = read(database, write.payment_id)
        assert stored.instance_id == write.instance_id  # None when no first hop was given
        assert stored.plugin_name == write.plugin_name


def check_concurrent_claims_in_one_batch(database: Database) -> None:
    writer = quiet_writer(database)
    sizes = record_batches(writer)
    payments = [new_payment(database) for _ in range(THREADS)]
    hop = uuid.uuid4()
    writes = [
        ClaimWrite(p.id, LEASE_S, instance_id=hop if i % 3 else None, plugin_name="sandbox")
        for i, p in enumerate(payments)
    ]
    results = in_one_batch(writer, [partial(writer.claim, w) for w in writes])
    assert sizes == [THREADS]
    for write, result in zip(writes, results, strict=True):
        assert_claimed(database, result, write, recovering=False, claims=1)
        stored = read(database, write.payment_id)
        assert stored.instance_id == write.instance_id and stored.plugin_name == "sandbox"


def check_double_claim_in_one_batch(database: Database) -> None:
    """Two callers claim the same payment in one batch: exactly one wins."""
    writer = quiet_writer(database)
    payment = new_payment(database)
    writes = [ClaimWrite(payment.id, LEASE_S, plugin_name=f"p{i}") for i in range(2)]
    results = in_one_batch(writer, [partial(writer.claim, w) for w in writes])
    won = [(w, r) for w, r in zip(writes, results, strict=True) if r is not None]
    assert len(won) == 1 and results.count(None) == 1, results
    write, result = won[0]
    assert_claimed(database, result, write, recovering=False, claims=1)
    assert read(database, payment.id).plugin_name == write.plugin_name

    # The same for a takeover of an expired lease: one recovering claim, one None.
    expire_lease(database, payment.id)
    writes = [ClaimWrite(payment.id, LEASE_S) for _ in range(2)]
    results = in_one_batch(writer, [partial(writer.claim, w) for w in writes])
    won = [(w, r) for w, r in zip(writes, results, strict=True) if r is not None]
    assert len(won) == 1 and results.count(None) == 1, results
    assert_claimed(database, won[0][1], won[0][0], recovering=True, claims=2)


def check_claims_by_state(database: Database, writer: LedgerWriter) -> None:
    """Fresh, expired, live, final, pending and missing payments claimed in one batch."""
    fresh = new_payment(database)
    expired, live, final, pending = (new_payment(database) for _ in range(4))
    predecessor = uuid.uuid4()
    for payment in (expired, live):
        ledger_claim(database, payment.id, instance_id=predecessor, plugin_name="old")
    expire_lease(database, expired.id)
    set_payment(database, final.id, status=PaymentState.SUCCEEDED.value)
    set_payment(database, pending.id, status=PaymentState.PENDING.value)
    live_before = read(database, live.id)
    hop = uuid.uuid4()
    writes = {
        name: ClaimWrite(p_id, LEASE_S, instance_id=hop, plugin_name="new")
        for name, p_id in [
            ("fresh", fresh.id),
            ("expired", expired.id),
            ("live", live.id),
            ("final", final.id),
            ("pending", pending.id),
            ("missing", uuid.uuid4()),
        ]
    }
    if writer._thread is None:
        futures = settle(writer, list(writes.values()))
        results = dict(zip(writes, (f.result(timeout=10) for f in futures), strict=True))
    else:
        results = {name: writer.claim(write) for name, write in writes.items()}

    assert_claimed(database, results["fresh"], writes["fresh"], recovering=False, claims=1)
    assert read(database, fresh.id).instance_id == hop
    # A takeover: the predecessor's hop is kept, so the successor verifies there.
    assert_claimed(database, results["expired"], writes["expired"], recovering=True, claims=2)
    taken = read(database, expired.id)
    assert taken.instance_id == predecessor and taken.plugin_name == "old"
    assert results["live"] is None and read(database, live.id) == live_before
    assert results["final"] is None and read(database, final.id).status == "succeeded"
    assert results["pending"] is None and read(database, pending.id).status == "pending"
    assert results["missing"] is None


def check_finishes_with_lost_leases(database: Database) -> None:
    """One batch of finishes, two of them without the lease: only the winners write."""
    writer = quiet_writer(database)
    sizes = record_batches(writer)
    good1, good2, wrong, stale = (new_payment(database) for _ in range(4))
    claim1, record1 = ledger_claim(database, good1.id)
    claim2, record2 = ledger_claim(database, good2.id)
    _, record_wrong = ledger_claim(database, wrong.id)
    old_claim, record_stale = ledger_claim(database, stale.id)
    expire_lease(database, stale.id)
    ledger_claim(database, stale.id)  # a successor took the expired lease over
    before = {p.id: read(database, p.id) for p in (wrong, stale)}
    wrong_claim = Claim(wrong.id, new_token(), utcnow() + timedelta(seconds=30), False)
    handed: list[list[Any]] = []  # what the batch hands its event relay
    relay = handed.append

    writes = [
        finish_of(
            claim1,
            record1,
            attempts=2,
            instance_id=uuid.uuid4(),
            plugin_name="sandbox",
            publish=relay,
        ),
        finish_of(
            wrong_claim, record_wrong, PaymentState.FAILED, error_code="declined", publish=relay
        ),
        finish_of(claim2, record2, PaymentState.PENDING, attempts=0, publish=relay),
        finish_of(
            old_claim, record_stale, attempts=3, provider_transaction_id="tx-stale", publish=relay
        ),
    ]
    results = [f.result(timeout=10) for f in settle(writer, writes)]
    assert results == [True, False, True, False]
    assert sizes == [4]  # nothing failed: one batch, not re-run
    # The winners' events, and only theirs, reach the relay in one hand-over.
    assert [list(items) for items in handed] == [relayed(writes[0], writes[2])]

    for write, state in [(writes[0], "succeeded"), (writes[2], "pending")]:
        payment_id = write.claim.payment_id
        stored = read(database, payment_id)
        assert stored.status == state
        assert stored.lease_token is None and stored.lease_expires_at is None
        rows = attempts_of(database, payment_id)
        assert [(r["operation"], r["message"], r["latency_ms"]) for r in rows] == [
            (a["operation"], a["message"], a["latency_ms"]) for a in write.attempts
        ]
        assert [(r["instance_id"], r["outcome"]) for r in rows] == [
            (a["instance_id"], a["outcome"]) for a in write.attempts
        ]
        events = outbox_with(database, write.event["event_id"])
        assert len(events) == 1
        assert events[0]["event_type"] == write.event["event_type"] == f"payment.{state}"
        assert events[0]["payload"] == write.event["payload"]
        assert events[0]["payload"]["event_id"] == str(write.event["event_id"])
        assert events[0]["published_at"] is None
        assert [e["event_id"] for e in outbox_about(database, payment_id)] == [
            write.event["event_id"]
        ]
    assert read(database, good1.id).instance_id == writes[0].instance_id

    for write in (writes[1], writes[3]):
        payment_id = write.claim.payment_id
        assert read(database, payment_id) == before[payment_id]  # untouched
        assert attempts_of(database, payment_id) == []
        assert outbox_with(database, write.event["event_id"]) == []
        assert outbox_about(database, payment_id) == []


def check_stale_finish_beside_winner_of_same_payment(database: Database) -> None:
    """A crashed worker's late finish and its successor's finish of the same payment land
    in one batch: only the successor (the lease holder) may write."""
    writer = quiet_writer(database)
    payment = new_payment(database)
    old_claim, old_record = ledger_claim(database, payment.id)
    expire_lease(database, payment.id)
    new_claim, new_record = ledger_claim(database, payment.id)
    late = finish_of(old_claim, old_record, PaymentState.FAILED, attempts=2, error_code="x")
    holder = finish_of(new_claim, new_record, PaymentState.SUCCEEDED, attempts=1)

    results = [f.result(timeout=10) for f in settle(writer, [late, holder])]

    stored = read(database, payment.id)
    assert stored.status == "succeeded" and stored.error_code is None
    assert len(outbox_with(database, holder.event["event_id"])) == 1
    assert [r["message"] for r in attempts_of(database, payment.id)] == ["attempt 0"], (
        "the late finish's attempt rows were written"
    )
    assert outbox_with(database, late.event["event_id"]) == [], (
        "the late finish's event was written"
    )
    assert results == [False, True], "the late finish was reported as won"


def check_unset_provider_fields_keep_stored_values(database: Database) -> None:
    writer = quiet_writer(database)
    kept, overwritten = new_payment(database), new_payment(database)
    first_hop = uuid.uuid4()
    claims = {}
    for payment in (kept, overwritten):
        claims[payment.id] = ledger_claim(
            database, payment.id, instance_id=first_hop, plugin_name="sandbox"
        )
        set_payment(
            database,
            payment.id,
            provider_transaction_id="tx-old",
            authorization_url="https://old.example/pay",
            error_code="old-code",
            error_message="old message",
        )
    other = uuid.uuid4()
    writes = [
        finish_of(
            *claims[kept.id],
            PaymentState.PENDING,
            authorization_url="https://new.example/pay",
        ),
        finish_of(
            *claims[overwritten.id],
            PaymentState.FAILED,
            instance_id=other,
            plugin_name="paystack",
            provider_transaction_id="tx-new",
            authorization_url="https://new.example/other",
            error_code="declined",
            error_message="insufficient funds",
        ),
    ]
    assert [f.result(timeout=10) for f in settle(writer, writes)] == [True, True]

    stored = read(database, kept.id)
    assert stored.status == "pending"
    assert (stored.instance_id, stored.plugin_name) == (first_hop, "sandbox")
    assert stored.provider_transaction_id == "tx-old"
    assert stored.authorization_url == "https://new.example/pay"
    # As workers.ledger.records.finish_claim: the error fields are the finish's own, even None.
    assert (stored.error_code, stored.error_message) == (None, None)

    stored = read(database, overwritten.id)
    assert stored.status == "failed"
    assert (stored.instance_id, stored.plugin_name) == (other, "paystack")
    assert stored.provider_transaction_id == "tx-new"
    assert stored.authorization_url == "https://new.example/other"
    assert (stored.error_code, stored.error_message) == ("declined", "insufficient funds")


def _duplicate_event_setup(
    database: Database, count: int
) -> tuple[uuid.UUID, list[tuple[Claim, PaymentRecord]]]:
    """An outbox row already holding an event id, and ``count`` claimed payments."""
    taken = new_payment(database)
    finished = finish_of(*ledger_claim(database, taken.id), PaymentState.SUCCEEDED)
    assert quiet_writer(database).finish(finished)
    claimed = [ledger_claim(database, new_payment(database).id) for _ in range(count)]
    return finished.event["event_id"], claimed


def check_failed_batch_isolates_the_culprit(database: Database) -> None:
    """A finish whose event id is already in the outbox fails the batch; the batch is re-run
    one write at a time: the others commit, only the culprit's caller gets the error."""
    duplicate, claimed = _duplicate_event_setup(database, 4)
    writer = quiet_writer(database)
    sizes = record_batches(writer)
    writes = [finish_of(*c, attempts=2) for c in claimed]
    culprit_claim, culprit_record = ledger_claim(database, new_payment(database).id)
    culprit = finish_of(culprit_claim, culprit_record, attempts=2, event_id=duplicate)
    culprit_before = read(database, culprit_claim.payment_id)
    writes.insert(2, culprit)

    results = [outcome(f) for f in settle(writer, writes)]

    assert sizes == [5, 1, 1, 1, 1, 1]  # the batch failed whole, then one by one
    assert isinstance(results[2], IntegrityError)
    assert results[:2] + results[3:] == [True] * 4
    for write in writes[:2] + writes[3:]:
        payment_id = write.claim.payment_id
        assert read(database, payment_id).status == "succeeded"
        assert len(attempts_of(database, payment_id)) == 2
        assert len(outbox_with(database, write.event["event_id"])) == 1
    # The culprit's change is not half written: state, attempts and event all absent.
    assert read(database, culprit_claim.payment_id) == culprit_before
    assert attempts_of(database, culprit_claim.payment_id) == []
    assert outbox_about(database, culprit_claim.payment_id) == []

    # The writer still works afterwards, and the culprit can finish with a fresh event.
    retry = finish_of(culprit_claim, culprit_record)
    assert [f.result(timeout=10) for f in settle(writer, [retry])] == [True]


def check_failed_batch_isolates_the_culprit_threads(database: Database) -> None:
    """The same through the real batch thread, callers submitting at once: whatever the
    batches turn out to be, only the culprit's caller sees the error."""
    duplicate, claimed = _duplicate_event_setup(database, 9)
    writes = [finish_of(*c) for c in claimed]
    culprit_claim, culprit_record = ledger_claim(database, new_payment(database).id)
    writes.insert(4, finish_of(culprit_claim, culprit_record, event_id=duplicate))
    writer = LedgerWriter(database, batched=True)
    results = concurrently(len(writes), lambda i: writer.finish(writes[i]))
    assert isinstance(results[4], IntegrityError)
    assert results[:4] + results[5:] == [True] * 9
    assert read(database, culprit_claim.payment_id).status == "processing"
    for write in writes[:4] + writes[5:]:
        assert len(outbox_with(database, write.event["event_id"])) == 1


def check_claim_beside_failing_finish(database: Database) -> None:
    """A batch holding a claim and a finish that fails: the claim's caller still gets its
    claim (the claim must not be lost, nor half committed)."""
    duplicate, claimed = _duplicate_event_setup(database, 1)
    writer = quiet_writer(database)
    payment = new_payment(database)
    claim_write = ClaimWrite(payment.id, LEASE_S, plugin_name="sandbox")
    culprit = finish_of(*claimed[0], event_id=duplicate)

    results = [outcome(f) for f in settle(writer, [claim_write, culprit])]

    assert isinstance(results[1], IntegrityError)
    stored = read(database, payment.id)
    assert results[0] is not None, (
        f"claim reported lost, but the row holds its lease: status={stored.status} "
        f"lease_token={stored.lease_token} (== write token: "
        f"{stored.lease_token == claim_write.token}) claims={stored.claims}"
    )
    assert_claimed(database, results[0], claim_write, recovering=False, claims=1)


def check_processor_with_batched_writer(database: Database, book: str) -> None:
    """PaymentProcessor's threads sharing one batched writer: every payment charged once,
    finished with one attempt row and one event."""
    registry = PluginRegistry(database, poll_s=0)
    registry.create_instance("sandbox", {"charge_book": book}, is_active=True)
    published: list[Any] = []

    class Publisher:
        def publish(self, rows: Any) -> None:
            published.extend(rows)

    processor = PaymentProcessor(
        database,
        registry,
        runtime.provider_loop(),
        InlineRelay(database, Publisher()),  # type: ignore[arg-type]
        get_settings(),
        writer=LedgerWriter(database, batched=True),
    )
    payments = [new_payment(database) for _ in range(12)]
    results = concurrently(len(payments), lambda i: processor.process(payments[i].id))
    assert results == [Done(PaymentState.SUCCEEDED)] * len(payments)
    for payment in payments:
        stored = read(database, payment.id)
        assert stored.status == "succeeded" and stored.lease_token is None
        assert [a["outcome"] for a in attempts_of(database, payment.id)] == ["succeeded"]
        assert [e["event_type"] for e in outbox_about(database, payment.id)] == [
            "payment.succeeded"
        ]
    assert charge_book(book).count() == len(payments)
    assert sorted(payload["payment_id"] for _, payload in published) == sorted(
        str(p.id) for p in payments
    )


# -- the tests (SQLite) --------------------------------------------------------------------


@pytest.fixture
def database(sqlite_url: str) -> Database:
    return get_database()


@pytest.fixture(params=[True, False], ids=["batched", "unbatched"])
def writer(request: pytest.FixtureRequest, database: Database) -> LedgerWriter:
    return LedgerWriter(database, batched=request.param)


def test_concurrent_claims_each_get_their_own(database: Database, writer: LedgerWriter) -> None:
    check_concurrent_claims(database, writer)


def test_concurrent_claims_in_one_batch(database: Database) -> None:
    check_concurrent_claims_in_one_batch(database)


def test_double_claim_in_one_batch_has_one_winner(database: Database) -> None:
    check_double_claim_in_one_batch(database)


def test_double_claim_from_threads_has_one_winner(database: Database, writer: LedgerWriter) -> None:
    payment = new_payment(database)
    writes = [ClaimWrite(payment.id, LEASE_S) for _ in range(8)]
    results = concurrently(len(writes), lambda i: writer.claim(writes[i]))
    winners = [i for i, r in enumerate(results) if r is not None]
    assert len(winners) == 1 and results.count(None) == 7, results
    assert_claimed(database, results[winners[0]], writes[winners[0]], recovering=False, claims=1)


def test_claims_by_payment_state_in_one_batch(database: Database) -> None:
    check_claims_by_state(database, quiet_writer(database))


def test_claims_by_payment_state_one_at_a_time(database: Database, writer: LedgerWriter) -> None:
    check_claims_by_state(database, writer)


def test_finishes_with_lost_leases_write_nothing(database: Database) -> None:
    check_finishes_with_lost_leases(database)


def test_stale_finish_beside_winner_of_same_payment(database: Database) -> None:
    check_stale_finish_beside_winner_of_same_payment(database)


def test_unset_provider_fields_keep_stored_values(database: Database) -> None:
    check_unset_provider_fields_keep_stored_values(database)


def test_unbatched_finish_returns_false_without_the_lease(database: Database) -> None:
    writer = LedgerWriter(database, batched=False)
    claim, record = ledger_claim(database, new_payment(database).id)
    handed: list[Sequence[Any]] = []
    lost = finish_of(
        Claim(claim.payment_id, new_token(), claim.expires_at, False), record, publish=handed.append
    )
    assert writer.finish(lost) is False
    assert outbox_about(database, claim.payment_id) == []
    assert handed == []
    won = finish_of(claim, record, publish=handed.append)
    assert writer.finish(won) is True
    assert [list(items) for items in handed] == [relayed(won)]
    assert writer.finish(finish_of(claim, record, publish=handed.append)) is False  # final
    assert len(handed) == 1


def test_a_failing_relay_hand_over_leaves_the_finish_committed(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """The event is committed in the outbox: the sweep publishes it; the caller is told
    the finish won."""
    writer = LedgerWriter(database, batched=False)
    claim, record = ledger_claim(database, new_payment(database).id)

    def broken(items: Sequence[Any]) -> None:
        raise RuntimeError("relay gone")

    write = finish_of(claim, record, publish=broken)
    assert writer.finish(write) is True
    assert read(database, claim.payment_id).status == PaymentState.SUCCEEDED
    assert [e["published_at"] for e in outbox_with(database, write.event["event_id"])] == [None]
    assert "handing 1 event(s) to the relay failed" in caplog.text


@pytest.mark.parametrize(
    "state",
    [PaymentState.REQUESTED, PaymentState.REFUNDED, PaymentState.PARTIALLY_REFUNDED],
)
def test_finish_write_refuses_an_illegal_target_state(state: PaymentState) -> None:
    claim = Claim(uuid.uuid4(), new_token(), utcnow(), recovering=False)
    with pytest.raises(InvalidTransition):
        FinishWrite(claim, state, event={})


@pytest.mark.parametrize(
    "state",
    [PaymentState.SUCCEEDED, PaymentState.FAILED, PaymentState.PENDING, PaymentState.UNKNOWN],
)
def test_finish_write_accepts_the_final_states(state: PaymentState) -> None:
    claim = Claim(uuid.uuid4(), new_token(), utcnow(), recovering=False)
    assert FinishWrite(claim, state, event={}).state is state


def test_failed_batch_isolates_the_culprit(database: Database) -> None:
    check_failed_batch_isolates_the_culprit(database)


def test_failed_batch_isolates_the_culprit_threads(database: Database) -> None:
    check_failed_batch_isolates_the_culprit_threads(database)


def test_claim_beside_failing_finish(database: Database) -> None:
    check_claim_beside_failing_finish(database)


def test_single_write_batch_failure_reaches_its_caller(database: Database) -> None:
    """A batch of one that fails is not re-run: its caller gets the error at once."""
    duplicate, claimed = _duplicate_event_setup(database, 1)
    writer = quiet_writer(database)
    sizes = record_batches(writer)
    [future] = settle(writer, [finish_of(*claimed[0], event_id=duplicate)])
    assert isinstance(future.exception(timeout=10), IntegrityError)
    assert sizes == [1]


def test_unbatched_writer_raises_to_its_caller(database: Database) -> None:
    duplicate, claimed = _duplicate_event_setup(database, 1)
    writer = LedgerWriter(database, batched=False)
    with pytest.raises(IntegrityError):
        writer.finish(finish_of(*claimed[0], event_id=duplicate))
    assert read(database, claimed[0][0].payment_id).status == "processing"


def test_processor_with_batched_writer(database: Database, tmp_path: Path) -> None:
    check_processor_with_batched_writer(database, str(tmp_path / "book.db"))


def test_claim_expiry_uses_the_lease(database: Database, writer: LedgerWriter) -> None:
    before = utcnow()
    write = ClaimWrite(new_payment(database).id, 7.0)
    result = writer.claim(write)
    assert result is not None
    expires: datetime = result[0].expires_at
    assert before + timedelta(seconds=7) <= expires <= utcnow() + timedelta(seconds=7)


# -- published marks ---------------------------------------------------------------------


def _spy_kinds(writer: LedgerWriter) -> list[list[str]]:
    """The kinds of write in every batch the writer runs, in order."""
    kinds: list[list[str]] = []
    run = writer._run

    def spy(connection: Any, writes: Sequence[Write]) -> list[Any]:
        kinds.append(sorted(type(w).__name__ for w in writes))
        return run(connection, writes)

    writer._run = spy
    return kinds


def _outbox_event(database: Database) -> uuid.UUID:
    event_id = uuid.uuid4()
    with database.begin() as connection:
        connection.execute(
            outbox_table.insert(),
            {"event_id": event_id, "event_type": "payment.succeeded", "payload": {}},
        )
    return event_id


def _published(database: Database, event_id: uuid.UUID) -> bool:
    return outbox_with(database, event_id)[0]["published_at"] is not None


def test_a_published_mark_rides_along_with_the_next_finish(database: Database) -> None:
    writer = LedgerWriter(database, batched=True)
    writer.MARKS_WAIT_S = 30.0  # only a finish can take it along
    kinds = _spy_kinds(writer)
    event_id = _outbox_event(database)
    claim, record = ledger_claim(database, new_payment(database).id)

    writer.mark_published([event_id])
    threading.Event().wait(0.05)
    assert kinds == [] and not _published(database, event_id)  # held, not run alone

    assert writer.finish(finish_of(claim, record))
    assert kinds == [["FinishWrite", "PublishedMark"]]  # one batch, one statement on PG
    assert _published(database, event_id)


def test_a_published_mark_wakes_no_thread(database: Database) -> None:
    writer = LedgerWriter(database, batched=True)
    writer.MARKS_WAIT_S = 30.0
    event_id = _outbox_event(database)
    with writer._batch_lock:  # a batch thread woken for the mark would now wait for this
        writer.mark_published([event_id])
        threading.Event().wait(0.1)
        assert not writer._batch_due and writer._queue.empty()
        assert [p.write for p in writer._held] == [PublishedMark([event_id])]
    assert not _published(database, event_id)


def test_a_published_mark_goes_alone_when_no_finish_comes(database: Database) -> None:
    writer = LedgerWriter(database, batched=True)
    writer.MARKS_WAIT_S = 0.05
    kinds = _spy_kinds(writer)
    event_id = _outbox_event(database)

    writer.mark_published([event_id])
    for _ in range(200):
        if _published(database, event_id):
            break
        threading.Event().wait(0.01)
    assert _published(database, event_id)
    assert kinds == [["PublishedMark"]]


def test_a_broken_batch_fails_its_callers_and_the_writer_goes_on(database: Database) -> None:
    writer = LedgerWriter(database, batched=True)
    run = writer._run
    broken = [True]

    def once_broken(connection: Any, writes: Sequence[Write]) -> list[Any]:
        if broken.pop() if broken else False:
            return []  # a bug: fewer results than writes
        return run(connection, writes)

    writer._run = once_broken

    def claim_within(payment_id: uuid.UUID, timeout_s: float = 10.0) -> Any:
        """writer.claim, failing the test (not hanging it) if no answer ever comes."""
        answer: list[Any] = []

        def call() -> None:
            try:
                answer.append(writer.claim(ClaimWrite(payment_id, LEASE_S)))
            except Exception as exc:
                answer.append(exc)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        caller.join(timeout_s)
        assert answer, "the caller was left waiting"
        return answer[0]

    failed = claim_within(new_payment(database).id)
    assert isinstance(failed, RuntimeError) and "group commit failed" in str(failed)
    second = new_payment(database)
    claimed = claim_within(second.id)
    assert claimed is not None and claimed[1].id == second.id


def _later(delay_s: float, action: Callable[[], Any]) -> threading.Timer:
    timer = threading.Timer(delay_s, action)
    timer.start()
    return timer


def test_a_lone_write_goes_without_waiting(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = quiet_writer(database)
    monkeypatch.setattr(LedgerWriter, "LINGER_S", 0.5)
    batch = [_Pending(PublishedMark([uuid.uuid4()]))]
    late = _Pending(PublishedMark([uuid.uuid4()]))
    timer = _later(0.05, lambda: writer._queue.put(late))
    writer._gather(batch)
    timer.join()
    assert len(batch) == 1  # did not wait for the late write
    assert writer._queue.get_nowait() is late


def test_a_busy_batch_waits_briefly_for_more(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = quiet_writer(database)
    first, second, soon, late = (_Pending(PublishedMark([uuid.uuid4()])) for _ in range(4))
    writer._queue.put(second)
    monkeypatch.setattr(LedgerWriter, "LINGER_S", 0.4)
    timers = [_later(0.05, lambda: writer._queue.put(soon))]
    batch = [first]
    writer._gather(batch)
    assert batch == [first, second, soon]  # joined within the linger
    monkeypatch.setattr(LedgerWriter, "LINGER_S", 0.05)
    timers.append(_later(0.4, lambda: writer._queue.put(late)))
    batch = [first, second]
    writer._gather(batch)
    assert batch == [first, second]  # the linger is bounded: late waits for the next batch
    for timer in timers:
        timer.join()
    assert writer._queue.get_nowait() is late


def _spy_threads(writer: LedgerWriter) -> list[int]:
    """The thread that runs each batch, in order."""
    threads: list[int] = []
    run = writer._run

    def spy(connection: Any, writes: Sequence[Write]) -> list[Any]:
        threads.append(threading.get_ident())
        return run(connection, writes)

    writer._run = spy
    return threads


def test_an_idle_writer_runs_a_lone_write_on_the_callers_thread(database: Database) -> None:
    writer = LedgerWriter(database, batched=True)
    threads = _spy_threads(writer)
    payment = new_payment(database)

    claimed = writer.claim(ClaimWrite(payment.id, LEASE_S))

    assert claimed is not None and read(database, payment.id).status == "processing"
    assert threads == [threading.get_ident()]  # no hand-off to the batch thread


def test_a_write_arriving_while_a_batch_runs_goes_to_the_batch_thread(
    database: Database,
) -> None:
    writer = LedgerWriter(database, batched=True)
    threads = _spy_threads(writer)
    payment = new_payment(database)
    answer: list[Any] = []
    with writer._batch_lock:  # as if the batch thread (or another caller) were running one
        caller = threading.Thread(
            target=lambda: answer.append(writer.claim(ClaimWrite(payment.id, LEASE_S)))
        )
        caller.start()
        caller.join(0.2)
        assert caller.is_alive() and answer == []  # queued: waiting for the batch thread
    caller.join(10)
    assert answer and answer[0] is not None
    assert writer._thread is not None and threads == [writer._thread.ident]


def test_a_finish_run_on_the_callers_thread_takes_the_held_marks_along(
    database: Database,
) -> None:
    writer = LedgerWriter(database, batched=True)
    writer.MARKS_WAIT_S = 30.0
    kinds = _spy_kinds(writer)
    threads = _spy_threads(writer)
    event_id = _outbox_event(database)
    claim, record = ledger_claim(database, new_payment(database).id)
    writer.mark_published([event_id])
    for _ in range(200):  # until the batch thread holds it, and is done with its batch
        if writer._held and not writer._batch_lock.locked():
            break
        threading.Event().wait(0.01)

    assert writer.finish(finish_of(claim, record))

    assert kinds == [["FinishWrite", "PublishedMark"]]
    assert threads == [threading.get_ident()]
    assert _published(database, event_id) and writer._held == []


def test_events_of_a_write_run_on_the_callers_thread_go_out_after_the_lock_is_released(
    database: Database,
) -> None:
    """The relay may publish in the hand-over: never while other writes wait on the lock."""
    writer = LedgerWriter(database, batched=True)
    handed: list[tuple[int, bool, list[Any]]] = []

    def publish(items: Sequence[Any]) -> None:
        handed.append((threading.get_ident(), writer._batch_lock.locked(), list(items)))

    claim, record = ledger_claim(database, new_payment(database).id)
    finish = finish_of(claim, record, publish=publish)

    assert writer.finish(finish)

    assert handed == [(threading.get_ident(), False, relayed(finish))]


def test_a_caller_does_not_overtake_a_write_the_batch_thread_holds(database: Database) -> None:
    """While the batch thread holds a write and waits for the lock, the queue looks empty
    and the lock may be free: a caller must queue behind it, not run its own first."""
    writer = LedgerWriter(database, batched=True)
    threads = _spy_threads(writer)
    payment = new_payment(database)
    writer._batch_due = True  # as the batch thread sets it before it takes the lock

    assert writer.claim(ClaimWrite(payment.id, LEASE_S)) is not None

    assert writer._thread is not None and threads == [writer._thread.ident]


def test_the_batch_thread_hands_events_over_after_the_lock_is_released(
    database: Database,
) -> None:
    """An idle relay publishes on the handing thread: never under the writer's lock."""
    writer = LedgerWriter(database, batched=True)
    handed: list[tuple[int | None, bool]] = []

    def publish(items: Sequence[Any]) -> None:
        handed.append((threading.get_ident(), writer._batch_lock.locked()))

    claim, record = ledger_claim(database, new_payment(database).id)
    with writer._batch_lock:  # busy: the finish goes to the batch thread
        caller = threading.Thread(
            target=lambda: writer.finish(finish_of(claim, record, publish=publish))
        )
        caller.start()
        threading.Event().wait(0.1)
    caller.join(10)
    assert writer._thread is not None
    assert handed == [(writer._thread.ident, False)]
