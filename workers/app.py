"""The Celery application, configured from settings (see :mod:`config.celery`)."""

from __future__ import annotations

import gc
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready

from config.celery import celery_options, worker_transport_options
from config.settings import get_settings


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


@worker_init.connect
def _worker_transport(sender: Any = None, **_: Any) -> None:
    """A worker's consumer gets the worker-only transport options (config.celery), set
    before it connects; clients and other consumers of this app keep the app's."""
    options = worker_transport_options(get_settings())
    if options and sender is not None:
        conf = sender.app.conf
        conf.broker_transport_options = {**conf.broker_transport_options, **options}


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    """A forked worker child must not share its parent's DB sockets or event loop."""
    from registry.db import forget_databases
    from workers import runtime

    forget_databases(close=False)
    runtime.reset()


@worker_ready.connect
def _freeze_startup_objects(**_: Any) -> None:
    """Move everything built while starting (modules, Celery's and the SDKs' objects)
    out of the garbage collector's sight: a full collection otherwise walks all of it
    and stalled the worker for 45-90 ms at a time, every payment in flight with it."""
    gc.collect()
    gc.freeze()
