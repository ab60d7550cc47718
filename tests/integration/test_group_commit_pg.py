"""Group commit on the real PostgreSQL: the JSON-row statements of
workers.ledger.group_commit (a claim statement per batch, the finish as one data-modifying
``WITH``) and the batch thread's held autocommit connection.

The backend-independent scenarios live in tests/unit/test_group_commit.py (they run
there on SQLite); here they run on a PostgreSQL schema of this module's own.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from providers.base import utcnow
from registry.db import Database
from registry.migrate import upgrade
from tests.conftest import drop_postgres_schema, fresh_postgres_schema
from tests.unit.test_client_record import check_recorded_payment_is_what_is_stored
from tests.unit.test_group_commit import (
    LEASE_S,
    _duplicate_event_setup,
    _spy_threads,
    assert_claimed,
    check_claim_beside_failing_finish,
    check_claims_by_state,
    check_concurrent_claims,
    check_concurrent_claims_in_one_batch,
    check_double_claim_in_one_batch,
    check_failed_batch_isolates_the_culprit,
    check_failed_batch_isolates_the_culprit_threads,
    check_finishes_with_lost_leases,
    check_processor_with_batched_writer,
    check_stale_finish_beside_winner_of_same_payment,
    check_unset_provider_fields_keep_stored_values,
    expire_lease,
    finish_of,
    ledger_claim,
    new_payment,
    outbox_with,
    quiet_writer,
    read,
    record_batches,
    settle,
)
from workers.ledger.group_commit import (
    _CLAIM_FRESH_SQL,
    _CLAIM_STALE_SQL,
    _FINISH_SQL,
    _PUBLISHED_SQL,
    ClaimWrite,
    LedgerWriter,
    PublishedMark,
    _Pending,
    _run_postgres,
    writer_connection,
)
from workers.ledger.states import PaymentState


@pytest.fixture(scope="module")
def database(integration_env: dict[str, str]) -> Iterator[Database]:
    """A PostgreSQL schema of this module's own: the payments left here in every state
    must not meet the session's worker or another test's reconcile run."""
    url = fresh_postgres_schema()
    upgrade(url)
    database = Database(url)
    assert not database.is_sqlite
    yield database
    database.dispose()
    drop_postgres_schema(url)


@pytest.fixture(params=[True, False], ids=["batched", "unbatched"])
def writer(request: pytest.FixtureRequest, database: Database) -> Iterator[LedgerWriter]:
    writer = LedgerWriter(database, batched=request.param)
    yield writer
    if writer._connection is not None:  # the batch thread is idle by now
        writer._connection.close()


# -- claims -------------------------------------------------------------------------------


def test_concurrent_claims_each_get_their_own(database: Database, writer: LedgerWriter) -> None:
    check_concurrent_claims(database, writer)


def test_concurrent_claims_in_one_batch(database: Database) -> None:
    check_concurrent_claims_in_one_batch(database)


def test_double_claim_in_one_batch_has_one_winner(database: Database) -> None:
    check_double_claim_in_one_batch(database)


def test_double_claim_in_one_statement(database: Database) -> None:
    """_run_postgres given two claims of one payment: the unnest join holds the payment
    twice, the UPDATE takes one of them; the other write gets None."""
    payment = new_payment(database)
    w1, w2 = ClaimWrite(payment.id, LEASE_S), ClaimWrite(payment.id, LEASE_S)
    connection = database.autocommit_connection()
    try:
        results = _run_postgres(connection, [w1, w2])
    finally:
        connection.close()
    assert results.count(None) == 1, results
    winner = w1 if results[0] is not None else w2
    assert_claimed(database, results[0] or results[1], winner, recovering=False, claims=1)


def test_claims_by_payment_state_in_one_batch(database: Database) -> None:
    check_claims_by_state(database, quiet_writer(database))


def test_claims_by_payment_state_one_at_a_time(database: Database, writer: LedgerWriter) -> None:
    check_claims_by_state(database, writer)


def test_claim_batch_takes_the_longest_lease(database: Database) -> None:
    """One lease length per batch (the statement has one expiry): never shorter than asked."""
    short, long = new_payment(database), new_payment(database)
    writes = [ClaimWrite(short.id, 5.0), ClaimWrite(long.id, LEASE_S)]
    before = utcnow()
    results = [f.result(timeout=10) for f in settle(quiet_writer(database), writes)]
    assert all(r is not None for r in results)
    expiries = {r[0].expires_at for r in results if r is not None}
    assert len(expiries) == 1
    expires = expiries.pop()
    assert expires >= before + timedelta(seconds=LEASE_S)
    assert read(database, short.id).lease_expires_at == expires


# -- finishes -----------------------------------------------------------------------------


def test_finishes_with_lost_leases_write_nothing(database: Database) -> None:
    check_finishes_with_lost_leases(database)


def test_a_stale_finish_beside_the_winner_of_the_same_payment_writes_nothing(
    database: Database,
) -> None:
    check_stale_finish_beside_winner_of_same_payment(database)


def test_unset_provider_fields_keep_stored_values(database: Database) -> None:
    check_unset_provider_fields_keep_stored_values(database)


def test_finish_writes_outbox_payload_as_json(database: Database) -> None:
    """The payload travels as text and is cast to json: nested values survive intact."""
    claim, record = ledger_claim(database, new_payment(database).id)
    write = finish_of(claim, record, PaymentState.FAILED, error_message='quote " and ü')
    assert [f.result(timeout=10) for f in settle(quiet_writer(database), [write])] == [True]
    [row] = outbox_with(database, write.event["event_id"])
    assert row["payload"] == write.event["payload"]
    assert row["payload"]["error"] == 'quote " and ü'
    assert row["created_at"] == write.event["created_at"]


# -- failures -----------------------------------------------------------------------------


def test_failed_batch_isolates_the_culprit(database: Database) -> None:
    check_failed_batch_isolates_the_culprit(database)


def test_failed_batch_isolates_the_culprit_threads(database: Database) -> None:
    check_failed_batch_isolates_the_culprit_threads(database)


def test_a_claim_beside_a_failing_finish_is_reported_won(
    database: Database,
) -> None:
    check_claim_beside_failing_finish(database)


def test_integrity_error_replaces_the_held_connection(database: Database) -> None:
    duplicate, claimed = _duplicate_event_setup(database, 2)
    writer = quiet_writer(database)
    good = finish_of(*claimed[0])
    assert [f.result(timeout=10) for f in settle(writer, [good])] == [True]
    held = writer._connection
    assert held is not None

    [failed] = settle(writer, [finish_of(*claimed[1], event_id=duplicate)])
    assert isinstance(failed.exception(timeout=10), IntegrityError)
    assert held.closed and writer._connection is None

    retry = finish_of(*claimed[1])
    assert [f.result(timeout=10) for f in settle(writer, [retry])] == [True]
    assert writer._connection is not None and writer._connection is not held
    assert read(database, claimed[1][0].payment_id).status == "succeeded"


def kill_held_connection(database: Database, writer: LedgerWriter) -> tuple[Any, int]:
    """Terminate the backend behind the writer's held connection; (connection, its pid)."""
    held = writer._connection
    assert held is not None
    pid = int(held.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
    with database.statement() as connection:
        assert connection.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
        deadline = time.monotonic() + 10
        while connection.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": pid}
        ).scalar():
            assert time.monotonic() < deadline, "backend not terminated"
            time.sleep(0.02)
    return held, pid


def test_dead_connection_is_replaced_and_the_batch_rerun(database: Database) -> None:
    """The backend behind the held connection dies between batches: the next batch fails
    on it, is re-run on a fresh connection, and its callers never see the error."""
    writer = quiet_writer(database)
    sizes = record_batches(writer)
    first = new_payment(database)
    assert settle(writer, [ClaimWrite(first.id, LEASE_S)])[0].result(timeout=10) is not None
    held, pid = kill_held_connection(database, writer)

    payments = [new_payment(database) for _ in range(3)]
    writes = [ClaimWrite(p.id, LEASE_S) for p in payments]
    results = [f.result(timeout=10) for f in settle(writer, writes)]

    assert sizes == [1, 3, 3]  # failed whole on the dead connection, re-run whole on a new one
    for write, result in zip(writes, results, strict=True):
        assert_claimed(database, result, write, recovering=False, claims=1)
    assert held.closed or held.invalidated
    assert writer._connection is not None and writer._connection is not held
    assert writer._connection.exec_driver_sql("SELECT pg_backend_pid()").scalar() != pid


def test_a_lone_write_on_a_dead_connection_is_run_again_on_a_fresh_one(
    database: Database,
) -> None:
    """A batch of one on a dead connection (an idle timeout, a failover): it is run once
    more on a fresh connection, and its caller never sees the error."""
    writer = quiet_writer(database)
    payment = new_payment(database)
    assert settle(writer, [ClaimWrite(payment.id, LEASE_S)])[0].result(timeout=10)
    held, _ = kill_held_connection(database, writer)
    other = new_payment(database)
    write = ClaimWrite(other.id, LEASE_S)
    assert_claimed(
        database, settle(writer, [write])[0].result(timeout=10), write, recovering=False, claims=1
    )
    assert writer._connection is not None and writer._connection is not held


def test_a_database_away_fails_the_batch_at_once_not_write_by_write(
    database: Database,
) -> None:
    """A database that stays away: the batch is tried whole twice, then every caller gets
    the error together (not one connection attempt per write, each timing out)."""
    writer = quiet_writer(database)
    sizes: list[int] = []

    def away(connection: Any, writes: Any) -> list[Any]:
        sizes.append(len(writes))
        raise OperationalError("UPDATE payments", None, Exception("server closed the connection"))

    writer._run = away
    futures = settle(writer, [ClaimWrite(new_payment(database).id, LEASE_S) for _ in range(3)])
    assert all(isinstance(f.exception(timeout=10), OperationalError) for f in futures)
    assert sizes == [3, 3]


def test_expired_lease_takeover_then_finish(database: Database, writer: LedgerWriter) -> None:
    """A successor's recovering claim through the writer, then its finish: the predecessor's
    late finish afterwards is refused."""
    payment = new_payment(database)
    old_claim, old_record = ledger_claim(database, payment.id, plugin_name="sandbox")
    expire_lease(database, payment.id)
    taken = writer.claim(ClaimWrite(payment.id, LEASE_S))
    assert taken is not None and taken[0].recovering
    claim, record = taken
    assert writer.finish(finish_of(claim, record, PaymentState.UNKNOWN)) is True
    late = finish_of(old_claim, old_record)
    assert writer.finish(late) is False
    assert outbox_with(database, late.event["event_id"]) == []
    assert read(database, payment.id).status == "unknown"


def test_processor_with_batched_writer(database: Database, tmp_path: Path) -> None:
    check_processor_with_batched_writer(database, str(tmp_path / "book.db"))


# -- plans ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [0, 2_000, 20_000])
@pytest.mark.parametrize(
    ("name", "sql", "avoid"),
    [
        ("claim_fresh", _CLAIM_FRESH_SQL, "ix_payments_status_updated"),
        ("claim_stale", _CLAIM_STALE_SQL, "ix_payments_status_updated"),
        ("finish", _FINISH_SQL, "ix_payments_status_updated"),
        ("published", _PUBLISHED_SQL, "ix_outbox_unpublished"),
    ],
)
def test_statements_find_rows_by_key_whatever_the_statistics(
    database: Database, name: str, sql: str, avoid: str, rows: int
) -> None:
    """A backlog of queued payments the planner has no statistics for (as right after a
    burst) must not turn each batch into a scan of the status index or of the whole
    table: on the batch thread's connection, every statement looks its rows up by
    primary or unique key, in the generic plan a prepared statement settles on."""
    connection = writer_connection(database)
    try:
        connection.exec_driver_sql(
            "INSERT INTO payments (id, order_id, idempotency_key, reference, amount_minor,"
            " currency, customer_email, payment_method, metadata, status, claims,"
            " created_at, updated_at, refunded_minor)"
            " SELECT gen_random_uuid(), 'plan-' || i, 'plan-' || i, 'plan-' || i, 100,"
            " 'NGN', 'a@example.com', 'card', '{}', 'requested', 0, now(), now(), 0"
            f" FROM generate_series(1, {rows}) AS i"
        )
        connection.exec_driver_sql(
            "INSERT INTO outbox (event_id, event_type, payload, created_at)"
            " SELECT gen_random_uuid(), 'payment.succeeded', '{}', now()"
            f" FROM generate_series(1, {rows})"
        )
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        cursor.execute("SET plan_cache_mode = force_generic_plan")
        names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", sql)))
        prepared = sql
        for i, param in enumerate(names, start=1):
            prepared = prepared.replace(f"%({param})s", f"${i}")
        cursor.execute(f"PREPARE plan_{name} AS {prepared}")
        arguments = ", ".join("now()" if p in ("now", "expires") else "NULL" for p in names)
        cursor.execute(f"EXPLAIN EXECUTE plan_{name}({arguments})")
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute(f"DEALLOCATE plan_{name}")
        cursor.execute("RESET plan_cache_mode")
        connection.exec_driver_sql("DELETE FROM payments WHERE order_id LIKE 'plan-%%'")
        connection.exec_driver_sql("DELETE FROM outbox WHERE payload::text = '{}'")
    finally:
        connection.close()
    assert avoid not in plan, plan
    assert "Seq Scan on payments" not in plan and "Seq Scan on outbox" not in plan, plan
    assert ("pk_payments" in plan) or ("uq_outbox_event_id" in plan), plan
    # Every scan of a ledger table is bounded by a key condition (a plan cached on empty
    # tables once hashed the whole primary key index per batch).
    for node in re.split(r"\n\s*->", plan):
        if re.search(r"Scan (using \w+ )?on (payments|outbox|pk_payments|pk_outbox)\b", node):
            assert "Cond:" in node, plan


def test_the_writer_connection_keeps_generic_plans(database: Database) -> None:
    """The batch statements are planned once per connection, in the generic plan the test
    above checks, not re-planned on every execution."""
    connection = writer_connection(database)
    try:
        assert connection.exec_driver_sql("SHOW plan_cache_mode").scalar() == ("force_generic_plan")
        assert connection.exec_driver_sql("SHOW enable_seqscan").scalar() == "off"
    finally:
        connection.close()


# -- partial failures and locks -------------------------------------------------------------


def test_fresh_claims_stand_when_the_stale_claim_statement_fails(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fresh-claim statement commits before the stale one runs: if the stale one
    fails, the fresh winners keep their claims and only the others hear of it."""
    from workers.ledger import group_commit

    fresh = new_payment(database)
    held = new_payment(database)
    ledger_claim(database, held.id)  # live lease: its claim falls to the stale statement
    real = group_commit._execute

    def stale_fails(connection: Any, sql: str, params: dict[str, Any]) -> Any:
        if sql is _CLAIM_STALE_SQL:
            raise IntegrityError(sql, None, Exception("boom"))
        return real(connection, sql, params)

    monkeypatch.setattr(group_commit, "_execute", stale_fails)
    writer = quiet_writer(database)
    writes = [ClaimWrite(fresh.id, LEASE_S), ClaimWrite(held.id, LEASE_S)]
    won, lost = settle(writer, writes)
    assert_claimed(database, won.result(timeout=10), writes[0], recovering=False, claims=1)
    assert isinstance(lost.exception(timeout=10), IntegrityError)


def test_a_published_mark_skips_outbox_rows_the_sweep_holds(database: Database) -> None:
    """The outbox sweep locks the rows it is publishing; a finish carrying a mark for one
    of them must not wait for it (every claim and finish of the process would)."""
    duplicate, claimed = _duplicate_event_setup(database, 1)
    finish = finish_of(*claimed[0])
    sweep = database.engine.connect()
    try:
        sweep.execute(
            text("SELECT id FROM outbox WHERE event_id = :e FOR UPDATE"), {"e": duplicate}
        )
        writer = quiet_writer(database)
        pending = [_Pending(finish), _Pending(PublishedMark([duplicate]))]
        worker = threading.Thread(target=writer._settle, args=(pending,), daemon=True)
        worker.start()
        worker.join(timeout=10)
        assert not worker.is_alive(), "the finish waited for the sweep's lock"
        assert pending[0].future.result(timeout=1) is True
    finally:
        sweep.rollback()
        sweep.close()
    assert outbox_with(database, duplicate)[0]["published_at"] is None  # skipped, not waited


def test_recorded_payment_is_what_is_stored(database: Database) -> None:
    """The client's insert (no RETURNING) on PostgreSQL."""
    check_recorded_payment_is_what_is_stored(database)


def test_callers_and_the_batch_thread_share_the_writer_connection_in_turn(
    database: Database,
) -> None:
    """A lone write runs on its caller's thread, on the writer's held connection; the
    batch thread then runs the next batch on that same connection."""
    writer = LedgerWriter(database, batched=True)
    threads = _spy_threads(writer)
    payment = new_payment(database)
    claimed = writer.claim(ClaimWrite(payment.id, LEASE_S))  # idle: on this thread
    assert claimed is not None and threads == [threading.get_ident()]
    connection = writer._connection
    assert connection is not None

    claim, record = claimed
    answer: list[bool] = []
    with writer._batch_lock:  # busy: the finish goes to the batch thread
        caller = threading.Thread(
            target=lambda: answer.append(writer.finish(finish_of(claim, record)))
        )
        caller.start()
        caller.join(0.2)
    caller.join(10)

    assert answer == [True] and read(database, payment.id).status == "succeeded"
    assert writer._thread is not None and threads[1:] == [writer._thread.ident]
    assert writer._connection is connection  # one held connection, used in turn
    connection.close()
