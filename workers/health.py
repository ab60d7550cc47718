"""Provider health: scheduled checks, the circuit, and live-failure accounting.

(Minimal for now: the beat task and the circuit land with the health issue.)
"""

from __future__ import annotations

import logging
from typing import Any

from registry.instances import InstanceView

log = logging.getLogger(__name__)


def record_live_failure(instance: InstanceView, message: str) -> None:
    """A live payment found ``instance`` unavailable (counts toward its circuit)."""
    log.warning("provider %s unavailable during a payment: %s", instance.label, message)


def health_check_all() -> dict[str, Any]:
    return {}
