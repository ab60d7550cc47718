"""The baseline tasks, registered on Tender's own Celery app (same broker, same settings).

Workers load this module with ``--include bench.tasks``; the harness sends the tasks to
the ``payments`` queue so every phase goes through the same queue and options.
"""

from __future__ import annotations

import asyncio
import os
import uuid

from providers.base import PaymentRequest
from providers.sandbox import SandboxProvider
from workers.core.app import app

NAIVE_EMAIL = "payer@example.com"

_sandboxes: dict[int, SandboxProvider] = {}  # per process, by latency_ms

if os.environ.get("BENCH_STAGES_DIR"):  # python -m bench.stages: stamp each payment's stages
    from bench.probe import install_probe

    install_probe(os.environ["BENCH_STAGES_DIR"])


@app.task(name="bench.noop")
def noop() -> None:
    """(a) The ceiling: a task that does nothing."""


@app.task(name="bench.naive_charge")
def naive_charge(reference: str, amount_minor: int, currency: str, latency_ms: int) -> str:
    """(b) The naive way: the sandbox called directly, a fresh event loop per task,
    no registry, no ledger, no events."""
    sandbox = _sandboxes.get(latency_ms)
    if sandbox is None:
        sandbox = SandboxProvider()
        sandbox.configure({"latency_ms": latency_ms, "charge_book": None})
        _sandboxes[latency_ms] = sandbox
    request = PaymentRequest(
        payment_id=uuid.uuid4(),
        reference=reference,
        order_id=reference,
        amount_minor=amount_minor,
        currency=currency,
        customer_email=NAIVE_EMAIL,
    )
    return asyncio.run(sandbox.process_payment(request)).status.value
