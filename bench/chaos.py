"""``python -m bench.chaos [--payments 200] [--broker redis|rabbitmq] [--bound-s 30]``

The payment path under faults, end to end, on services of its own. It starts a private
Redis (no persistence) or RabbitMQ node, a private PostgreSQL cluster on spare ports
(never the machine's shared ones), two Tender workers and one beat, and a billing client
in this process that submits payments at a steady pace, a tenth of the keys again later
and some of those at the same moment from two threads. While the payments flow it
injects, one after the other:

* SIGKILL of a worker while payments are mid-charge (then a new worker);
* ambiguous timeouts: the provider charges, then does not answer (for a few seconds);
* a provider outage (the primary instance refuses; payments must fall back);
* a broker restart (Redis: killed, every message lost; RabbitMQ: stopped and started);
* a PostgreSQL restart (immediate shutdown, then a start);
* a second worker SIGKILL.

Throughout, the primary declines every seventh amount softly ("try again"), with soft-decline
retries switched on: those payments are charged again on the standby under a reference of
their own (issue 37), and none may be charged twice.

Then it waits until every payment is settled and prints one table. The run fails (exit 1)
when anything was lost, duplicated, charged twice or not at all, or when settling took
longer than ``--bound-s`` after the last fault. The provider is the sandbox with a charge
book shared by every process, so "charges at the provider" and "repeat charge attempts"
are the provider's own books.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench.environment import REPO_ROOT, HarnessError

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), Path("/usr/bin"))
SANDBOX_LATENCY_MS = 150  # long enough that a SIGKILL lands mid-charge


def soft_declined(order: int) -> bool:
    """The orders the primary declines softly (its amount: 10.00 + order NGN)."""
    return order % 7 == 3


TERMINAL = ("succeeded", "failed")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_port(port: int, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise HarnessError(f"{what} did not listen on 127.0.0.1:{port} in {timeout_s} s")


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- services of our own -------------------------------------------------------------


class PrivateRedis:
    """A Redis without persistence on a spare port: a restart loses every message."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.folder)]
        with (self.folder / "redis.log").open("ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        wait_port(self.port, 20, "Redis")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def restart(self, down_s: float) -> None:
        self.stop()  # SIGKILL: no persistence, so the queues are gone
        time.sleep(down_s)
        self.start()

    def describe(self) -> list[str]:
        """The queues as the broker holds them: waiting, and reserved but unacknowledged."""
        lines = []
        for command in (["llen", "payments"], ["llen", "maintenance"], ["hlen", "unacked"]):
            answer = subprocess.run(
                ["redis-cli", "-p", str(self.port), *command],
                capture_output=True, text=True, timeout=10, check=False,
            )  # fmt: skip
            lines.append(f"redis {' '.join(command)}: {answer.stdout.strip()}")
        return lines


class PrivateRabbit:
    """A RabbitMQ node of our own (its own name, ports and data folder)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.node = f"chaos{self.port}@localhost"
        folder = folder / "rabbitmq"
        folder.mkdir()
        (folder / "plugins").write_text("[].\n")
        if os.geteuid() == 0:  # Debian's rabbitmq-server runs the node as user rabbitmq
            for path in (folder, folder / "plugins"):
                shutil.chown(path, "rabbitmq")
        self.folder = folder
        self.env = os.environ | {
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(folder / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "plugins"),
            "RABBITMQ_PID_FILE": str(folder / "rabbit.pid"),
            "RABBITMQ_CONFIG_FILE": str(folder / "none"),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.folder / "rabbit.out").open("ab") as out:
            self.process = subprocess.Popen(
                ["rabbitmq-server"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_port(self.port, 90, "RabbitMQ")

    def stop(self) -> None:
        if self.process is None:
            return
        subprocess.run(
            ["rabbitmqctl", "-n", self.node, "stop"],
            env=self.env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def restart(self, down_s: float) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def describe(self) -> list[str]:
        """The queues and their consumers as the node holds them."""
        lines = []
        for what in (
            ["list_queues", "name", "messages_ready", "messages_unacknowledged", "consumers"],
            ["list_consumers", "queue_name", "channel_pid", "prefetch_count", "ack_required"],
            ["list_channels", "pid", "connection", "messages_unacknowledged", "consumer_count"],
        ):
            answer = subprocess.run(
                ["rabbitmqctl", "-n", self.node, "-q", *what],
                env=self.env, capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            lines += [f"rabbitmq {what[0]}: {line}" for line in answer.stdout.splitlines()]
        return lines


class PrivatePostgres:
    """A PostgreSQL cluster of our own on a spare port, run as the postgres user."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder / "pg"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.folder.mkdir()
        shutil.chown(self.folder, "postgres")
        self._as_postgres(
            str(PG_BIN / "initdb"), "-D", str(self.folder / "data"), "-A", "trust", "-U",
            "postgres",
        )  # fmt: skip

    def _as_postgres(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], capture_output=True, check=True, timeout=120)

    def _ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        self._as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.folder / "data"), "-o", options,
            "-l", str(self.folder / "log"), "-w", *args,
        )  # fmt: skip

    def start(self) -> None:
        self._ctl("start")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._ctl("stop", "-m", "immediate")

    def restart(self, down_s: float) -> None:
        self.stop()  # immediate: as a crash, no checkpoint
        time.sleep(down_s)
        self.start()


# -- Tender's processes ----------------------------------------------------------------


class Tender:
    """Workers and one beat, as separate processes on the private services."""

    def __init__(self, env: dict[str, str], folder: Path, loglevel: str = "WARNING") -> None:
        self.env = env
        self.folder = folder
        self.loglevel = loglevel
        self.workers: list[subprocess.Popen[bytes]] = []
        self.beat: subprocess.Popen[bytes] | None = None
        self.started = 0
        self.died = 0  # workers that exited without being killed: restarted, as compose would
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        threading.Thread(target=self._supervise, name="chaos-supervisor", daemon=True).start()

    def _supervise(self) -> None:
        while not self._stopping.wait(0.5):
            with self._lock:
                dead = [w for w in self.workers if w.poll() is not None]
                for worker in dead:
                    self.workers.remove(worker)
                    self.died += 1
                    log(f"a worker exited on its own (status {worker.returncode}); restarting it")
                    self.start_worker()

    def _spawn(self, *args: str, name: str) -> subprocess.Popen[bytes]:
        with (self.folder / f"{name}.log").open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "workers.core.app", *args],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_worker(self) -> None:
        self.started += 1
        arguments = ["worker", "--pool", "threads", "--concurrency", "32"]
        arguments += ["--queues", "payments,maintenance", "--hostname", f"chaos{self.started}@%h"]
        arguments += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        arguments += ["--loglevel", self.loglevel]
        self.workers.append(self._spawn(*arguments, name=f"worker{self.started}"))

    def start_beat(self) -> None:
        self.beat = self._spawn(
            "beat", "--schedule", str(self.folder / "beat-schedule"), "--loglevel", self.loglevel,
            name="beat",
        )  # fmt: skip

    def kill_worker(self) -> None:
        """SIGKILL the oldest worker (mid-charge: it always has payments in flight)."""
        with self._lock:
            victim = self.workers.pop(0)
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait(timeout=10)
            self.start_worker()

    def stop(self) -> None:
        self._stopping.set()
        for process in [*self.workers, self.beat]:
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in [*self.workers, self.beat]:
            if process is not None:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)


# -- the billing client and the event consumer ---------------------------------------


@dataclass
class Submissions:
    keys: set[str] = field(default_factory=set)
    receipts: dict[str, set[uuid.UUID]] = field(default_factory=lambda: defaultdict(set))
    retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def submit(key: str, order: int, into: Submissions, give_up_s: float = 90.0) -> None:
    """request_payment as a careful billing client calls it: again on any error, with
    the same idempotency key, until the ledger has it."""
    from workers.payments.client import request_payment

    deadline = time.monotonic() + give_up_s
    while True:
        try:
            receipt = request_payment(
                order_id=f"chaos-{order}",
                amount=Decimal("10.00") + order,
                currency="NGN",
                customer_email=f"payer{order}@example.com",
                idempotency_key=key,
            )
        except Exception:
            if time.monotonic() > deadline:
                raise
            with into.lock:
                into.retries += 1
            time.sleep(0.5)
            continue
        with into.lock:
            into.keys.add(key)
            into.receipts[key].add(receipt.payment_id)
        return


class EventConsumer(threading.Thread):
    """Payment events as a billing consumer sees them: a durable queue of its own,
    declared again on every (re)connect, deduplicated by event id."""

    def __init__(self, url: str) -> None:
        super().__init__(name="chaos-events", daemon=True)
        self.url = url
        self.events: dict[str, set[str]] = defaultdict(set)  # payment id -> event ids
        self.stopping = threading.Event()

    def run(self) -> None:
        from kombu import Connection, Exchange, Queue

        queue = Queue(
            "chaos.events",
            Exchange("tender.events", type="topic", durable=True),
            routing_key="payment.*",
            durable=True,
        )

        def on_message(body: Any, message: Any) -> None:
            if body.get("type") in ("payment.succeeded", "payment.failed"):
                self.events[str(body["payment_id"])].add(str(body["event_id"]))
            message.ack()

        while not self.stopping.is_set():
            try:
                with (
                    Connection(self.url, connect_timeout=2) as connection,
                    connection.Consumer(queue, callbacks=[on_message], accept=["json"]),
                ):
                    while not self.stopping.is_set():
                        with contextlib.suppress(socket.timeout, TimeoutError):
                            connection.drain_events(timeout=0.5)
            except Exception:
                self.stopping.wait(0.5)


# -- the run -----------------------------------------------------------------------------


@dataclass
class Report:
    rows: list[tuple[str, str, bool]]  # (measure, value, ok)
    settle_s: float
    bound_s: float
    evidence: list[str] = field(default_factory=list)  # for a failed round: what to look at

    @property
    def ok(self) -> bool:
        return all(ok for _, _, ok in self.rows)

    def print(self, title: str) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        table.add_column("measure")
        table.add_column("value", justify="right")
        table.add_column("")
        for measure, value, ok in self.rows:
            table.add_row(measure, value, "ok" if ok else "[red]WRONG[/]")
        Console().print(table)


def run(
    payments: int,
    broker: str,
    bound_s: float,
    rate: float,
    keep: bool = False,
    loglevel: str = "WARNING",
) -> Report:
    folder = Path(tempfile.mkdtemp(prefix=f"tender-chaos-{broker}-"))
    shutil.chown(folder, "postgres") if os.geteuid() == 0 else None
    os.chmod(folder, 0o755)
    services: list[Any] = []
    tender: Tender | None = None
    consumer: EventConsumer | None = None
    try:
        bus = PrivateRedis(folder) if broker == "redis" else PrivateRabbit(folder)
        database = PrivatePostgres(folder)
        for service in (bus, database):
            service.start()
            services.append(service)
        env = _environment(folder, database.url, bus.url)
        _apply(env)
        book = str(folder / "charges.db")
        primary, _standby = _register_providers(book)
        tender = Tender(env | {"PYTHONPATH": str(REPO_ROOT)}, folder, loglevel)
        for _ in range(2):
            tender.start_worker()
        tender.start_beat()
        consumer = EventConsumer(bus.url)
        consumer.start()
        time.sleep(3)  # workers connected, consumer bound

        submissions = Submissions()
        faults = _fault_plan(tender, bus, database, primary)
        last_fault_end = _submit_with_faults(payments, rate, submissions, faults)
        settled_at = _wait_settled(submissions, consumer, last_fault_end + bound_s + 60)
        restart = next(f for f in faults if "restart" in f.name and f.name[0] != "P")
        broker_back = restart.ended_at
        # Redis runs without persistence here: an event it had taken and not yet handed
        # to the consumer when it was killed is gone with it (that is Redis's loss, not
        # Tender's: production runs it append-only). Such events are counted apart.
        killed_at = datetime.now(UTC) - timedelta(seconds=time.monotonic() - restart.started_at)
        lossy = (killed_at - timedelta(seconds=2), killed_at + timedelta(seconds=0.5))
        report = _report(
            submissions, consumer, book, settled_at - last_fault_end, bound_s,
            settled_at - broker_back, lossy if broker == "redis" else None,
        )  # fmt: skip
        report.rows.insert(
            -1, ("workers that exited on their own", str(tender.died), tender.died == 0)
        )
        if not report.ok:
            report.evidence = _evidence(faults, folder)
            with contextlib.suppress(Exception):
                report.evidence += bus.describe()
        return report
    finally:
        if consumer is not None:
            consumer.stopping.set()
        if tender is not None:
            tender.stop()
        for service in reversed(services):
            with contextlib.suppress(Exception):
                service.stop()
        _forget()
        if keep:
            log(f"logs kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def _environment(folder: Path, database_url: str, broker_url: str) -> dict[str, str]:
    from cryptography.fernet import Fernet

    env = {k: v for k, v in os.environ.items() if not k.startswith("TENDER_")}
    return env | {
        "TENDER_ENV": "test",
        "TENDER_DATABASE_URL": database_url,
        "TENDER_BROKER_URL": broker_url,
        "TENDER_DATA_DIR": str(folder / "data"),
        "TENDER_SECRETS_KEY": Fernet.generate_key().decode(),
        "TENDER_WORKER_CPU": "off",
        "TENDER_RETRY_SOFT_DECLINES": '["*"]',
    }


def _apply(env: dict[str, str]) -> None:
    from config.settings import reset_settings
    from registry.db import forget_databases
    from registry.migrate import upgrade
    from workers import runtime
    from workers.core.app import reconfigure

    for name in [n for n in os.environ if n.startswith("TENDER_")]:
        del os.environ[name]
    os.environ.update({k: v for k, v in env.items() if k.startswith("TENDER_")})
    reset_settings()
    forget_databases()
    runtime.reset()
    reconfigure()
    upgrade()


def _forget() -> None:
    from registry.db import forget_databases
    from workers import runtime

    forget_databases()
    runtime.reset()


def _register_providers(book: str) -> tuple[uuid.UUID, uuid.UUID]:
    from workers import runtime

    registry = runtime.registry()
    config = {
        "charge_book": book,
        "latency_ms": SANDBOX_LATENCY_MS,
        "api_key": "sk_chaos_0123456789",
    }
    soft = [1000 + 100 * order for order in range(5000) if soft_declined(order)]
    primary = registry.create_instance(
        "sandbox", config | {"soft_decline_amounts_minor": soft}, priority=1, is_active=True
    )
    standby = registry.create_instance("sandbox", config, priority=2, is_active=True)
    return primary.id, standby.id


@dataclass
class Fault:
    at_fraction: float  # of the submission window
    name: str
    inject: Callable[[], None]
    started_at: float = 0.0  # monotonic, once injected
    ended_at: float = 0.0


def _fault_plan(tender: Tender, bus: Any, database: Any, primary: uuid.UUID) -> list[Fault]:
    from workers import runtime

    def configure(**changes: bool) -> None:
        for _ in range(60):  # the database may be restarting under us
            try:
                runtime.registry().update_config(primary, changes)
                return
            except Exception:
                time.sleep(0.5)
        raise HarnessError("could not reconfigure the primary instance")

    def kill_worker() -> None:
        tender.kill_worker()

    def ambiguous() -> None:
        configure(ambiguous_timeout=True)
        time.sleep(2)
        configure(ambiguous_timeout=False)

    def outage() -> None:
        configure(outage=True)
        time.sleep(2)
        configure(outage=False)

    return [
        Fault(0.15, "SIGKILL a worker mid-charge", kill_worker),
        Fault(0.30, "ambiguous timeouts for 2 s", ambiguous),
        Fault(0.45, "provider outage for 2 s", outage),
        Fault(
            0.60, f"{type(bus).__name__.removeprefix('Private')} restart", lambda: bus.restart(2)
        ),
        Fault(0.75, "PostgreSQL restart", lambda: database.restart(2)),
        Fault(0.90, "SIGKILL a worker mid-charge", kill_worker),
    ]


def _submit_with_faults(
    payments: int, rate: float, submissions: Submissions, faults: list[Fault]
) -> float:
    """Submit at ``rate`` per second, a tenth of the keys again later (some of them at
    once from two threads), faults injected along the way; the monotonic time the last
    fault ended."""
    keys = [f"chaos-key-{uuid.uuid4().hex[:12]}" for _ in range(payments)]
    again = random.Random(7).sample(range(payments), max(1, payments // 10))
    window_s = payments / rate
    started = time.monotonic()
    threads: list[threading.Thread] = []
    pending_faults = sorted(faults, key=lambda f: f.at_fraction)
    last_fault_end = started

    def fault_runner() -> None:
        nonlocal last_fault_end
        for fault in pending_faults:
            delay = started + fault.at_fraction * window_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            log(f"fault: {fault.name}")
            fault.started_at = time.monotonic()
            fault.inject()
            fault.ended_at = last_fault_end = time.monotonic()

    faulting = threading.Thread(target=fault_runner, name="chaos-faults")
    faulting.start()

    def spawn(key: str, order: int) -> None:
        thread = threading.Thread(target=submit, args=(key, order, submissions), daemon=True)
        thread.start()
        threads.append(thread)

    for order, key in enumerate(keys):
        time.sleep(max(started + order / rate - time.monotonic(), 0))
        spawn(key, order)
        if order in again:
            spawn(key, order)  # the same key at the same moment, from another thread
    for n, order in enumerate(again):  # and each of them once more, later
        time.sleep(max(started + window_s * n / len(again) + 0.5 - time.monotonic(), 0))
        spawn(keys[order], order)
    faulting.join()
    for thread in threads:
        thread.join(timeout=120)
    log(f"submitted {len(keys)} keys ({len(threads)} requests); last fault ended")
    return last_fault_end


def _statuses() -> dict[str, tuple[str, str]]:
    from sqlalchemy import select

    from registry.db import get_database
    from workers.ledger.records import Payment

    with get_database().sessions() as session:
        rows = session.execute(select(Payment.id, Payment.status, Payment.reference)).all()
    return {str(pid): (status, reference) for pid, status, reference in rows}


def _key_references() -> list[str]:
    from sqlalchemy import select

    from registry.db import get_database
    from workers.ledger.records import Payment

    with get_database().sessions() as session:
        keys = session.execute(select(Payment.key_reference)).scalars()
        return [key for key in keys if key is not None]


def _wait_settled(submissions: Submissions, consumer: EventConsumer, until: float) -> float:
    open_since: dict[str, float] = {}
    while time.monotonic() < until:
        with contextlib.suppress(Exception):
            statuses = _statuses()
            now = time.monotonic()
            for pid, (status, _) in statuses.items():
                if status not in TERMINAL:
                    open_since.setdefault(pid, now)
                elif pid in open_since:
                    open_since[pid] = -now  # settled at
            if len(statuses) >= len(submissions.keys) and all(
                s in TERMINAL for s, _ in statuses.values()
            ):
                _explain_last(sorted(open_since, key=lambda p: open_since[p])[:3])
                return now
        time.sleep(0.25)
    return time.monotonic()


def _explain_last(payment_ids: list[str]) -> None:
    """The history of the last payments to settle: where the time went."""
    from sqlalchemy import select

    from registry.db import get_database
    from workers.ledger.records import Payment, PaymentAttempt

    with get_database().sessions() as session:
        for pid in payment_ids:
            payment = session.get(Payment, uuid.UUID(pid))
            if payment is None:
                continue
            attempts = session.execute(
                select(PaymentAttempt).where(PaymentAttempt.payment_id == payment.id)
            ).scalars()
            steps = ", ".join(
                f"{a.operation}/{a.outcome} +{(a.created_at - payment.created_at).total_seconds():.1f}s"
                for a in attempts
            )
            total = (payment.updated_at - payment.created_at).total_seconds()
            log(
                f"settled late: {pid} {payment.status} after {total:.1f} s, claims {payment.claims}: {steps}"
            )


def _published_between(payment_ids: list[str], window: tuple[datetime, datetime]) -> set[str]:
    """Those of ``payment_ids`` whose result event the relay handed to the broker within
    ``window`` (the moments before the non-persistent broker was killed)."""
    from sqlalchemy import select

    from registry.db import get_database
    from workers.ledger.outbox import outbox_table

    wanted = set(payment_ids)
    found: set[str] = set()
    with get_database().sessions() as session:
        rows = session.execute(
            select(outbox_table.c.payload, outbox_table.c.published_at).where(
                outbox_table.c.event_type.in_(("payment.succeeded", "payment.failed"))
            )
        ).all()
    for payload, published_at in rows:
        pid = str((payload or {}).get("payment_id"))
        if pid in wanted and published_at is not None:
            log(f"no event seen for {pid}: published at {published_at:%H:%M:%S.%f}")
            if window[0] <= published_at <= window[1]:
                found.add(pid)
    return found


def _unsettled() -> str:
    from sqlalchemy import func, select

    from registry.db import get_database
    from workers.ledger.records import Payment

    with get_database().sessions() as session:
        rows = session.execute(
            select(Payment.status, Payment.error_code, func.count())
            .where(Payment.status.not_in(TERMINAL))
            .group_by(Payment.status, Payment.error_code)
        ).all()
        for payment in session.execute(
            select(Payment).where(Payment.status.not_in(TERMINAL)).limit(3)
        ).scalars():
            log(f"not settled: {payment.id} {payment.status}: {payment.error_message}")
    return ", ".join(f"{status}/{code or '-'}: {count}" for status, code, count in rows)


def _evidence(faults: list[Fault], folder: Path) -> list[str]:
    """What a failed round leaves to read: each unsettled payment with its history (rows,
    attempts, the log lines that name it, errors in the logs), and the faults' timeline
    on the same clock as the payment's."""
    from sqlalchemy import select

    from registry.db import get_database
    from workers.ledger.records import Payment, PaymentAttempt

    lines: list[str] = []
    wall_minus_mono = time.time() - time.monotonic()
    for fault in faults:
        start = time.strftime("%H:%M:%S", time.gmtime(fault.started_at + wall_minus_mono))
        lines.append(
            f"fault {fault.name}: {start} UTC, {fault.ended_at - fault.started_at:.1f} s long"
        )
    database = get_database()
    with database.sessions() as session:
        stuck = list(
            session.execute(
                select(Payment).where(Payment.status.not_in(TERMINAL)).limit(5)
            ).scalars()
        )
        for payment in stuck:
            lines.append(
                f"payment {payment.id} {payment.status}: created {payment.created_at:%H:%M:%S.%f}, "
                f"updated {payment.updated_at:%H:%M:%S.%f}, claims {payment.claims}, "
                f"lease until {payment.lease_expires_at}, error {payment.error_message!r}"
            )
            for attempt in session.execute(
                select(PaymentAttempt).where(PaymentAttempt.payment_id == payment.id)
            ).scalars():
                lines.append(
                    f"  attempt {attempt.operation}/{attempt.outcome} at {attempt.created_at:%H:%M:%S.%f}"
                )
    names = [str(payment.id) for payment in stuck]
    for log_file in sorted(folder.glob("*.log")):
        with contextlib.suppress(OSError):
            for line in log_file.read_text(errors="replace").splitlines():
                if any(name in line for name in names) or "Traceback" in line or "rror" in line:
                    lines.append(f"  {log_file.name}: {line[:300]}")
    return lines[:200]


def _report(
    submissions: Submissions,
    consumer: EventConsumer,
    book_path: str,
    settle_s: float,
    bound_s: float,
    after_broker_s: float,
    lossy: tuple[datetime, datetime] | None = None,
) -> Report:
    from sqlalchemy import func, select

    from providers.base import OutcomeStatus, retry_reference
    from providers.sandbox import ChargeBook
    from registry.db import get_database
    from workers.ledger.outbox import outbox_table
    from workers.ledger.records import Payment

    time.sleep(3)  # the last events on their way to the consumer
    statuses = _statuses()
    with get_database().sessions() as session:
        per_key = session.execute(
            select(Payment.idempotency_key, func.count()).group_by(Payment.idempotency_key)
        ).all()
        unpublished = session.execute(
            select(func.count())
            .select_from(outbox_table)
            .where(outbox_table.c.published_at.is_(None))
        ).scalar_one()
    book = ChargeBook(book_path)
    # the charges that took money (a declined charge is in the book too, as declined)
    charged = set(book.references(OutcomeStatus.SUCCEEDED))
    # a payment's charges under its own reference and a soft decline's retry reference
    twice = sum(1 for key in _key_references() if {key, retry_reference(key)} <= charged)
    retried = sum(1 for _, ref in statuses.values() if ref.endswith("-r2"))
    succeeded = {ref for status, ref in statuses.values() if status == "succeeded"}
    submitted = len(submissions.keys)
    lost = sum(1 for k in submissions.keys if k not in dict(per_key)) + sum(
        1 for status, _ in statuses.values() if status not in TERMINAL
    )
    duplicates = sum(count - 1 for _, count in per_key if count > 1)
    silent = [pid for pid in statuses if not consumer.events.get(pid)]
    lost_in_broker = _published_between(silent, lossy) if lossy and silent else set()
    events = [len(consumer.events.get(pid, ())) for pid in statuses if pid not in lost_in_broker]
    rows = [
        ("submitted (keys)", str(submitted), submitted > 0),
        ("rows", str(len(statuses)), len(statuses) == submitted),
        ("lost (no row, or not settled)", str(lost), lost == 0),
        ("duplicate rows", str(duplicates), duplicates == 0),
        ("charges at the provider", str(len(charged)), len(charged) == len(succeeded)),
        ("payments charged under both references (retries)", str(twice), twice == 0),
        ("soft declines charged again elsewhere (informational)", str(retried), True),
        ("repeat charge attempts", str(book.refused_repeats()), book.refused_repeats() == 0),
        ("succeeded without a charge", str(len(succeeded - charged)), not succeeded - charged),
        ("charged but not succeeded", str(len(charged - succeeded)), not charged - succeeded),
        (
            "events per payment (min-max)",
            f"{min(events, default=0)}-{max(events, default=0)}",
            bool(events) and min(events) == max(events) == 1,
        ),
        ("unpublished events", str(unpublished), unpublished == 0),
        (
            "events Redis lost in its restart (no persistence; informational)",
            str(len(lost_in_broker)),
            True,
        ),
        ("seconds to settle after the last fault", f"{settle_s:.1f}", settle_s <= bound_s),
        (
            "seconds to settle after the broker returned",
            f"{after_broker_s:.1f}",
            after_broker_s <= bound_s,
        ),
        ("client retries (informational)", str(submissions.retries), True),
    ]
    unsettled = _unsettled()
    if unsettled:
        rows.append(("not settled, by state (informational)", unsettled, True))
    return Report(rows, settle_s, bound_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--payments", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0, help="payments per second")
    parser.add_argument("--broker", choices=("redis", "rabbitmq", "both"), default="both")
    parser.add_argument(
        "--bound-s", type=float, default=30.0, help="settling bound after the last fault"
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs and data folder")
    parser.add_argument("--loglevel", default="WARNING", help="the workers' and beat's")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds per broker; prints the settle times' spread"
    )
    args = parser.parse_args(argv)
    brokers = ("redis", "rabbitmq") if args.broker == "both" else (args.broker,)
    failed = False
    summaries: list[str] = []
    for broker in brokers:
        settles: list[float] = []
        failures: list[tuple[int, Report]] = []
        for round_no in range(1, args.repeat + 1):
            log(
                f"{broker}, round {round_no}/{args.repeat}: {args.payments} payments at {args.rate:g}/s"
            )
            report = run(args.payments, broker, args.bound_s, args.rate, args.keep, args.loglevel)
            report.print(f"chaos, {broker}: {args.payments} payments, round {round_no}")
            settles.append(report.settle_s)
            if not report.ok:
                failures.append((round_no, report))
                for line in report.evidence:
                    log(f"evidence, {broker} round {round_no}: {line}")
        failed |= bool(failures)
        summaries.append(_spread(broker, settles, failures))
    if args.repeat > 1:
        for summary in summaries:
            print(summary)
    return 1 if failed else 0


def _spread(broker: str, settles: list[float], failures: list[tuple[int, Report]]) -> str:
    """One line per broker: rounds, failed rounds, settle time p50 / p95 / max."""
    ordered = sorted(settles)

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    failed = ", ".join(
        f"round {n} ({'; '.join(m for m, _, ok in r.rows if not ok)})" for n, r in failures
    )
    return (
        f"chaos {broker}: {len(settles)} rounds, {len(failures)} failed{': ' + failed if failed else ''}; "
        f"settle after the last fault p50 {quantile(0.5):.1f} s, p95 {quantile(0.95):.1f} s, "
        f"max {ordered[-1]:.1f} s"
    )


if __name__ == "__main__":
    sys.exit(main())
