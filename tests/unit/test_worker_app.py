"""The worker's start-up hooks on the Celery app."""

from __future__ import annotations

import gc

from celery.signals import worker_ready

import workers.app  # noqa: F401 - connects the app's signal handlers


def test_a_ready_worker_freezes_its_start_up_objects() -> None:
    """Full collections then skip everything built while starting (a 60-90 ms stall
    each, with every payment in flight, before)."""
    gc.unfreeze()
    try:
        worker_ready.send(sender=None)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
