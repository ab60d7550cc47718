"""This process's long-lived objects: provider loop, registry, ledger writer, event relay.

Each is built on first use and again after a fork (a prefork child must not share its
parent's sockets or loop). Task bodies, webhooks, refunds and health checks take them
from here, so one worker process shares one of each.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from celery.signals import worker_process_init

from config.settings import get_settings
from registry.db import forget_databases, get_database
from registry.service import PluginRegistry
from workers.core.app import app
from workers.core.threads import ProviderLoop
from workers.events.relay import EventPublisher, EventRelay
from workers.ledger.group_commit import LedgerWriter
from workers.ledger.leases import LeaseKeeper
from workers.ledger.outcomes import OutcomeWindow

T = TypeVar("T")

_lock = threading.RLock()  # event_relay() builds ledger_writer() under it
_state: dict[str, Any] = {}


def _current() -> dict[str, Any]:
    if _state.get("pid") != os.getpid():
        _state.clear()
        _state["pid"] = os.getpid()
    return _state


def _per_process(key: str, build: Callable[[], T]) -> T:
    """This process's one ``key`` object, built on first use (again after a fork)."""
    with _lock:
        state = _current()
        if key not in state:
            state[key] = build()
        built: T = state[key]
        return built


def provider_loop() -> ProviderLoop:
    return _per_process("loop", ProviderLoop)


def registry() -> PluginRegistry:
    """This process's registry (cached plugins, hot-swap polling), reading the ledger's
    windowed outcomes for success-rate routing."""
    return _per_process("registry", _registry_with_outcomes)


def _registry_with_outcomes() -> PluginRegistry:
    built = PluginRegistry()
    settings = get_settings()
    built.outcomes = OutcomeWindow(
        built.database,
        built.catalogue,
        built.segment_fields,
        window_s=settings.routing_window_s,
        refresh_s=settings.routing_stats_s,
    )
    return built


def event_relay() -> EventRelay:
    """This process's background event relay (see workers.events.relay.EventRelay)."""
    return _per_process(
        "relay", lambda: EventRelay(get_database(), EventPublisher(app), ledger_writer())
    )


def ledger_writer() -> LedgerWriter:
    """This process's group-committing ledger writer (see workers.ledger.group_commit)."""
    return _per_process("writer", lambda: LedgerWriter(get_database(), batched=True))


def lease_keeper() -> LeaseKeeper:
    """This process's lease renewer (see workers.ledger.leases)."""
    return _per_process(
        "leases", lambda: LeaseKeeper(get_database(), get_settings().payment_lease_s)
    )


def close_retired_plugins() -> None:
    """Close plugin objects replaced by a config change (their pools)."""
    reg = _current().get("registry")
    if reg is None:
        return
    # Wait out any call still running on a replaced plugin (calls are bounded by the
    # provider timeout; verify after a timeout doubles it).
    for plugin in reg.drain_retired(grace_s=2 * get_settings().provider_timeout_s + 5):
        with contextlib.suppress(Exception):  # closing is best effort
            provider_loop().run(plugin.aclose(), timeout_s=5)


def reset() -> None:
    """Forget the runtime (after fork, or between tests)."""
    with _lock:
        held = _state.get("registry")
        if held is not None and isinstance(held.outcomes, OutcomeWindow):
            held.outcomes.stop()  # its thread, if it started, reads a database no more
        _state.clear()


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    """A forked worker child must not share its parent's DB sockets or event loop."""
    forget_databases(close=False)
    reset()
