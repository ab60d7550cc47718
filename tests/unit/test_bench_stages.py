"""``bench.stages``: the probe stamps a payment's stages in order, and the breakdown splits
each payment's time into stages that add up to its total."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from celery import signals

from bench.probe import install_probe
from bench.stages import STAGES, breakdown, read_stamps
from config.settings import get_settings
from registry.db import get_database
from workers import runtime
from workers.events.relay import InlineRelay
from workers.payments.client import _validated, record_payment
from workers.payments.processor import Done, PaymentProcessor


class NoPublisher:
    def publish(self, rows: object) -> None:
        pass


def test_the_probe_stamps_each_stage_of_a_payment_in_order(sqlite_url: str, tmp_path: Path) -> None:
    runtime.registry().create_instance(
        "sandbox", {"charge_book": str(tmp_path / "book.db")}, is_active=True
    )
    fields = _validated("o-1", "10.00", "NGN", "ada@example.com", "card", None, None, None)
    payment, _ = record_payment(get_database(), fields)
    processor = PaymentProcessor(
        get_database(),
        runtime.registry(),
        runtime.provider_loop(),
        InlineRelay(get_database(), NoPublisher()),  # type: ignore[arg-type]
        get_settings(),
    )
    task = SimpleNamespace(name="tender.process_payment")
    stamps_dir = tmp_path / "stamps"
    stamps_dir.mkdir()

    remove = install_probe(str(stamps_dir))
    try:
        # what the consumer thread, then the task thread, would send
        signals.task_received.send(
            None, request=SimpleNamespace(name=task.name, args=[str(payment.id)])
        )
        signals.task_prerun.send(None, task=task, args=[str(payment.id)])
        assert isinstance(processor.process(payment.id), Done)
    finally:
        remove()

    stamped = read_stamps(stamps_dir)[str(payment.id)]
    order = ["received", "started", "claimed", "charged", "finished"]
    assert sorted(stamped, key=stamped.__getitem__) == order
    # removed: a second payment is not stamped
    other, _ = record_payment(
        get_database(),
        _validated("o-2", "10.00", "NGN", "ada@example.com", "card", None, None, None),
    )
    signals.task_prerun.send(None, task=task, args=[str(other.id)])
    processor.process(other.id)
    assert str(other.id) not in read_stamps(stamps_dir)


def _path(requested: float, *gaps_ms: float) -> dict[str, float]:
    names = [STAGES[0][1]] + [to for _, _, to in STAGES]
    times = [requested]
    for gap in gaps_ms:
        times.append(times[-1] + gap / 1000)
    return dict(zip(names, times, strict=True))


def test_the_breakdown_bands_payments_by_total_and_its_stages_add_up() -> None:
    fast = [_path(i, 5, 1, 2, 1, 2, 3) for i in range(98)]  # 14 ms each
    slow = [_path(200, 300, 1, 2, 1, 2, 3), _path(201, 5, 1, 400, 1, 2, 3)]
    incomplete = {"requested": 0.0}  # its event never came: left out

    rows = breakdown([*slow, *fast, incomplete])

    assert [label for label, *_ in rows] == ["fastest 50%", "50-95%", "95-99%", "slowest 1%"]
    assert sum(n for _, n, _, _ in rows) == 100
    for _, _, total, stages in rows:
        assert sum(stages) == pytest.approx(total)
    _, n, total, stages = rows[-1]
    assert (n, total) == (1, pytest.approx(412.0))  # the claim that took 400 ms
    assert stages[2] == pytest.approx(400.0)
    assert rows[0][3][0] == pytest.approx(5.0)
