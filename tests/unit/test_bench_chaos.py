"""The chaos harness's own bookkeeping: an event the non-persistent Redis took and lost in
its restart is told apart from an event Tender never delivered."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import insert

from bench.chaos import _published_between, _spread
from providers.base import utcnow
from registry.db import get_database
from workers.ledger.outbox import outbox_table


def test_only_events_published_just_before_the_kill_count_as_the_brokers_loss(
    sqlite_url: str,
) -> None:
    killed_at = utcnow()
    before_kill, long_before = str(uuid.uuid4()), str(uuid.uuid4())
    with get_database().transaction() as session:
        for pid, published_at in (
            (before_kill, killed_at - timedelta(seconds=0.2)),
            (long_before, killed_at - timedelta(seconds=30)),
        ):
            session.execute(
                insert(outbox_table).values(
                    event_id=uuid.uuid4(),
                    event_type="payment.succeeded",
                    payload={"payment_id": pid},
                    created_at=published_at,
                    published_at=published_at,
                )
            )
    window = (killed_at - timedelta(seconds=2), killed_at + timedelta(seconds=0.5))
    assert _published_between([before_kill, long_before], window) == {before_kill}


def test_the_spread_line_names_failed_rounds() -> None:
    line = _spread("redis", [8.2, 12.7, 4.1], [])
    assert line.startswith("chaos redis: 3 rounds, 0 failed;") and "max 12.7 s" in line
