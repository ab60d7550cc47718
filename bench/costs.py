"""``python -m bench --costs`` (or ``python -m bench.costs [--json] [-n 40]``): what one
operation costs the database and the broker, counted, not estimated (issue 40).

Each operation runs ``-n`` times in this process on a fresh PostgreSQL schema and a
flushed Redis database, through the same code the worker runs (the client's
``request_payment``, the ``process_payment`` task body with the process's group-commit
writer and event relay, ``receive_webhook``, ``refund_payment``, the health check and a
reconcile pass), the sandbox provider at 0 ms. Counted by hooks around each operation,
including what background threads (the event relay, the group-commit writer) do for it
before the next one starts:

* SQL statements, explicit commits and rollbacks (read-only transactions end in one) at
  the driver (psycopg), so the group commit's direct statements count too; write
  transactions (the transaction ids PostgreSQL assigned: one per transaction that wrote,
  autocommitted statements included); rows written
  (every row inserted, updated or deleted, by a trigger on each table of the bench's
  schema bumping a sequence);
* database round trips (every libpq exchange: BEGIN, statements, COMMIT, pings);
* broker messages and bytes (every ``kombu`` publish: tasks and events), and every Redis
  command (the broker's own traffic, and Tender's locks);
* provider calls (the sandbox plugin's methods).

``tests/integration/test_costs.py`` fails when a payment's count rises above the figures
recorded in ``bench/README.md`` (between the ``costs`` markers): a change that makes a
payment cost more must say so there.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench.environment import DEFAULT_POSTGRES_URL, BenchEnv

COUNTS: Counter[str] = Counter()
METRICS = (
    "sql statements",
    "write transactions",
    "commits",
    "rollbacks",
    "rows written",
    "db round trips",
    "broker messages",
    "broker bytes",
    "redis commands",
    "provider calls",
)
SETTLE_S = 0.3  # the relay's flush and the writer's marks land within this


def install(engine: Any) -> None:
    """The counting hooks: SQLAlchemy and psycopg for the database, kombu and redis-py for
    the broker, the sandbox plugin's methods for the provider."""
    import kombu.messaging
    import psycopg
    import psycopg._cursor_base as cursor_base
    import psycopg.generators as generators
    import redis.client

    from providers.sandbox import SandboxProvider

    def round_trip(original: Callable[..., Any]) -> Callable[..., Any]:
        def execute(*args: Any, **kwargs: Any) -> Any:
            COUNTS["db round trips"] += 1
            return original(*args, **kwargs)

        return execute

    generators.execute = round_trip(generators.execute)
    cursor_base.execute = round_trip(cursor_base.execute)

    # At the driver, so that the group commit's own statements (psycopg directly, under
    # SQLAlchemy: workers.ledger.group_commit._execute) are counted with the rest.
    def counting(original: Callable[..., Any], metric: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            COUNTS[metric] += 1
            return original(*args, **kwargs)

        return call

    psycopg.Cursor.execute = counting(psycopg.Cursor.execute, "sql statements")  # type: ignore[method-assign]
    psycopg.Cursor.executemany = counting(psycopg.Cursor.executemany, "sql statements")  # type: ignore[method-assign]
    psycopg.Connection.commit = counting(psycopg.Connection.commit, "commits")  # type: ignore[method-assign]
    psycopg.Connection.rollback = counting(psycopg.Connection.rollback, "rollbacks")  # type: ignore[method-assign]
    _count_rows_written(engine)

    publish = kombu.messaging.Producer._publish

    def counted_publish(self: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
        COUNTS["broker messages"] += 1
        COUNTS["broker bytes"] += len(body) if isinstance(body, bytes | str) else 0
        return publish(self, body, *args, **kwargs)

    kombu.messaging.Producer._publish = counted_publish  # type: ignore[method-assign]

    execute = redis.client.Redis.execute_command
    pipeline = redis.client.Pipeline.execute

    def command(self: Any, *args: Any, **options: Any) -> Any:
        COUNTS["redis commands"] += 1
        return execute(self, *args, **options)

    def piped(self: Any, *args: Any, **kwargs: Any) -> Any:
        COUNTS["redis commands"] += len(self.command_stack)
        return pipeline(self, *args, **kwargs)

    redis.client.Redis.execute_command = command  # type: ignore[method-assign]
    redis.client.Pipeline.execute = piped  # type: ignore[method-assign]

    for name in ("process_payment", "verify_payment", "refund", "health_check", "parse_webhook"):
        original = getattr(SandboxProvider, name)

        def counted(*args: Any, __original: Any = original, **kwargs: Any) -> Any:
            COUNTS["provider calls"] += 1
            return __original(*args, **kwargs)

        setattr(SandboxProvider, name, counted)


_ROWS = "tender_bench_rows_written"


def _count_rows_written(engine: Any) -> None:
    """Every row any statement inserts, updates or deletes in the bench's schema bumps a
    sequence, by a trigger on each table: exact, whatever the statement (the group
    commit writes a payment, its attempts and its event in one), and server-side, so the
    counted client sees no extra statement. Sequences are not transactional: a rolled
    back write counts too (none happens here)."""
    from sqlalchemy import text

    with engine.begin() as connection:
        connection.execute(text(f"CREATE SEQUENCE IF NOT EXISTS {_ROWS}"))
        connection.execute(
            text(
                f"CREATE OR REPLACE FUNCTION {_ROWS}() RETURNS trigger AS $$ BEGIN "
                f"PERFORM nextval('{_ROWS}'); RETURN NULL; END $$ LANGUAGE plpgsql"
            )
        )
        tables = connection.execute(
            text(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                "AND tablename <> 'alembic_version'"
            )
        ).scalars()
        for table_name in list(tables):
            connection.execute(
                text(
                    f"CREATE TRIGGER {_ROWS} AFTER INSERT OR UPDATE OR DELETE ON {table_name} "
                    f"FOR EACH ROW EXECUTE FUNCTION {_ROWS}()"
                )
            )


def _server_counts(engine: Any) -> tuple[int, int]:
    """(rows written so far, the next transaction id): a transaction gets an id when it
    first writes, so the ids between two reads are the write transactions between them
    (read without taking one: the snapshot's xmax)."""
    from sqlalchemy import text

    with engine.connect() as connection:
        rows, called, next_xid = connection.execute(
            text(
                f"SELECT last_value, is_called, "
                f"pg_snapshot_xmax(pg_current_snapshot())::text::bigint FROM {_ROWS}"
            )
        ).one()
    return (int(rows) if called else 0), int(next_xid)


def per_operation(run: Callable[[int], None], n: int, engine: Any) -> dict[str, float]:
    """The mean counts of ``run(i)`` over ``n`` runs, each settled before the next."""
    run(-1)  # warm-up: pools, caches, plugin objects
    time.sleep(SETTLE_S)
    total: Counter[str] = Counter()
    for i in range(n):
        rows_before, xid_before = _server_counts(engine)
        before = COUNTS.copy()  # the harness's own reads fall outside
        run(i)
        time.sleep(SETTLE_S)
        total += COUNTS - before
        rows_after, xid_after = _server_counts(engine)
        total["rows written"] += rows_after - rows_before
        total["write transactions"] += xid_after - xid_before
    return {metric: round(total[metric] / n, 1) for metric in METRICS}


def measure(n: int) -> dict[str, dict[str, float]]:
    """Every operation's costs (the schema and broker must be set up: BenchEnv)."""
    import workers.tasks as tasks
    from providers.base import OutcomeStatus
    from providers.sandbox import SIGNATURE_HEADER, SandboxProvider, charge_book
    from registry.db import get_database
    from workers import runtime
    from workers.core.app import app
    from workers.events.relay import EventPublisher
    from workers.monitoring.health import health_check_all
    from workers.payments.client import request_payment
    from workers.payments.methods import import_payment_method
    from workers.payments.reconcile import reconcile
    from workers.payments.refunds import refund_payment
    from workers.payments.webhooks import receive_webhook

    book = str(Path(tempfile.mkdtemp(prefix="tender-costs-")) / "book.db")
    registry = runtime.registry()
    instance = registry.create_instance(
        "sandbox",
        {"latency_ms": 0, "charge_book": book, "api_key": "sk_costs_0123456789"},
        is_active=True,
    )
    install(get_database().engine)
    paid: list[Any] = []
    pending: list[Any] = []
    method = import_payment_method(instance.id, "AUTH_costs_token", "cust-costs").id

    def pay(i: int, **extra: Any) -> Any:
        receipt = request_payment(
            f"costs-{extra.get('payment_method', 'card')}-{i}-{time.monotonic_ns()}",
            Decimal("150.00"), "NGN", "payer@example.com", **extra,
        )  # fmt: skip
        tasks.process_payment_task.run(
            str(receipt.payment_id), currency="NGN", idempotency_key=receipt.idempotency_key
        )
        return receipt

    def card(i: int) -> None:
        paid.append(pay(i).payment_id)

    def saved(i: int) -> None:
        pay(i, payment_method_id=method)

    def checkout(i: int) -> None:
        pending.append(pay(i, payment_method="bank_transfer"))

    signer = SandboxProvider()
    signer.configure({"api_key": "sk_costs_0123456789", "charge_book": book})
    publisher = EventPublisher(app)

    def webhook(_i: int) -> None:
        receipt = pending.pop()
        charge = charge_book(book).get(receipt.reference)
        assert charge is not None
        charge_book(book).settle(receipt.reference, OutcomeStatus.SUCCEEDED)  # the customer paid
        body = json.dumps(
            {
                "id": f"evt_{receipt.reference}",
                "type": "charge.success",
                "reference": receipt.reference,
                "status": "succeeded",
                "amount_minor": charge.amount_minor,
                "currency": charge.currency,
            }
        ).encode()
        receive_webhook("sandbox", body, {SIGNATURE_HEADER: signer.sign(body)}, publisher=publisher)

    def refund(_i: int) -> None:
        refund_payment(paid.pop(), "10.00", publisher=publisher)

    def health(_i: int) -> None:
        health_check_all()

    def reconcile_pass(_i: int) -> None:
        from config.settings import get_settings
        from workers.payments.client import enqueue_payment

        reconcile(
            get_database(), registry, runtime.provider_loop(), publisher, get_settings(),
            enqueue_payment,
        )  # fmt: skip

    operations: list[tuple[str, Callable[[int], None], int]] = [
        ("payment (card, succeeds)", card, n),
        ("payment (saved method)", saved, n),
        ("payment (checkout, waits on the customer)", checkout, n),
        ("webhook (the checkout is paid)", webhook, n),
        ("refund (partial)", refund, n),
        ("health check (one instance)", health, max(5, n // 4)),
        ("reconcile pass (nothing due)", reconcile_pass, max(5, n // 4)),
    ]
    engine = get_database().engine
    return {name: per_operation(run, count, engine) for name, run, count in operations}


def _redis_calls(client: Any) -> int:
    """Every command the Redis server has run so far (INFO commandstats, all clients)."""
    stats = client.info("commandstats")
    return sum(int(entry["calls"]) for entry in stats.values())


def through_a_worker(env: BenchEnv, n: int) -> dict[str, float]:
    """A card payment through a real worker process, counted at the Redis server: the
    client's publish, the worker's consume and acknowledgement (Celery's Redis transport
    with ``acks_late``), the event's publish, and the worker's idle polling subtracted
    (measured over the same length of time before). The broker must have no other
    client meanwhile."""
    import redis

    from bench.cluster import WorkerSet
    from config.celery import PAYMENTS_QUEUE
    from registry.db import get_database
    from workers.core.app import app
    from workers.ledger.records import Payment
    from workers.payments.client import request_payment

    server = redis.Redis.from_url(env.broker_url)
    workers = WorkerSet(
        "costs", env.worker_environment(), env.data_dir / "logs", processes=1, concurrency=4
    )
    workers.start(app)
    try:
        workers.resume(app, server, PAYMENTS_QUEUE)
        time.sleep(2.0)
        before = _redis_calls(server)
        time.sleep(3.0)
        idle_per_s = (_redis_calls(server) - before) / 3.0
        before, started = _redis_calls(server), time.monotonic()
        ids = [
            request_payment(
                f"costs-worker-{i}", Decimal("150.00"), "NGN", "a@example.com"
            ).payment_id
            for i in range(n)
        ]
        from sqlalchemy import func, select

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with get_database().sessions() as session:
                done = session.execute(
                    select(func.count()).where(Payment.id.in_(ids), Payment.status == "succeeded")
                ).scalar_one()
            if done == n:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # the last events' relay
        elapsed = time.monotonic() - started
        total = _redis_calls(server) - before - idle_per_s * elapsed
    finally:
        workers.stop()
    return {"redis commands": round(total / n, 1), "idle polling per s": round(idle_per_s, 1)}


def table(costs: dict[str, dict[str, float]]) -> str:
    """The costs as the markdown table bench/README.md records."""
    head = "| operation | " + " | ".join(METRICS) + " |"
    rule = "| --- |" + " --- |" * len(METRICS)
    rows = [
        f"| {name} | " + " | ".join(f"{figures[m]:g}" for m in METRICS) + " |"
        for name, figures in costs.items()
    ]
    return "\n".join([head, rule, *rows])


def recorded(readme: str) -> dict[str, dict[str, float]]:
    """The figures between ``<!-- costs:start -->`` and ``<!-- costs:end -->``."""
    block = readme.split("<!-- costs:start -->", 1)[1].split("<!-- costs:end -->", 1)[0]
    lines = [line for line in block.strip().splitlines() if line.startswith("|")][2:]
    found = {}
    for line in lines:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        found[cells[0]] = {m: float(v) for m, v in zip(METRICS, cells[1:], strict=True)}
    return found


def commit_rate(database_url: str, clients: int = 8, seconds: float = 5.0) -> float:
    """Write transactions per second this PostgreSQL takes: ``clients`` connections each
    committing one-row inserts (synchronous_commit as configured) as fast as they can.
    The ceiling the capacity table in docs/operating.md divides by a payment's count."""
    import threading

    from sqlalchemy import create_engine

    engine = create_engine(database_url, pool_size=clients + 1)

    def raw() -> Any:
        connection = engine.raw_connection()
        connection.driver_connection.autocommit = True  # type: ignore[union-attr]
        return connection

    setup = raw()
    setup.cursor().execute("CREATE TABLE IF NOT EXISTS tender_bench_commits (n bigint)")
    setup.close()
    done = [0] * clients
    stop = time.monotonic() + seconds

    def client(slot: int) -> None:
        connection = raw()
        cursor = connection.cursor()
        while time.monotonic() < stop:
            cursor.execute("INSERT INTO tender_bench_commits VALUES (1)")
            done[slot] += 1
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rate = sum(done) / (time.monotonic() - started)
    engine.dispose()
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.costs", description=__doc__)
    parser.add_argument("-n", type=int, default=40, help="runs of each payment operation")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/6")
    parser.add_argument(
        "--commit-rate", action="store_true", help="also measure PostgreSQL's commits per second"
    )
    args = parser.parse_args(argv)
    env = BenchEnv.create(args.postgres, args.broker)
    try:
        env.apply()
        env.migrate()
        costs = measure(args.n)
        worker = through_a_worker(env, max(args.n, 20))
        rate = commit_rate(env.database_url) if args.commit_rate else None
    finally:
        env.close()
    if args.json:
        print(json.dumps(costs | {"through a worker": worker}, indent=2))
    else:
        print(f"per operation, mean of {args.n} (sandbox 0 ms, one process, PostgreSQL, Redis):")
        print(table(costs))
        print(
            f"\na card payment through a worker process, at the Redis server: "
            f"{worker['redis commands']:g} commands (client, worker consume and ack, event; "
            f"idle polling of {worker['idle polling per s']:g}/s subtracted)"
        )
        if rate is not None:
            print(
                f"\nPostgreSQL here: {rate:.0f} write transactions/s (8 clients, one-row inserts)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
