"""Group commit: the ledger writes of many task threads, committed together.

A worker process runs dozens of payments at once, one per task thread. Each claims
its payment and, after the provider answers, finishes it (new state, attempt rows,
outbox event). Done one by one, that is a transaction per write: a commit, a WAL
flush and a few round trips each, which cost more CPU than the rest of the payment.

:class:`LedgerWriter` keeps the rules of :mod:`workers.ledger.records` exactly (a claim is a
compare-and-set on ``requested`` or an expired lease; a finish is a compare-and-set
on ``processing`` and the claim's lease token; a finish writes its attempts and event
only if its compare-and-set won) and changes only how they reach the database:

* ``batched``: one thread per process takes every write waiting, runs the claims as
  one statement and the finishes as another, and wakes each caller with its own
  answer. Under load a round trip serves many payments; alone it serves one.
* A caller that finds the writer idle (no batch running, none waiting) runs its write
  as a batch of one on its own thread, on the writer's connection, under the same lock
  the batch thread takes. A lone write then costs no hand-off to the batch thread and
  back, and no wait for a core for it (measured: bench/README.md).
* On PostgreSQL each kind is a single statement over the batch's rows sent as JSON (the
  finish's update and inserts, and the relay's "published" marks, are one
  data-modifying ``WITH``), so it commits on its own: a batch is all or nothing.
  Elsewhere (SQLite) the batch runs the ledger's per-payment statements in one
  transaction.
* The events of a batch's committed finishes go to their event relay in one hand-over,
  so the relay publishes them as one transport batch. It happens after the batch's lock
  is released: an idle relay lets a caller's thread publish right there.
* A batch that fails on its data is run again one write at a time, so an error reaches
  only the caller whose write caused it. One that loses its connection (or meets a
  deadlock) is run again once, whole, on a fresh connection; if that fails too, every
  caller hears so at once.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import Connection, bindparam, insert, update
from sqlalchemy.exc import DBAPIError, OperationalError

from providers.base import utcnow
from registry.db import Database
from workers.core.threads import niced
from workers.ledger.outbox import outbox_table
from workers.ledger.records import (
    RECORD_COLUMNS,
    Claim,
    InvalidTransition,
    PaymentRecord,
    attempts_table,
    claim_payment,
    finish_claim,
    new_token,
)
from workers.ledger.states import PaymentState, can_transition

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimWrite:
    """Take ``payment_id`` (see :func:`workers.ledger.records.claim_payment`)."""

    payment_id: uuid.UUID
    lease_s: float
    instance_id: uuid.UUID | None = None  # the first hop, recorded with a fresh claim
    plugin_name: str | None = None
    token: uuid.UUID = field(default_factory=new_token)


@dataclass(frozen=True)
class FinishWrite:
    """Move a claimed payment out of ``processing``, with its attempt rows and event.

    Unset provider fields keep their stored values (as :func:`workers.ledger.records.finish_claim`).
    """

    claim: Claim
    state: PaymentState
    event: dict[str, Any]  # the outbox row (workers.ledger.outbox.outbox_row)
    attempts: Sequence[dict[str, Any]] = ()  # payment_attempts rows
    instance_id: uuid.UUID | None = None
    plugin_name: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    provider_transaction_id: str | None = None
    authorization_url: str | None = None
    next_action: dict[str, Any] | None = None  # set while pending, cleared otherwise
    expires_at: datetime | None = None  # when a pending payment ends (None: not pending)
    route_decision: dict[str, Any] | None = None  # None: keep what is recorded
    # Called with the event, as (event_id, event_type, payload), once this finish has
    # committed: in one call with every other finish of its batch that names the same
    # callable (an event relay's ``submit``), so the relay publishes them as one batch.
    publish: Callable[[Sequence[OutboxItem]], None] | None = None

    def __post_init__(self) -> None:
        if not can_transition(PaymentState.PROCESSING, self.state):
            raise InvalidTransition(f"payment cannot go from processing to {self.state}")


@dataclass(frozen=True)
class PublishedMark:
    """Outbox rows the relay has published: set ``published_at`` (nobody waits on it)."""

    event_ids: Sequence[uuid.UUID]


Write = ClaimWrite | FinishWrite | PublishedMark
OutboxItem = tuple[uuid.UUID, str, dict[str, Any]]  # (event_id, event type, payload)
ClaimResult = tuple[Claim, PaymentRecord] | None


@dataclass
class _Pending:
    write: Write
    future: Future[Any] = field(default_factory=Future)


Settled = tuple[list[_Pending], list[Any]]  # a batch run and its results, in order


def _operational(exc: BaseException) -> bool:
    """The database, not the data: a lost connection, a failed connect, a deadlock."""
    return isinstance(exc, OperationalError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


class LedgerWriter:
    """Claims and finishes payments; with ``batched``, many threads' writes at once."""

    MAX_BATCH = 128
    # A published mark waits this long for a finish statement to ride along with, then
    # goes alone. An idle batch thread looks as often, so a mark waits at most twice this.
    MARKS_WAIT_S = 0.25
    # How long a busy batch waits for more writes (see _gather): long enough to gather a
    # few more, short against a payment (bench/README.md).
    LINGER_S = 0.0005

    def __init__(self, database: Database, *, batched: bool = True) -> None:
        self.database = database
        self.batched = batched
        self._run: Callable[[Connection, Sequence[Write]], list[Any]] = (
            _run_core if database.is_sqlite else _run_postgres
        )
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        # Held by whoever runs a batch (the batch thread, or a caller finding it idle):
        # one batch at a time on the writer's connection.
        self._batch_lock = threading.Lock()
        self._connection: Connection | None = None  # the writer's own
        # Published marks waiting for a finish to ride along with, and until when at most.
        # Kept here, not queued: a mark wakes no thread (the batch thread looks on a timer).
        self._held_lock = threading.Lock()
        self._held: list[_Pending] = []
        self._held_due = 0.0
        self._batch_due = False  # the batch thread holds a write and waits for the lock
        self._thread: threading.Thread | None = None
        if batched:
            self._thread = threading.Thread(
                target=niced(self._loop), name="tender-group-commit", daemon=True
            )
            self._thread.start()

    # -- the callers' side -----------------------------------------------------------

    def claim(self, write: ClaimWrite) -> ClaimResult:
        """The claim and the payment as claimed, or None (final, pending, or held by a
        live worker)."""
        result: ClaimResult = self._submit(write)
        return result

    def finish(self, write: FinishWrite) -> bool:
        """True if this write moved the payment (False: the lease was lost)."""
        return bool(self._submit(write))

    def mark_published(self, event_ids: Sequence[uuid.UUID]) -> None:
        """Record that these outbox events were published. Batched: returns at once, and
        the mark rides along with the next finish (or goes alone after ``MARKS_WAIT_S``);
        if it is lost, the outbox sweep publishes those events again (delivery is at least
        once). It is only held, not queued: waking the batch thread for every event cost
        it a wake-up per payment under steady load."""
        if not event_ids:
            return
        if not self.batched:
            self._submit(PublishedMark(event_ids))
            return
        with self._held_lock:
            if not self._held:
                self._held_due = time.monotonic() + self.MARKS_WAIT_S
            self._held.append(_Pending(PublishedMark(event_ids)))

    def _submit(self, write: Write) -> Any:
        if not self.batched:
            with self._connect() as connection:
                result = self._run(connection, [write])[0]
            _publish_committed([_Pending(write)], [result])
            return result
        pending = _Pending(write)
        if not self._ran_here(pending):
            self._queue.put(pending)
        return pending.future.result()

    def _ran_here(self, pending: _Pending) -> bool:
        """Run ``pending`` on the caller's thread if the writer is idle (no batch running,
        none waiting): a batch of one, and two thread hand-offs fewer."""
        if self._thread is None or not self._batch_lock.acquire(blocking=False):
            return False
        try:
            if self._batch_due or not self._queue.empty():  # a batch is forming: join it
                return False
            batch = [pending]
            if isinstance(pending.write, FinishWrite):
                batch += self._take_held()
            committed: list[Settled] = []
            self._settle_or_fail(batch, committed)
        finally:
            self._batch_lock.release()
        for settled, results in committed:  # the relay may publish here: not under the lock
            _publish_committed(settled, results)
        return True

    # -- the batch thread --------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._held_lock:
                due = self._held_due if self._held else None
            timeout = self.MARKS_WAIT_S if due is None else max(due - time.monotonic(), 0.0)
            try:
                batch = [self._queue.get(timeout=timeout)]
            except queue.Empty:  # no write came: are held marks due to go alone?
                if due is None or time.monotonic() < due:
                    continue  # none held when this wait began, or not yet due
                batch = []
            committed: list[Settled] = []
            self._batch_due = True  # callers queue behind this batch, not overtake it
            with self._batch_lock:
                self._batch_due = False
                self._gather(batch)
                if any(isinstance(p.write, FinishWrite) for p in batch) or (
                    time.monotonic() >= self._held_due
                ):
                    batch += self._take_held()
                if batch:
                    self._settle_or_fail(batch, committed)
            for settled, results in committed:  # the relay may publish: not under the lock
                _publish_committed(settled, results)

    def _take_held(self) -> list[_Pending]:
        """The held published marks, to ride along with the batch being formed."""
        with self._held_lock:
            held, self._held = self._held, []
        return held

    def _gather(self, batch: list[_Pending]) -> None:
        """Add what else is waiting to ``batch``. Busy (more than one write already),
        wait up to ``LINGER_S`` for more: a statement serves more payments, and each costs
        PostgreSQL and this thread about the same whatever its size. Alone, go at once."""
        deadline: float | None = None
        while len(batch) < self.MAX_BATCH:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                if len(batch) < 2:
                    return
            if deadline is None:
                deadline = time.monotonic() + self.LINGER_S
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                batch.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                return

    def _settle_or_fail(
        self, batch: list[_Pending], committed: list[Settled] | None = None
    ) -> None:
        """Settle ``batch``; if that itself breaks (a bug), fail its callers rather than
        leave them waiting and this thread dead."""
        try:
            self._settle(batch, committed)
        except Exception as exc:
            log.exception("group commit failed to settle a batch of %d", len(batch))
            for pending in batch:
                if not pending.future.done():
                    failure = RuntimeError(f"group commit failed: {exc!r}")
                    failure.__cause__ = exc
                    pending.future.set_exception(failure)

    def _settle(self, batch: list[_Pending], committed: list[Settled] | None = None) -> None:
        """Run ``batch`` and answer its callers. Its committed events go to their relays
        first, or, given ``committed``, are added there for the caller to hand over."""
        claims = [p for p in batch if isinstance(p.write, ClaimWrite)]
        if claims and len(claims) < len(batch):
            # Claims and finishes commit separately (on PostgreSQL a statement each), so
            # each kind is settled, and re-run on failure, on its own.
            self._settle(claims, committed)
            self._settle([p for p in batch if not isinstance(p.write, ClaimWrite)], committed)
            return
        writes = [p.write for p in batch]
        try:
            try:
                results = self._run_held(writes)
            except DBAPIError as exc:
                if not _operational(exc):
                    raise
                # The connection died (an idle timeout, a failover) or the statement met a
                # deadlock: once more, whole, on a fresh connection. Safe: every write is
                # a compare-and-set.
                results = self._run_held(writes)
        except Exception as exc:
            if len(batch) == 1 or _operational(exc):
                for pending in batch:  # the database is away: everyone hears so, at once
                    if isinstance(pending.write, PublishedMark):
                        log.warning("marking events published failed; the sweep will resend")
                    pending.future.set_exception(exc)
                return
            # All or nothing: nothing of it was written. Find whose write failed.
            log.warning("a batch of %d ledger writes failed (%s); one by one", len(batch), exc)
            for pending in batch:
                self._settle([pending], committed)
            return
        if committed is None:
            _publish_committed(batch, results)
        for pending, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):  # this write alone failed
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)
        if committed is not None:
            committed.append((batch, results))

    def _run_held(self, writes: Sequence[Write]) -> list[Any]:
        if self.database.is_sqlite:  # a transaction per batch: the pool serves it
            with self._connect() as connection:
                return self._run(connection, writes)
        if self._connection is None:
            self._connection = writer_connection(self.database)
        try:
            results = self._run(self._connection, writes)
        except DBAPIError:
            self._drop_connection()
            raise
        if any(isinstance(result, DBAPIError) for result in results):
            self._drop_connection()
        return results

    def _drop_connection(self) -> None:
        """After a failed statement: the next batch starts on a fresh connection."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.invalidate()
            connection.close()

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        if self.database.is_sqlite:
            with self.database.begin() as connection:
                yield connection
        else:
            with self.database.statement() as connection:
                yield connection


def _publish_committed(batch: Sequence[_Pending], results: Sequence[Any]) -> None:
    """Hand the events of the batch's committed finishes to their relays, one call per
    relay."""
    events: dict[Callable[[Sequence[OutboxItem]], None], list[OutboxItem]] = {}
    for pending, result in zip(batch, results, strict=True):
        write = pending.write
        if isinstance(write, FinishWrite) and write.publish is not None and result is True:
            event = write.event
            events.setdefault(write.publish, []).append(
                (event["event_id"], event["event_type"], event["payload"])
            )
    for publish, items in events.items():
        try:
            publish(items)
        except Exception:  # committed: the outbox sweep publishes what this could not
            log.warning("handing %d event(s) to the relay failed", len(items), exc_info=True)


# -- PostgreSQL: a statement per kind of write, over JSON rows ---------------------------
#
# Every statement finds its rows by key (payment id, event id), a handful per batch.
# The planner must not be talked out of that by statistics taken before a backlog
# arrived, nor by a plan cached when the tables were empty (a prepared statement keeps
# its generic plan until the next ANALYZE):
# * the keys are also given as an array, "p.id = ANY(...)", so every plan scans payments
#   by key (joining the JSON rows alone, a plan made on an empty table hashes the whole
#   primary key index per batch);
# * the other conditions are written "(...) IS TRUE", which no index serves (else it may
#   scan the status or "unpublished" index: every queued payment, per batch);
# * the batch thread's connection has sequential scans off, and plans each statement once
#   (its generic plan).


def writer_connection(database: Database) -> Connection:
    """The batch thread's own autocommit connection, planned for key lookups.

    Its prepared statements keep their generic plan (the key-bounded one the plan tests
    check): left to choose, PostgreSQL planned the finish statement afresh on every
    execution, which cost it twice the execution (917 -> 283 us of server CPU for a lone
    finish, 417 -> 150 us for a lone claim).
    """
    connection = database.autocommit_connection()
    connection.exec_driver_sql("SET enable_seqscan = off")
    connection.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
    return connection


_RETURNED = ", ".join(f'p."{column.name}"' for column in RECORD_COLUMNS)

_CLAIM_FRESH_SQL = f"""
UPDATE payments AS p
SET status = 'processing',
    instance_id = COALESCE(v.instance_id, p.instance_id),
    plugin_name = COALESCE(v.plugin_name, p.plugin_name),
    lease_token = v.token, lease_expires_at = %(expires)s,
    claims = p.claims + 1, updated_at = %(now)s
FROM json_to_recordset(%(claims)s::json)
    AS v(id uuid, token uuid, instance_id uuid, plugin_name text)
WHERE p.id = ANY(%(ids)s::uuid[]) AND p.id = v.id AND (p.status = 'requested') IS TRUE
RETURNING v.token AS claim_token, {_RETURNED}
"""

_CLAIM_STALE_SQL = f"""
UPDATE payments AS p
SET lease_token = v.token, lease_expires_at = %(expires)s,
    claims = p.claims + 1, updated_at = %(now)s
FROM json_to_recordset(%(claims)s::json) AS v(id uuid, token uuid)
WHERE p.id = ANY(%(ids)s::uuid[]) AND p.id = v.id
  AND (p.status = 'processing' AND p.lease_expires_at < %(now)s) IS TRUE
RETURNING v.token AS claim_token, {_RETURNED}
"""

_FINISH_SQL = """
WITH v AS (
    SELECT * FROM json_to_recordset(%(finishes)s::json) AS v(
        id uuid, token uuid, status text, error_code text, error_message text,
        instance_id uuid, plugin_name text, provider_transaction_id text,
        authorization_url text, next_action json, expires_at timestamptz,
        route_decision json)
), done AS (
    UPDATE payments AS p
    SET status = v.status, updated_at = %(now)s, lease_token = NULL, lease_expires_at = NULL,
        error_code = v.error_code, error_message = v.error_message,
        instance_id = COALESCE(v.instance_id, p.instance_id),
        plugin_name = COALESCE(v.plugin_name, p.plugin_name),
        provider_transaction_id = COALESCE(v.provider_transaction_id, p.provider_transaction_id),
        authorization_url = COALESCE(v.authorization_url, p.authorization_url),
        next_action = v.next_action, expires_at = v.expires_at, checks = 0,
        route_decision = COALESCE(v.route_decision, p.route_decision)
    FROM v
    WHERE p.id = ANY(%(ids)s::uuid[]) AND p.id = v.id
      AND (p.status = 'processing' AND p.lease_token = v.token) IS TRUE
    RETURNING p.id, v.token
), attempts AS (
    -- keyed by (payment, token): a stale finish of the same payment writes nothing
    INSERT INTO payment_attempts (payment_id, instance_id, plugin_name, operation, outcome,
                                  error_code, message, latency_ms, created_at, reference)
    SELECT a.payment_id, a.instance_id, a.plugin_name, a.operation, a.outcome, a.error_code,
           a.message, a.latency_ms, a.created_at, a.reference
    FROM json_to_recordset(%(attempts)s::json) AS a(
        payment_id uuid, token uuid, instance_id uuid, plugin_name text, operation text,
        outcome text, error_code text, message text, latency_ms float8,
        created_at timestamptz, reference text)
    WHERE (a.payment_id, a.token) IN (SELECT id, token FROM done)
), events AS (
    INSERT INTO outbox (event_id, event_type, payload, created_at)
    SELECT e.event_id, e.event_type, e.payload, e.created_at
    FROM json_to_recordset(%(events)s::json) AS e(
        payment_id uuid, token uuid, event_id uuid, event_type text, payload json,
        created_at timestamptz)
    WHERE (e.payment_id, e.token) IN (SELECT id, token FROM done)
), published AS (
    UPDATE outbox SET published_at = %(now)s
    WHERE id IN (
        -- rows the outbox sweep holds are skipped, never waited for: it is publishing
        -- them itself, and a skipped mark costs at most a duplicate publish
        SELECT id FROM outbox
        WHERE event_id = ANY(%(published)s::uuid[]) AND (published_at IS NULL) IS TRUE
        FOR UPDATE SKIP LOCKED)
)
SELECT id, token FROM done
"""

_PUBLISHED_SQL = """
UPDATE outbox SET published_at = %(now)s
WHERE id IN (
    SELECT id FROM outbox
    WHERE event_id = ANY(%(published)s::uuid[]) AND (published_at IS NULL) IS TRUE
    FOR UPDATE SKIP LOCKED)
"""


# A statement's result columns, by its text: psycopg builds a Column object per column
# each time ``description`` is read (a claim returns 26: a quarter of its CPU).
_result_names: dict[str, list[str]] = {}


def _execute(connection: Connection, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Run ``sql`` on the driver's cursor and return its rows as dicts.

    The driver directly: SQLAlchemy's execution layer cost 165 us of CPU per statement
    here, more than psycopg itself. Driver errors are raised as SQLAlchemy's, as every
    other database call in Tender raises them (tasks retry on ``OperationalError``).
    """
    driver = connection.connection.driver_connection
    try:
        with driver.cursor() as cursor:  # type: ignore[union-attr]
            cursor.execute(sql, params)
            names = _result_names.get(sql)
            if names is None:
                if cursor.description is None:  # no result rows (no RETURNING)
                    return []
                names = _result_names[sql] = [column.name for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    except psycopg.Error as exc:
        raise DBAPIError.instance(
            sql,
            None,
            exc,
            psycopg.Error,
            hide_parameters=True,
            connection_invalidated=driver.broken or driver.closed,  # type: ignore[union-attr]
        ) from exc


def _json(rows: list[dict[str, Any]]) -> str:
    """Rows for ``json_to_recordset``: one text parameter instead of an array a column
    (psycopg dumps arrays element by element in Python); ids and times as text."""
    return json.dumps(rows, default=str, separators=(",", ":"))


def _uuid_array(ids: Iterable[uuid.UUID]) -> str:
    """A ``uuid[]`` literal: UUIDs need no quoting, and one text costs less to send than
    a list psycopg would dump element by element."""
    return "{" + ",".join(str(i) for i in ids) + "}"


def _run_postgres(connection: Connection, writes: Sequence[Write]) -> list[Any]:
    results: dict[int, Any] = {}
    claims = [(i, w) for i, w in enumerate(writes) if isinstance(w, ClaimWrite)]
    finishes = [(i, w) for i, w in enumerate(writes) if isinstance(w, FinishWrite)]
    published = [e for w in writes if isinstance(w, PublishedMark) for e in w.event_ids]
    if claims:
        results.update(_claim_postgres(connection, claims))
    if finishes:
        results.update(_finish_postgres(connection, finishes, published))
    elif published:
        _execute(connection, _PUBLISHED_SQL, {"now": utcnow(), "published": _uuid_array(published)})
    return [results.get(i) for i in range(len(writes))]


def _claim_postgres(
    connection: Connection, claims: list[tuple[int, ClaimWrite]]
) -> dict[int, ClaimResult | DBAPIError]:
    now = utcnow()
    # One lease length for the batch: every claim asks for the configured one.
    expires = now + timedelta(seconds=max(w.lease_s for _, w in claims))
    by_token = {w.token: (i, w) for i, w in claims}
    won: dict[int, ClaimResult] = {}

    def take(sql: str, params: dict[str, Any], recovering: bool) -> None:
        for row in _execute(connection, sql, params | {"now": now, "expires": expires}):
            i, write = by_token[row.pop("claim_token")]
            claim = Claim(write.payment_id, write.token, expires, recovering=recovering)
            row["metadata_"] = row.pop("metadata") or {}
            won[i] = (claim, PaymentRecord(**row))

    take(
        _CLAIM_FRESH_SQL,
        {
            "ids": _uuid_array(w.payment_id for _, w in claims),
            "claims": _json(
                [
                    {
                        "id": w.payment_id,
                        "token": w.token,
                        "instance_id": w.instance_id,
                        "plugin_name": w.plugin_name,
                    }
                    for _, w in claims
                ]
            ),
        },
        recovering=False,
    )
    # Rare: a redelivered task, or a takeover of a crashed worker's expired lease.
    missed = [(i, w) for i, w in claims if i not in won]
    if missed:
        try:
            take(
                _CLAIM_STALE_SQL,
                {
                    "ids": _uuid_array(w.payment_id for _, w in missed),
                    "claims": _json([{"id": w.payment_id, "token": w.token} for _, w in missed]),
                },
                recovering=True,
            )
        except DBAPIError as exc:
            # The fresh claims above are committed: they stand. Only these fail.
            return {i: won.get(i) for i, _ in claims} | {i: exc for i, _ in missed}
    return {i: won.get(i) for i, _ in claims}


def _finish_postgres(
    connection: Connection,
    finishes: list[tuple[int, FinishWrite]],
    published: Sequence[uuid.UUID] = (),
) -> dict[int, bool]:
    writes = [w for _, w in finishes]
    finish_rows = [
        {
            "id": w.claim.payment_id,
            "token": w.claim.token,
            "status": w.state.value,
            "error_code": w.error_code,
            "error_message": w.error_message,
            "instance_id": w.instance_id,
            "plugin_name": w.plugin_name,
            "provider_transaction_id": w.provider_transaction_id,
            "authorization_url": w.authorization_url,
            "next_action": w.next_action,
            "expires_at": w.expires_at.isoformat() if w.expires_at else None,
            "route_decision": w.route_decision,
        }
        for w in writes
    ]
    attempt_rows = [a | {"token": w.claim.token} for w in writes for a in w.attempts]
    event_rows = [
        w.event | {"payment_id": w.claim.payment_id, "token": w.claim.token} for w in writes
    ]
    params = {
        "now": utcnow(),
        "published": _uuid_array(published),
        "ids": _uuid_array(w.claim.payment_id for w in writes),
        "finishes": _json(finish_rows),
        "attempts": _json(attempt_rows),
        "events": _json(event_rows),
    }
    done = {(row["id"], row["token"]) for row in _execute(connection, _FINISH_SQL, params)}
    return {i: (w.claim.payment_id, w.claim.token) in done for i, w in finishes}


# -- elsewhere (SQLite): the ledger's own statements, one transaction per batch ---------

_INSERT_ATTEMPTS = insert(attempts_table)
_INSERT_OUTBOX = insert(outbox_table)
_MARK_PUBLISHED = (
    update(outbox_table)
    .where(
        outbox_table.c.event_id.in_(bindparam("ids", expanding=True)),
        outbox_table.c.published_at.is_(None),
    )
    .values(published_at=bindparam("now"))
)


def _run_core(connection: Connection, writes: Sequence[Write]) -> list[Any]:
    results: list[Any] = []
    for write in writes:
        if isinstance(write, ClaimWrite):
            results.append(_claim_core(connection, write))
        elif isinstance(write, FinishWrite):
            results.append(_finish_core(connection, write))
        else:
            connection.execute(_MARK_PUBLISHED, {"ids": list(write.event_ids), "now": utcnow()})
            results.append(None)
    return results


def _claim_core(connection: Connection, write: ClaimWrite) -> ClaimResult:
    return claim_payment(
        connection,
        write.payment_id,
        write.lease_s,
        instance_id=write.instance_id,
        plugin_name=write.plugin_name,
        token=write.token,
    )


def _finish_core(connection: Connection, write: FinishWrite) -> bool:
    if not finish_claim(
        connection,
        write.claim,
        write.state,
        instance_id=write.instance_id,
        plugin_name=write.plugin_name,
        error_code=write.error_code,
        error_message=write.error_message,
        provider_transaction_id=write.provider_transaction_id,
        authorization_url=write.authorization_url,
        expires_at=write.expires_at,
        next_action=write.next_action,
        route_decision=write.route_decision,
    ):
        return False
    if write.attempts:
        connection.execute(_INSERT_ATTEMPTS, list(write.attempts))
    connection.execute(_INSERT_OUTBOX, write.event)
    return True
