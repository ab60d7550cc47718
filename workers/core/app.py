"""The Celery application, configured from settings (see :mod:`config.celery`)."""

from __future__ import annotations

import gc
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_ready

from config.celery import celery_options, worker_transport_options
from config.settings import get_settings
from workers.core.affinity import pin_worker


def create_app() -> Celery:
    app = Celery("tender")
    app.conf.update(celery_options(get_settings()))
    app.conf.imports = ("workers.tasks",)
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


@worker_ready.connect
def _pin_to_a_core(sender: Any = None, **_: Any) -> None:
    """A threads or solo worker keeps all its threads on one core (workers.core.affinity).

    On worker_ready, which only a real ``celery worker`` sends: an embedded test worker
    would otherwise pin the test process and every process it starts."""
    settings = get_settings()
    pin_worker(getattr(sender, "pool", None), settings.worker_cpu, settings.worker_cpu_lock_dir)


@worker_ready.connect
def _freeze_startup_objects(**_: Any) -> None:
    """Move everything built while starting (modules, Celery's and the SDKs' objects)
    out of the garbage collector's sight: a full collection otherwise walks all of it
    and stalled the worker for 45-90 ms at a time, every payment in flight with it."""
    gc.collect()
    gc.freeze()
