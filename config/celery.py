"""Celery options derived from settings: the payment-safety knobs in one place."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from kombu import Exchange, Queue

from config.settings import Settings

PAYMENTS_QUEUE = "payments"
PROCESS_PAYMENT = "tender.process_payment"  # the payment task's name, routed to PAYMENTS_QUEUE
REQUEUE_LOST = "tender.requeue_lost"  # the requeue sweep (workers.payments.reconcile)
MAINTENANCE_QUEUE = "maintenance"
MAX_REDELIVERIES = 5  # a payment whose worker dies this often goes to `unknown` for reconcile


def visibility_timeout_s(settings: Settings) -> int:
    """How long Redis waits before it re-delivers an unacknowledged message.

    It must exceed the longest a reserved message can stay unacked while its worker is
    alive, or a slow payment would be handed to a second worker as well. A pool of N
    threads reserves N x multiplier messages and runs them in order, N at a time, each
    within the task time limit: the last waits (multiplier - 1) limits, then runs one.
    Two more limits are the margin (4 x the limit at the default multiplier of 2).
    """
    return int(settings.task_time_limit_s * (settings.worker_prefetch_multiplier + 2))


def worker_transport_options(settings: Settings, broker_url: str) -> dict[str, Any]:
    """Transport options for a worker's broker connections, over the app's.

    Only ``worker_redis_ack_emulation`` so far, and only when ``broker_url`` (the app's,
    which ``celery -b`` may have overridden) is Redis: other processes (an ``events
    tail``, a billing consumer built on this app) keep kombu's ack emulation, since
    nothing else would bring back an event their queue lost.
    """
    redis = broker_url.startswith(("redis://", "rediss://", "redis+socket://", "sentinel://"))
    if redis and not settings.worker_redis_ack_emulation:
        return {"ack_emulation": False}
    return {}


def celery_options(settings: Settings) -> dict[str, Any]:
    """Celery configuration for Tender's workers and beat."""
    time_limit_s = settings.task_time_limit_s
    transport: dict[str, Any] = {"visibility_timeout": visibility_timeout_s(settings)}
    if settings.embedded_broker:
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport |= {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": 0.05,
        }
    return {
        "broker_url": settings.resolved_broker_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        # At most once per payment comes from SQL (claims and compare-and-set); these
        # options make sure a crashed worker's message is delivered again, not lost (on
        # RabbitMQ, and on Redis with its ack emulation, the default; without it,
        # reconcile enqueues the payment again).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A thread pool of N reserves N x multiplier messages. Every one stays unacked
        # until its task ends, so a warm shutdown gives them back, and so does a crash
        # under Redis's ack emulation (see worker_transport_options).
        "worker_prefetch_multiplier": settings.worker_prefetch_multiplier,
        # Off: after a broker reconnect Celery lowers the prefetch count and raises it
        # again from each task's ack, which on the threads pool sends AMQP basic.qos from
        # a pool thread while the consumer thread reads the same py-amqp connection. The
        # two readers deadlock and the worker holds its reserved payments unprocessed
        # while the broker keeps handing it more (issue 32: the RabbitMQ chaos round's
        # payment stuck `requested`; both threads seen blocked in basic_qos). Without the
        # reduction a reconnected worker may reserve its full prefetch at once, which is
        # what it does on a first connect anyway.
        "worker_enable_prefetch_count_reduction": False,
        "task_time_limit": time_limit_s,
        "task_soft_time_limit": max(time_limit_s - 10, time_limit_s * 0.9),
        "task_queues": (
            Queue(
                PAYMENTS_QUEUE, Exchange(PAYMENTS_QUEUE), routing_key=PAYMENTS_QUEUE, durable=True
            ),
            Queue(
                MAINTENANCE_QUEUE,
                Exchange(MAINTENANCE_QUEUE),
                routing_key=MAINTENANCE_QUEUE,
                durable=True,
            ),
        ),
        "task_default_queue": MAINTENANCE_QUEUE,
        "task_routes": {PROCESS_PAYMENT: {"queue": PAYMENTS_QUEUE}},
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "worker_disable_rate_limits": True,
        "beat_schedule_filename": str((settings.data_dir / "beat-schedule").resolve()),
        "beat_schedule": {
            "health-check-all": {
                "task": "tender.health_check_all",
                "schedule": timedelta(seconds=settings.health_interval_s),
                "options": {"expires": settings.health_interval_s},
            },
            "requeue-lost": {
                "task": REQUEUE_LOST,
                "schedule": timedelta(seconds=settings.requeue_interval_s),
                "options": {"expires": settings.requeue_interval_s},
            },
            "reconcile": {
                "task": "tender.reconcile",
                "schedule": timedelta(seconds=settings.reconcile_interval_s),
                "options": {"expires": settings.reconcile_interval_s},
            },
            "relay-outbox": {
                "task": "tender.relay_outbox",
                "schedule": timedelta(seconds=settings.relay_interval_s),
                "options": {"expires": settings.relay_interval_s},
            },
            "check-experiments": {
                "task": "tender.check_experiments",
                "schedule": timedelta(seconds=settings.experiment_check_s),
                "options": {"expires": settings.experiment_check_s},
            },
        },
    }
