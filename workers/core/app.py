"""The Celery application, configured from settings (see :mod:`config.celery`)."""

from __future__ import annotations

import gc
import logging
from typing import Any

from celery import Celery, bootsteps
from celery.signals import after_setup_logger, after_setup_task_logger, worker_init, worker_ready

from config.celery import REQUEUE_LOST, celery_options, worker_transport_options
from config.logging import install as install_log_handler
from config.settings import get_settings
from workers.core import broker_transport, metrics
from workers.core.affinity import pin_worker

log = logging.getLogger(__name__)


class RequeueOnConnect(bootsteps.StartStopStep):
    """Each time a worker's consumer (re)connects to the broker, it asks for a requeue
    sweep at once (``tender.requeue_lost``): a broker that came back may have lost its
    messages, and beat's next sweep could be seconds away. The sweep runs under a lock,
    so a fleet reconnecting together sweeps once."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        try:
            c.app.send_task(REQUEUE_LOST, ignore_result=True)
        except Exception as exc:  # the broker went again: beat's sweep will come
            log.info("could not ask for a requeue sweep on connecting: %s", type(exc).__name__)


def _choose_transport(celery_app: Celery) -> None:
    """Redis brokers go through Tender's Redis transport (workers.core.broker_transport)."""
    celery_app.conf.broker_transport = broker_transport.for_url(str(celery_app.conf.broker_url))


def create_app() -> Celery:
    app = Celery("tender")
    app.conf.update(celery_options(get_settings()))
    _choose_transport(app)
    app.conf.imports = ("workers.tasks",)
    app.steps["consumer"].add(RequeueOnConnect)
    return app


app = create_app()


def reconfigure() -> None:
    """Re-read settings into the app after the environment changed (CLI, tests).

    Drops pooled broker connections so the next publish uses the new broker URL.
    """
    if app._pool is not None:
        app._pool.force_close_all()
        app._pool = None
    app.amqp._producer_pool = None
    app.conf.update(celery_options(get_settings()))
    _choose_transport(app)
    if _worker_options:  # in a worker process: keep what its start gave it
        _apply_worker_options(app)


# Set when this process starts a worker (see _worker_transport); empty elsewhere.
_worker_options: dict[str, Any] = {}


@worker_init.connect
def _worker_transport(sender: Any = None, **_: Any) -> None:
    """A worker process's connections get the worker-only transport options
    (config.celery), set before its consumer connects; other processes keep the app's."""
    if sender is None:
        return
    conf = sender.app.conf
    _worker_options.update(worker_transport_options(get_settings(), str(conf.broker_url)))
    _apply_worker_options(sender.app)


def _apply_worker_options(celery_app: Celery) -> None:
    conf = celery_app.conf
    conf.broker_transport_options = {**conf.broker_transport_options, **_worker_options}


def _connection_errors() -> tuple[type[BaseException], ...]:
    """The errors of a broker or database that is away: expected, and said in one line."""
    import kombu.exceptions
    import redis.exceptions
    import sqlalchemy.exc

    return (
        ConnectionError,
        TimeoutError,
        kombu.exceptions.OperationalError,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
    )


class OneLineOutages(logging.Filter):
    """A record carrying a broker or database connection error keeps its message and the
    error's first line, without the traceback chain (Celery's consumer logs six frames
    deep for every lost connection): an outage is an expected event, not a bug."""

    def __init__(self) -> None:
        super().__init__()
        self.expected = _connection_errors()

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and self._outage(error):
            cause = str(error).strip().splitlines()
            record.msg = (
                f"{record.getMessage()} ({type(error).__name__}: {cause[0] if cause else ''})"
            )
            record.args = None
            record.exc_info = record.exc_text = None
        return True

    def _outage(self, error: BaseException | None) -> bool:
        """A connection error, or one raised while handling one (beat's SchedulingError)."""
        for _ in range(6):
            if error is None:
                return False
            if isinstance(error, self.expected):
                return True
            error = error.__cause__ or error.__context__
        return False


@after_setup_logger.connect
@after_setup_task_logger.connect
def _quiet_outages(logger: logging.Logger | None = None, **_: Any) -> None:
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, OneLineOutages) for f in handler.filters):
            handler.addFilter(OneLineOutages())
        install_log_handler(handler)  # payment context, secrets masked, JSON if configured


@worker_ready.connect
def _pin_to_a_core(sender: Any = None, **_: Any) -> None:
    """A threads or solo worker keeps all its threads on one core (workers.core.affinity).

    On worker_ready, which only a real ``celery worker`` sends: an embedded test worker
    would otherwise pin the test process and every process it starts."""
    settings = get_settings()
    pin_worker(getattr(sender, "pool", None), settings.worker_cpu, settings.worker_cpu_lock_dir)


@worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    """Each real worker process serves its metrics (workers.core.metrics); the embedded
    test worker does not send worker_ready, and its tests read the process's registry."""
    settings = get_settings()
    if settings.metrics_port:
        metrics.serve(settings.metrics_port, settings.metrics_addr)


@worker_ready.connect
def _freeze_startup_objects(**_: Any) -> None:
    """Move everything built while starting (modules, Celery's and the SDKs' objects)
    out of the garbage collector's sight: a full collection otherwise walks all of it
    and stalled the worker for 45-90 ms at a time, every payment in flight with it."""
    gc.collect()
    gc.freeze()
