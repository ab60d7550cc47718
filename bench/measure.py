"""The measurements, (a) to (h). Each returns plain numbers for the report.

Throughput (a-d) is *end to end*: with every worker consuming, a few client threads
send the burst (``apply_async`` for a and b, ``request_payment`` for c and d) and the
clock runs from the first send until the last task is acknowledged (a, b) or the last
payment's event is relayed (c, d). The clients share the two cores with the workers,
as (e)'s paced clients do, so (e) at half of (c)'s rate is at half the load the
machine can carry. (The twelfth session's change; until then the queue was filled with
the workers held and the clock ran from their release, which leaves the clients' CPU
out: that *drain rate* is still reported, not judged, and (e) at half of it had the
machine saturated, its p99 near a second.)
"""

from __future__ import annotations

import random
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bench.cluster import CpuMeter, HarnessError, WorkerSet
from bench.events import EventListener

CURRENCY = "NGN"
AMOUNT = Decimal("150.00")
EMAIL = "payer@example.com"
SLOW_PROVIDER_MS = 300
SUBMIT_THREADS = 4


@dataclass(frozen=True)
class Sizes:
    ceiling_tasks: int
    naive_payments: int
    tender_payments: int  # each of (c) and (d)
    latency_s: float  # (e): how long to submit at half of (c)'s rate
    swaps: int
    resolve_calls: int
    # Bursts per throughput figure (a, c, d); the best one counts, so a burst slowed by
    # something else on the machine does not set the figure (all are kept in the JSON).
    repeats: int
    warmup_payments: int


FULL = Sizes(
    ceiling_tasks=10_000,
    naive_payments=60,
    tender_payments=1_500,
    latency_s=10.0,
    swaps=10,
    resolve_calls=200_000,
    repeats=3,
    warmup_payments=256,
)
QUICK = Sizes(
    # (d)'s last payment waits out one 300 ms provider call after the clients finish:
    # 600 payments keep that tail to about a third of the burst (200 made it half).
    ceiling_tasks=3_000,
    naive_payments=12,
    tender_payments=600,
    latency_s=2.0,
    swaps=3,
    resolve_calls=20_000,
    repeats=1,
    warmup_payments=64,
)


@dataclass
class Context:
    app: Any  # Tender's Celery app
    redis: Any  # client on the bench's Redis database
    log: Callable[[str], None]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


# -- (a), (b): plain Celery tasks, timed by the queue draining -----------------------


def backlog(redis: Any, queue: str) -> int:
    """Messages waiting in ``queue`` (every priority) plus delivered-but-unacked ones."""
    pipe = redis.pipeline(transaction=False)
    pipe.llen(queue)
    for priority in (3, 6, 9):  # kombu's Redis priority steps
        pipe.llen(f"{queue}\x06\x16{priority}")
    pipe.hlen("unacked")
    return int(sum(pipe.execute()))


def wait_drained(redis: Any, queue: str, timeout_s: float) -> float:
    """The instant the backlog reached zero (seen twice in a row, 2 ms apart)."""
    deadline = time.monotonic() + timeout_s
    empty_since: float | None = None
    while time.monotonic() < deadline:
        now = time.perf_counter()
        if backlog(redis, queue) == 0:
            if empty_since is not None:
                return empty_since
            empty_since = now
        else:
            empty_since = None
        time.sleep(0.002)
    raise HarnessError(
        f"queue {queue} still has {backlog(redis, queue)} messages after {timeout_s} s"
    )


def released(
    ctx: Context, workers: WorkerSet, n: int, finished: Callable[[], float]
) -> dict[str, Any]:
    """Check the held queue holds the ``n`` messages, release every worker at one instant,
    and wait for ``finished()`` (the instant the burst ended): its rate and CPU."""
    from config.celery import PAYMENTS_QUEUE

    held = backlog(ctx.redis, PAYMENTS_QUEUE)
    if held != n:
        raise HarnessError(
            f"the held queue holds {held} of {n} messages (a worker consumed early?)"
        )
    return timed(
        ctx, workers, n, lambda: workers.resume(ctx.app, ctx.redis, PAYMENTS_QUEUE), finished
    )


def timed(
    ctx: Context,
    workers: WorkerSet,
    n: int,
    start: Callable[[], float],
    finished: Callable[[], float],
) -> dict[str, Any]:
    """A burst of ``n`` from ``start()`` to ``finished()`` (each returns its instant), with
    the CPU it cost; the workers are paused after it, whether it ends or fails."""
    from config.celery import PAYMENTS_QUEUE

    try:
        cpu = workers.cpu_s(), time.process_time()
        meter = CpuMeter(workers)
        meter.start()
        started = start()
        ended = finished()
        cpu = workers.cpu_s() - cpu[0], time.process_time() - cpu[1]
        cores = meter.stop()
    finally:
        workers.pause(ctx.app, ctx.redis, PAYMENTS_QUEUE)
    elapsed = ended - started
    return {
        "n": n,
        "elapsed_s": elapsed,
        "per_s": n / elapsed,
        # CPU of the worker processes, and of this harness (the clients, end to end), per item
        "worker_cpu_ms_each": cpu[0] / n * 1000,
        "harness_cpu_ms_each": cpu[1] / n * 1000,
        "cpu": cores,
    }


def task_burst(
    ctx: Context,
    workers: WorkerSet,
    send: Callable[[int], None],
    n: int,
    timeout_s: float,
    *,
    flowing: bool = True,
) -> dict[str, Any]:
    """``n`` tasks through the workers: sent by the client threads while the workers consume
    (end to end, as judged), or without ``flowing`` pre-filled then released (drain rate)."""
    from config.celery import PAYMENTS_QUEUE

    wait_drained(ctx.redis, PAYMENTS_QUEUE, 10)  # late acks of the previous burst
    if flowing:
        return flowed(
            ctx,
            workers,
            n,
            lambda: submit_all(send, n),
            lambda: wait_drained(ctx.redis, PAYMENTS_QUEUE, timeout_s),
        )
    filled = time.perf_counter()
    for i in range(n):
        send(i)
    filled = time.perf_counter() - filled
    burst = released(ctx, workers, n, lambda: wait_drained(ctx.redis, PAYMENTS_QUEUE, timeout_s))
    return burst | {"enqueue_per_s": n / filled}


def flowed(
    ctx: Context,
    workers: WorkerSet,
    n: int,
    submit: Callable[[], float],
    finished: Callable[[], float],
) -> dict[str, Any]:
    """End to end: with every worker consuming, ``submit()`` sends the ``n`` items from
    the client threads (returning their rate), and the clock runs from the first send to
    ``finished()``. The clients share the two cores with the workers, as (e)'s paced
    clients do, so half this rate is half the load (e) puts on the machine."""
    from config.celery import PAYMENTS_QUEUE

    client_rate: list[float] = []

    def send_all() -> float:
        started = time.perf_counter()
        client_rate.append(submit())
        return started

    workers.resume(ctx.app, ctx.redis, PAYMENTS_QUEUE)
    return timed(ctx, workers, n, send_all, finished) | {"client_per_s": client_rate[0]}


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest burst, with every burst's rate beside it."""
    best = dict(max(runs, key=lambda run: run["per_s"]))
    best["all_per_s"] = [round(run["per_s"], 1) for run in runs]
    return best


def paired_ratios(
    ceilings: list[float], c_rates: list[float], d_rates: list[float]
) -> dict[str, list[float]]:
    """Each payment burst's rate over the no-op burst's just before it, on the same workers.

    The no-op bursts run in that order: one before each (c) burst, then one before each (d)
    burst. A pair is minutes closer in time than the best (c) and the best of all (a), so
    the machine's drift moves it less (reported beside the targets, not judged).
    """
    c_ceilings, d_ceilings = ceilings[: len(c_rates)], ceilings[len(c_rates) :]
    return {
        "c/a": [c / a for c, a in zip(c_rates, c_ceilings, strict=True)],
        "d/a": [d / a for d, a in zip(d_rates, d_ceilings, strict=True)],
    }


def ceiling(
    ctx: Context, workers: WorkerSet, n: int, *, warm_up: bool = False, flowing: bool = True
) -> dict[str, Any]:
    """(a) no-op tasks per second, one burst (with ``warm_up``, after a tenth as many).

    Sent as Tender's ``enqueue_payment`` sends ``process_payment``: a producer from the
    app's pool, its channel on one Redis client, ``apply_async``."""
    from bench.tasks import noop
    from config.celery import PAYMENTS_QUEUE
    from workers.events.broker import reuse_one_client

    def send(_: int) -> None:
        with ctx.app.producer_or_acquire() as producer:
            reuse_one_client(producer.channel)
            noop.apply_async(queue=PAYMENTS_QUEUE, producer=producer)

    if warm_up:
        task_burst(ctx, workers, send, max(n // 10, 200), timeout_s=120, flowing=flowing)
    return task_burst(ctx, workers, send, n, timeout_s=max(60, n / 100), flowing=flowing)


def naive(ctx: Context, workers: WorkerSet, n: int) -> dict[str, float]:
    """(b) sandbox payments per second, called directly with asyncio.run per task."""
    from bench.tasks import naive_charge
    from config.celery import PAYMENTS_QUEUE
    from providers.money import to_minor

    run = uuid.uuid4().hex[:8]
    amount_minor = to_minor(AMOUNT, CURRENCY)

    def sender(prefix: str) -> Callable[[int], None]:
        def send(i: int) -> None:
            naive_charge.apply_async(
                args=[f"naive-{prefix}-{run}-{i}", amount_minor, CURRENCY, SLOW_PROVIDER_MS],
                queue=PAYMENTS_QUEUE,
            )

        return send

    task_burst(ctx, workers, sender("warm"), 4, timeout_s=30)
    return task_burst(ctx, workers, sender("run"), n, timeout_s=max(60, n))


# -- (c)-(f): Tender end to end ----------------------------------------------------------


def request(order_id: str) -> None:
    from workers.payments.client import request_payment

    receipt = request_payment(order_id, AMOUNT, CURRENCY, EMAIL)
    if not receipt.enqueued:
        raise HarnessError(f"request_payment could not enqueue {order_id}")


def submit_all(send: Callable[[int], None], n: int) -> float:
    """``send(0)`` .. ``send(n - 1)`` from a few client threads; returns sends per second."""
    started = time.perf_counter()
    with ThreadPoolExecutor(SUBMIT_THREADS, thread_name_prefix="bench-client") as pool:
        list(pool.map(send, range(n)))
    return n / (time.perf_counter() - started)


def payment_burst(
    ctx: Context,
    workers: WorkerSet,
    events: EventListener,
    phase: str,
    n: int,
    timeout_s: float,
    *,
    flowing: bool = True,
) -> dict[str, Any]:
    """``n`` payments, timed to the last relayed event: requested while the workers run (end
    to end from the first ``request_payment``, as judged), or without ``flowing`` requested
    with the workers held, then released (drain rate)."""
    from config.celery import PAYMENTS_QUEUE

    wait_drained(ctx.redis, PAYMENTS_QUEUE, 10)
    mine = phase + ":"

    def send(i: int) -> None:
        request(f"{phase}:{i}")

    def last_event() -> float:
        events.wait_count(phase, n, timeout_s)
        return max(a.at for o, a in events.arrivals.items() if o.startswith(mine))

    if flowing:
        burst = flowed(ctx, workers, n, lambda: submit_all(send, n), last_event)
        client_rate = burst.pop("client_per_s")
    else:
        client_rate = submit_all(send, n)
        burst = released(ctx, workers, n, last_event)
    bad = sum(
        1 for o, a in events.arrivals.items() if o.startswith(mine) and a.status != "succeeded"
    )
    return burst | {"not_succeeded": bad, "client_request_payment_per_s": client_rate}


@dataclass
class Paced:
    started: dict[str, float]  # order_id -> perf_counter when request_payment() was called
    request_ms: dict[str, float]  # order_id -> how long request_payment() took
    max_behind_s: float  # how far the submitter fell behind its schedule


def paced(
    phase: str, rate_per_s: float, n: int | None, stop: threading.Event | None = None
) -> Paced:
    """Submit at a steady ``rate_per_s``: ``n`` payments, or until ``stop`` is set."""
    result = Paced({}, {}, 0.0)
    lock = threading.Lock()
    origin = time.perf_counter() + 0.05

    def client(lane: int) -> None:
        i = lane
        while (n is None or i < n) and not (stop is not None and stop.is_set()):
            due = origin + i / rate_per_s
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            order_id = f"{phase}:{i}"
            at = time.perf_counter()
            with lock:
                result.started[order_id] = at
                result.max_behind_s = max(result.max_behind_s, -delay)
            request(order_id)
            with lock:
                result.request_ms[order_id] = (time.perf_counter() - at) * 1000
            i += SUBMIT_THREADS

    threads = [
        threading.Thread(target=client, args=(lane,), name=f"bench-paced-{lane}", daemon=True)
        for lane in range(SUBMIT_THREADS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return result


def provider_ms_by_order(phase: str) -> dict[str, float]:
    """Provider call time per payment as Tender recorded it on its attempt rows: the
    provider's own time plus Tender's hand-off to its provider loop and back."""
    from sqlalchemy import func, select

    from registry.db import get_database
    from workers.ledger.records import Payment, PaymentAttempt

    with get_database().sessions() as session:
        rows = session.execute(
            select(Payment.order_id, func.sum(PaymentAttempt.latency_ms))
            .join(PaymentAttempt, PaymentAttempt.payment_id == Payment.id)
            .where(Payment.order_id.like(f"{phase}:%"))
            .group_by(Payment.order_id)
        ).all()
    return {order_id: float(ms) for order_id, ms in rows}


def added_ms(
    started: dict[str, float], arrived: dict[str, float], provider_ms: float
) -> dict[str, float]:
    """Each payment's request -> event time (perf_counter seconds in, ms out), less the
    provider's own ``provider_ms``."""
    return {o: (arrived[o] - at) * 1000 - provider_ms for o, at in started.items()}


def added_latency(
    ctx: Context,
    events: EventListener,
    rate_per_s: float,
    seconds: float,
    phase: str = "e",
    *,
    provider_ms: float = 0.0,
) -> dict[str, Any]:
    """(e) request -> relayed event, minus provider time, at a paced rate.

    Provider time is the sandbox's own: its configured latency (``provider_ms``). The
    call time Tender records on its attempt rows also holds Tender's hand-off to its
    provider loop and back (1.2-8.6 ms on average in the seventh session's runs, at
    sandbox 0 ms), which is Tender's added latency, so it is reported, not subtracted.
    """
    n = max(int(rate_per_s * seconds), 50)
    submitted = paced(phase, rate_per_s, n)
    events.wait_count(phase, n, timeout_s=60)
    recorded = provider_ms_by_order(phase)
    origin = min(submitted.started.values())
    added = added_ms(submitted.started, {o: a.at for o, a in events.arrivals.items()}, provider_ms)
    values = list(added.values())
    slowest = sorted(added, key=added.__getitem__, reverse=True)[:5]
    return {
        "n": n,
        "rate_per_s": rate_per_s,
        "p50_ms": percentile(values, 50),
        "p95_ms": percentile(values, 95),
        "p99_ms": percentile(values, 99),
        "max_ms": max(values),
        "request_payment_p50_ms": percentile(list(submitted.request_ms.values()), 50),
        "request_payment_p99_ms": percentile(list(submitted.request_ms.values()), 99),
        "provider_ms": provider_ms,
        "recorded_call_mean_ms": statistics.fmean(recorded.values()) if recorded else 0.0,
        "submitter_max_behind_s": submitted.max_behind_s,
        # The slowest payments: when they were requested (s into the phase), their added
        # latency and how much of it was request_payment() itself.
        "slowest": [
            {
                "at_s": round(submitted.started[o] - origin, 3),
                "added_ms": round(added[o], 1),
                "request_payment_ms": round(submitted.request_ms[o], 1),
            }
            for o in slowest
        ],
    }


def hot_swap(
    ctx: Context,
    events: EventListener,
    registry: Any,
    instances: list[Any],
    swaps: int,
    rate_per_s: float,
) -> dict[str, Any]:
    """(f) commit of activate(x, exclusive=True) -> first relayed event served by x."""
    stop = threading.Event()
    streamed: list[Paced] = []
    stream = threading.Thread(
        target=lambda: streamed.append(paced("f", rate_per_s, None, stop)), daemon=True
    )
    stream.start()
    times_ms: list[float] = []
    try:
        time.sleep(0.5)
        for swap in range(swaps):
            target = instances[(swap + 1) % len(instances)]
            registry.activate(target.id, exclusive=True)
            committed = time.perf_counter()  # activate() returns right after its commit
            served = events.wait_for_instance(str(target.id), committed, timeout_s=10)
            if served is None:
                raise HarnessError(f"swap {swap}: no payment reached {target.id} within 10 s")
            times_ms.append((served - committed) * 1000)
            ctx.log(f"  swap {swap + 1}/{swaps}: {times_ms[-1]:.0f} ms")
            time.sleep(0.5 + random.random() * 0.5)  # de-phase from the registry poll
    finally:
        stop.set()
        stream.join(timeout=30)
    if not streamed:
        raise HarnessError("the hot-swap payment stream failed")
    events.wait_count("f", len(streamed[0].started), timeout_s=60)  # let the stream drain
    return {
        "swaps": swaps,
        "rate_per_s": rate_per_s,
        "p50_ms": statistics.median(times_ms),
        "max_ms": max(times_ms),
        "all_ms": [round(t, 1) for t in times_ms],
    }


def resolution(registry: Any, calls: int) -> dict[str, float]:
    """(g) registry.resolve(...) per call, cached, after warm-up."""
    keys = [f"order:{uuid.uuid4().hex}" for _ in range(calls)]
    for key in keys[:1000]:
        registry.resolve(tenant_id=None, currency=CURRENCY, idempotency_key=key)
    each: list[float] = []
    clock = time.perf_counter
    started = clock()
    for key in keys:
        t = clock()
        registry.resolve(tenant_id=None, currency=CURRENCY, idempotency_key=key)
        each.append(clock() - t)
    total = clock() - started
    return {
        "calls": calls,
        "mean_us": total / calls * 1e6,
        "p50_us": percentile(each, 50) * 1e6,
        "p99_us": percentile(each, 99) * 1e6,
        "max_us": max(each) * 1e6,
    }


def bench_connections() -> int:
    """Open PostgreSQL connections tagged with the bench's application_name."""
    from sqlalchemy import text

    from bench.environment import APPLICATION_NAME
    from registry.db import get_database

    with get_database().engine.connect() as connection:
        return int(
            connection.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
                {"name": APPLICATION_NAME},
            ).scalar_one()
        )


class ConnectionSampler:
    """Peak of :func:`bench_connections` while running (sampled every 100 ms)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-pg-sampler", daemon=True)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.peak = max(self.peak, bench_connections())
            except Exception:  # sampling is best effort; e.g. no connection slot left
                continue


def rule_resolution(
    registry: Any, calls: int, rules: int = 20, instances: int = 10
) -> dict[str, Any]:
    """(g) with routing rules (issue 37): ``registry.decide(...)`` per call, cached, with
    ``instances`` active instances and an active ruleset of ``rules`` rules of three
    conditions each, where payments match the last rule or none (every rule is read)."""
    from registry.db import get_database
    from registry.rules import RouteFacts
    from registry.rulesets import activate_ruleset, create_draft

    views = [v for v in registry.list_instances() if v.tenant_id is None]
    for n in range(len(views), instances):
        views.append(
            registry.create_instance(
                "sandbox", {"charge_book": None}, display_name=f"Rules {n}", is_active=True
            )
        )
    views = views[:instances]
    document = {
        "rules": [
            {
                "name": f"rule-{n}",
                "when": [
                    {"field": "currency", "op": "in", "value": [CURRENCY, "USD"]},
                    {"field": "amount", "op": ">=", "value": str(100 * (rules - n))},
                    {"field": "metadata.segment", "op": "=", "value": f"segment-{n}"},
                ],
                "route": [
                    {"instance": str(v.id), "priority": i % 3, "weight": 1 + i}
                    for i, v in enumerate(views[n % 3 :])
                ],
            }
            for n in range(rules)
        ],
    }
    draft = create_draft(get_database(), document, actor="bench")
    activate_ruleset(get_database(), draft.id, actor="bench")
    registry.refresh(force=True)
    segments = [f"segment-{rules - 1}", "segment-none"]
    asks = [
        RouteFacts(
            currency=CURRENCY,
            amount_minor=random.randint(100, 5_000_000),
            metadata={"segment": segments[i % 2]},
        )
        for i in range(calls)
    ]
    keys = [f"order:{uuid.uuid4().hex}" for _ in range(calls)]
    for facts, key in zip(asks[:1000], keys[:1000], strict=True):
        registry.decide(facts, tenant_id=None, idempotency_key=key)
    each: list[float] = []
    clock = time.perf_counter
    matched = 0
    for facts, key in zip(asks, keys, strict=True):
        t = clock()
        decision = registry.decide(facts, tenant_id=None, idempotency_key=key)
        each.append(clock() - t)
        matched += decision.rule is not None
    return {
        "calls": calls,
        "rules": rules,
        "instances": len(views),
        "matched": matched,
        "mean_us": sum(each) / calls * 1e6,
        "p50_us": percentile(each, 50) * 1e6,
        "p99_us": percentile(each, 99) * 1e6,
        "max_us": max(each) * 1e6,
    }
