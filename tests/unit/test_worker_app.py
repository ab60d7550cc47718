"""The worker's start-up hooks on the Celery app."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from celery import Celery
from celery.signals import worker_init, worker_ready

import workers.core.app  # connects the app's signal handlers
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

    def __init__(self, app: Celery) -> None:
        self.app = app


@pytest.fixture
def worker_options(tender_env: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process's worker-only options, fresh, and put back afterwards."""
    fresh: dict[str, str] = {}
    monkeypatch.setattr(workers.core.app, "_worker_options", fresh)
    return fresh


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
    worker_options: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    broker: str,
    setting: str | None,
    expected: bool | None,
) -> None:
    if setting is not None:
        monkeypatch.setenv("TENDER_WORKER_REDIS_ACK_EMULATION", setting)
    reset_settings()
    # the worker's own app and broker (``celery -b`` may differ from TENDER_BROKER_URL)
    probe = Celery("probe", broker=broker, set_as_current=False)
    probe.conf.broker_transport_options = {"visibility_timeout": 1200}
    worker_init.send(sender=_Sender(probe))
    options = probe.conf.broker_transport_options
    assert options.get("ack_emulation") is expected
    assert options["visibility_timeout"] == 1200  # the app's own options stay
    # only the worker's app changed, not Tender's app in this (non-worker) process
    assert "ack_emulation" not in workers.core.app.app.conf.broker_transport_options


def test_reconfiguring_a_worker_keeps_its_worker_options(
    worker_options: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENDER_BROKER_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("TENDER_WORKER_REDIS_ACK_EMULATION", "false")
    reset_settings()
    workers.core.app.reconfigure()
    app = workers.core.app.app
    worker_init.send(sender=_Sender(app))
    assert app.conf.broker_transport_options["ack_emulation"] is False
    workers.core.app.reconfigure()  # re-reads settings into the app: the worker keeps its options
    assert app.conf.broker_transport_options["ack_emulation"] is False
