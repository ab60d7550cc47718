"""``python -m bench.hotpath [-n 300] [--profile]``: where one payment's time goes.

Runs the client (``request_payment``) and the worker's task body in this process, one
payment at a time (no thread contention), on a fresh schema and a flushed Redis
database, sandbox at 0 ms. Reports per payment: CPU and wall time, PostgreSQL round
trips (every libpq exchange: BEGIN, statements, COMMIT/ROLLBACK, pool pings), SQL
statements, pool checkouts, Redis commands, and the time of each stage.

Then it re-runs the worker path with candidate changes applied *in this process only*
(monkeypatches; Tender's files are not touched), cumulatively, to estimate what each
would save:

1. ``no pre-ping``: the engine without ``pool_pre_ping`` (one ping per checkout);
2. ``no ORM sync``: ORM-enabled UPDATEs with ``synchronize_session=False``;
3. ``lean publish``: publish the event from the row just written instead of selecting
   it again, and mark published rows in batches of 50 rather than a transaction each.

``--profile`` adds a pyinstrument profile of the baseline worker path.
"""

from __future__ import annotations

import argparse
import inspect
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench.environment import DEFAULT_BROKER_URL, DEFAULT_POSTGRES_URL, BenchEnv

counts: Counter[str] = Counter()
stage_s: dict[str, float] = defaultdict(float)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- counting ------------------------------------------------------------------------


def _count_postgres(engine: Any) -> None:
    import psycopg._cursor_base as cursor_base
    import psycopg.generators as generators
    from sqlalchemy import event

    def counted(original: Callable[..., Any]) -> Callable[..., Any]:
        def execute(*args: Any, **kwargs: Any) -> Any:
            counts["pg round trips"] += 1
            return original(*args, **kwargs)

        return execute

    # Every libpq exchange (BEGIN, statements, COMMIT, ROLLBACK, pings) goes through it.
    generators.execute = counted(generators.execute)
    cursor_base.execute = counted(cursor_base.execute)  # type: ignore[attr-defined]

    @event.listens_for(engine, "before_cursor_execute")
    def statement(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        counts[f"sql {sql.lstrip().split(None, 1)[0].upper()}"] += 1

    @event.listens_for(engine, "checkout")
    def checkout(*_: Any) -> None:
        counts["pool checkouts"] += 1


def _count_redis() -> None:
    import redis.client

    execute = redis.client.Redis.execute_command
    pipeline_execute = redis.client.Pipeline.execute

    def counted(self: Any, *args: Any, **options: Any) -> Any:
        counts[f"redis {args[0]}"] += 1
        counts["redis round trips"] += 1
        return execute(self, *args, **options)

    def counted_pipeline(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["redis round trips"] += 1
        return pipeline_execute(self, *args, **kwargs)

    redis.client.Redis.execute_command = counted  # type: ignore[method-assign]
    redis.client.Pipeline.execute = counted_pipeline  # type: ignore[method-assign]


def _timed(owner: Any, name: str, label: str) -> None:
    """Time ``owner.name`` under ``label``; a stage the code no longer has is skipped."""
    original: Callable[..., Any] | None = getattr(owner, name, None)
    if original is None:
        return

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            stage_s[label] += time.perf_counter() - started

    setattr(owner, name, wrapper)


# -- candidate changes (this process only) ------------------------------------------------


def no_pre_ping() -> bool:
    from registry.db import get_database

    pool = get_database().engine.pool
    if not pool._pre_ping:
        return False
    pool._pre_ping = False
    return True


def no_orm_sync() -> bool:
    from sqlalchemy.orm import Session
    from sqlalchemy.sql.dml import Update

    execute = Session.execute

    def unsynchronized(self: Any, statement: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(statement, Update):
            options = dict(kwargs.get("execution_options") or {})
            options.setdefault("synchronize_session", False)
            kwargs["execution_options"] = options
        return execute(self, statement, *args, **kwargs)

    Session.execute = unsynchronized  # type: ignore[method-assign]
    return True


def lean_publish() -> bool:
    import workers.payments as payments
    from workers.relay import _mark_published

    if not (hasattr(payments, "add_event") and hasattr(payments, "publish_now")):
        return False  # the worker no longer publishes inline

    written: dict[int, list[Any]] = defaultdict(list)  # by thread: rows added, ids not yet read
    unmarked: list[int] = []
    lock = threading.Lock()
    add_event = payments.add_event

    def remembering_add_event(session: Any, event: Any) -> Any:
        row = add_event(session, event)
        written[threading.get_ident()].append(row)  # its id is set by the caller's flush
        return row

    def publish_from_memory(database: Any, publisher: Any, outbox_ids: Any) -> int:
        mine = written.pop(threading.get_ident(), [])
        rows = [row for row in mine if row.id in set(outbox_ids)]
        publisher.publish([(row.event_type, row.payload) for row in rows])
        with lock:
            unmarked.extend(row.id for row in rows)
            batch = unmarked[:] if len(unmarked) >= 50 else []
            del unmarked[: len(batch)]
        if batch:
            _mark_published(database, batch)
        return len(rows)

    payments.add_event = remembering_add_event
    payments.publish_now = publish_from_memory
    return True


VARIANTS: list[tuple[str, Callable[[], bool] | None]] = [
    ("baseline (as committed)", None),
    ("+ no pool pre-ping", no_pre_ping),
    ("+ ORM UPDATEs without session sync", no_orm_sync),
    ("+ publish from memory, mark in batches", lean_publish),
]


# -- running -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__)
    parser.add_argument("-n", type=int, default=300, help="payments per variant (default 300)")
    parser.add_argument("--profile", action="store_true", help="pyinstrument the worker path")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--broker", default=DEFAULT_BROKER_URL)
    args = parser.parse_args(argv)

    env = BenchEnv.create(args.postgres, args.broker)
    try:
        env.apply()
        env.migrate()
        return _run(args.n, args.profile)
    finally:
        env.close()


class _Batch:
    def __init__(self) -> None:
        self.cpu = {"client": 0.0, "worker": 0.0}
        self.wall = {"client": 0.0, "worker": 0.0}
        self.counts = {"client": Counter[str](), "worker": Counter[str]()}


def _run(n: int, profile: bool) -> int:
    memory = {"imports": rss_mb()}
    import workers.payments as payments
    import workers.relay as relay
    from registry.db import get_database
    from workers import runtime, tasks
    from workers.client import request_payment

    memory["workers.tasks imported"] = rss_mb()
    runtime.registry().create_instance(
        "sandbox", {"latency_ms": 0, "charge_book": None}, is_active=True
    )
    memory["registry + catalogue"] = rss_mb()
    _count_postgres(get_database().engine)
    _count_redis()
    _timed(payments, "load_payment", "1 load payment")
    _timed(payments.PluginRegistry, "resolve", "2 resolve route")
    _timed(payments, "claim_payment", "3 claim (CAS)")
    _timed(payments.ProviderLoop, "run", "4 provider call via the loop")
    _timed(payments.PaymentProcessor, "_finish", "5 _finish() (ledger txn, event out)")
    _timed(relay.EventPublisher, "publish", "6 broker publish (any thread)")
    _timed(payments.PaymentProcessor, "process", "0 process() total")

    sequence = iter(range(1_000_000))
    takes_hint = "currency" in inspect.signature(tasks.process_payment_task.run).parameters

    def hint(receipt: Any) -> dict[str, Any]:
        """The routing facts the client puts in the task message, if the task takes them."""
        if not takes_hint:
            return {}
        return {"currency": "NGN", "idempotency_key": receipt.idempotency_key}

    def batch(size: int, profiler: Any = None) -> _Batch:
        result = _Batch()
        for _ in range(size):
            i = next(sequence)
            before = counts.copy()
            c0, w0 = time.process_time(), time.perf_counter()
            receipt = request_payment(f"hp:{i}", Decimal("150.00"), "NGN", "payer@example.com")
            c1, w1 = time.process_time(), time.perf_counter()
            middle = counts.copy()
            if profiler is not None:
                profiler.start()
            tasks.process_payment_task.run(str(receipt.payment_id), **hint(receipt))
            if profiler is not None:
                profiler.stop()
            c2, w2 = time.process_time(), time.perf_counter()
            result.cpu["client"] += c1 - c0
            result.cpu["worker"] += c2 - c1
            result.wall["client"] += w1 - w0
            result.wall["worker"] += w2 - w1
            result.counts["client"] += middle - before
            result.counts["worker"] += counts - middle
        return result

    batch(30)  # warm-up: pools, caches, plugin objects
    memory["after 30 payments"] = rss_mb()
    stage_s.clear()
    profiler = None
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
    base = batch(n, profiler)
    memory[f"after {30 + n} payments"] = rss_mb()

    print(f"per payment, mean of {n} (sandbox 0 ms, sequential, one process):\n")
    for side, what in (("client", "request_payment()"), ("worker", "process_payment task body")):
        print(
            f"{side} {what}: wall {base.wall[side] / n * 1000:.2f} ms, "
            f"CPU {base.cpu[side] / n * 1000:.2f} ms"
        )
        for key, value in sorted(base.counts[side].items()):
            print(f"    {key:<30}{value / n:6.2f}")
    print("\nworker stages, mean ms per payment (nested stages overlap):")
    for label, seconds in sorted(stage_s.items()):
        print(f"    {label:<36}{seconds / n * 1000:8.3f}")
    print("\nresident memory (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in memory.items()))

    print(f"\ncandidate changes, applied cumulatively in this process ({n} payments each):")
    print(f"    {'variant':<42}{'CPU ms':>8}{'wall ms':>9}{'PG trips':>10}{'checkouts':>11}")
    for label, apply in VARIANTS:
        if apply is not None and not apply():
            print(f"    {label:<42}  n/a: the code already does without it")
            continue
        batch(10)
        result = base if apply is None else batch(n)
        worker = result.counts["worker"]
        print(
            f"    {label:<42}{result.cpu['worker'] / n * 1000:8.2f}"
            f"{result.wall['worker'] / n * 1000:9.2f}"
            f"{worker['pg round trips'] / n:10.2f}{worker['pool checkouts'] / n:11.2f}"
        )
    if profiler is not None:
        print(profiler.output_text(unicode=False, color=False, show_all=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
