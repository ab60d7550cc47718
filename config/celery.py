"""Celery options derived from settings: the payment-safety knobs in one place."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from kombu import Exchange, Queue

from config.settings import Settings

PAYMENTS_QUEUE = "payments"
MAINTENANCE_QUEUE = "maintenance"
MAX_REDELIVERIES = 5  # a payment whose worker dies this often goes to `unknown` for reconcile


def celery_options(settings: Settings) -> dict[str, Any]:
    """Celery configuration for Tender's workers and beat."""
    time_limit_s = settings.task_time_limit_s
    transport: dict[str, Any] = {
        # Redis re-delivers an unacknowledged message after this; it must exceed the
        # longest task, or a slow payment would be handed to a second worker.
        "visibility_timeout": int(time_limit_s * 4),
    }
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
        # options make sure a crashed worker's message is delivered again, not lost.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
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
        "task_routes": {"tender.process_payment": {"queue": PAYMENTS_QUEUE}},
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
        },
    }
