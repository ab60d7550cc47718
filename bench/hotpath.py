"""``python -m bench.hotpath [-n 300] [--profile]``: where one payment's time goes.

Runs the client (``request_payment``) and the worker's task body in this process, one
payment at a time (no thread contention), on a fresh schema and a flushed Redis
database, sandbox at 0 ms. Reports per payment: CPU and wall time, PostgreSQL round
trips (every libpq exchange: BEGIN, statements, COMMIT/ROLLBACK, pool pings), SQL
statements, pool checkouts, Redis commands, and the time of each stage.

(An earlier version also tried candidate hot-path changes by monkeypatching; all three,
no pool pre-ping, Core UPDATEs and publishing from memory in batches, are now in Tender.)

``--profile`` adds a pyinstrument profile of the baseline worker path.
"""

from __future__ import annotations

import argparse
import inspect
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
    cursor_base.execute = counted(cursor_base.execute)

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
    import workers.events.relay as relay
    import workers.payments.processor as payments
    from registry.db import get_database
    from workers import runtime, tasks
    from workers.payments.client import request_payment

    memory["workers.tasks imported"] = rss_mb()
    runtime.registry().create_instance(
        "sandbox", {"latency_ms": 0, "charge_book": None}, is_active=True
    )
    memory["registry + catalogue"] = rss_mb()
    _count_postgres(get_database().engine)
    _count_redis()
    _timed(payments.PluginRegistry, "resolve", "2 resolve route")
    _timed(payments.LedgerWriter, "claim", "3 claim (CAS)")
    _timed(payments.ProviderLoop, "run", "4 provider call via the loop")
    _timed(payments.PaymentProcessor, "_finish", "5 _finish() (ledger write, event out)")
    _timed(payments.LedgerWriter, "finish", "5a finish write (group commit)")
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

    if profiler is not None:
        print(profiler.output_text(unicode=False, color=False, show_all=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
