"""The stage probe ``python -m bench.stages`` installs in each bench worker process.

``bench.tasks`` installs it when ``BENCH_STAGES_DIR`` is set, by wrapping three methods and
connecting two signals; Tender's own code has no trace of it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from config.celery import PROCESS_PAYMENT as PAYMENT_TASK


def install_probe(directory: str) -> Callable[[], None]:
    """Stamp each payment's stages in this process; write them to ``directory`` each
    second. Returns a function that takes the probe out again (after a last write)."""
    from celery import signals

    import workers.payments.processor as payments
    from workers.core import threads

    stamps: list[tuple[str, str, float]] = []  # list.append is atomic: no lock
    current = threading.local()
    clock = time.perf_counter
    originals: list[tuple[Any, str, Any]] = []
    stopping = threading.Event()
    path = Path(directory) / f"{os.getpid()}.jsonl"

    def received(request: Any = None, **_: Any) -> None:
        if request.name == PAYMENT_TASK and request.args:
            stamps.append((str(request.args[0]), "received", clock()))

    def started(task: Any = None, args: Any = None, **_: Any) -> None:
        current.payment = str(args[0]) if task.name == PAYMENT_TASK else None
        if current.payment:
            stamps.append((current.payment, "started", clock()))

    def after(owner: Any, name: str, stamp: str) -> None:
        original: Callable[..., Any] = getattr(owner, name)
        originals.append((owner, name, original))

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            payment = getattr(current, "payment", None)
            if payment:
                stamps.append((payment, stamp, clock()))
            return result

        setattr(owner, name, wrapper)

    def write() -> None:
        taken = len(stamps)
        if taken:
            lines = "".join(json.dumps(s) + "\n" for s in stamps[:taken])
            del stamps[:taken]
            with path.open("a") as out:
                out.write(lines)

    def flush() -> None:
        while not stopping.wait(1):
            write()

    def remove() -> None:
        signals.task_received.disconnect(received)
        signals.task_prerun.disconnect(started)
        for owner, name, original in originals:
            setattr(owner, name, original)
        stopping.set()
        thread.join()
        write()

    signals.task_received.connect(received, weak=False)
    signals.task_prerun.connect(started, weak=False)
    after(payments.LedgerWriter, "claim", "claimed")
    after(threads.ProviderLoop, "run", "charged")
    after(payments.LedgerWriter, "finish", "finished")
    thread = threading.Thread(target=flush, name="bench-stages", daemon=True)
    thread.start()
    return remove
