"""Keeping a claimed payment's lease alive while this process works on it.

A claim gives the worker a lease (``payment_lease_s``); when a worker dies, its payments
are taken over once their leases expire, and the successor verifies with the provider
before anything else. The lease must outlast the work (a charge, a verify, fallbacks),
but a long lease also keeps a killed worker's payments waiting that long. So the lease is
short and renewed: one thread per process extends the leases of every payment the process
is still working on, every third of a lease, in one statement. A killed process stops
renewing, and its payments are taken over within one lease.

A renewal names the claim's token, so it never extends a lease a successor has taken.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta

from sqlalchemy import update

from providers.base import utcnow
from registry.db import Database
from workers.core.threads import niced
from workers.ledger.records import Payment
from workers.ledger.states import PaymentState

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews the leases of the claims this process holds.

    Parameters:
        database: the ledger.
        lease_s: a lease's length in seconds; renewed every ``lease_s / 3``.
    """

    def __init__(self, database: Database, lease_s: float) -> None:
        self.database = database
        self.lease_s = lease_s
        self._held: dict[uuid.UUID, uuid.UUID] = {}  # lease token -> payment id
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    @contextlib.contextmanager
    def holding(self, payment_id: uuid.UUID, token: uuid.UUID) -> Iterator[None]:
        """Keep this claim's lease alive for the duration of the block."""
        with self._lock:
            self._held[token] = payment_id
            if self._thread is None:
                self._thread = threading.Thread(
                    target=niced(self._run), name="tender-leases", daemon=True
                )
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(token, None)

    def renew(self) -> int:
        """Extend every held lease now; how many rows it extended."""
        with self._lock:
            tokens = list(self._held)
        if not tokens:
            return 0
        with self.database.transaction() as session:
            result = session.execute(
                update(Payment)
                .where(
                    Payment.lease_token.in_(tokens),
                    Payment.status == PaymentState.PROCESSING.value,
                )
                .values(lease_expires_at=utcnow() + timedelta(seconds=self.lease_s))
                .execution_options(synchronize_session=False)
            )
        return int(getattr(result, "rowcount", 0) or 0)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.renew()
            except Exception as exc:  # the database is away: the next round tries again
                if not self._failing:
                    log.warning("cannot renew payment leases: %s", type(exc).__name__)
                self._failing = True
            else:
                if self._failing:
                    log.info("payment leases renewed again")
                self._failing = False
