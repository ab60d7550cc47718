"""The worker's start-up hooks on the Celery app."""

from __future__ import annotations

import gc

import pytest
from celery.signals import worker_init, worker_ready

import workers.app  # connects the app's signal handlers
from config.settings import reset_settings


def test_a_ready_worker_freezes_its_start_up_objects() -> None:
    """Full collections then skip everything built while starting (a 60-90 ms stall
    each, with every payment in flight, before)."""
    gc.unfreeze()
    try:
        worker_ready.send(sender=None)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


class _Sender:
    """What ``worker_init`` hands its handlers: the WorkController, with its app."""

    def __init__(self, broker_url: str) -> None:
        from celery import Celery

        self.app = Celery("probe", broker=broker_url, set_as_current=False)
        self.app.conf.broker_transport_options = {"visibility_timeout": 1200}


@pytest.mark.parametrize(
    ("broker", "setting", "expected"),
    [
        ("redis://127.0.0.1:6379/0", "false", False),
        ("redis://127.0.0.1:6379/0", "true", None),
        ("redis://127.0.0.1:6379/0", None, None),  # the default keeps Redis's unacked copies
        ("amqp://guest:guest@127.0.0.1:5672//", "false", None),  # RabbitMQ acks natively
    ],
)
def test_a_worker_drops_redis_ack_emulation_only_when_told(
    monkeypatch: pytest.MonkeyPatch, broker: str, setting: str | None, expected: bool | None
) -> None:
    monkeypatch.setenv("TENDER_BROKER_URL", broker)
    if setting is None:
        monkeypatch.delenv("TENDER_WORKER_REDIS_ACK_EMULATION", raising=False)
    else:
        monkeypatch.setenv("TENDER_WORKER_REDIS_ACK_EMULATION", setting)
    reset_settings()
    sender = _Sender(broker)
    try:
        worker_init.send(sender=sender)
        options = sender.app.conf.broker_transport_options
        assert options.get("ack_emulation") is expected
        assert options["visibility_timeout"] == 1200  # the app's own options stay
        # the options of the app's other users are untouched: only the worker's changed
        assert "ack_emulation" not in workers.app.app.conf.broker_transport_options
    finally:
        reset_settings()
