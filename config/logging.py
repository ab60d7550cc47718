"""Logging setup: one line per record, secrets never formatted in (see registry.secrets)."""

from __future__ import annotations

import logging

from config.settings import get_settings

FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def configure_logging(level: str | None = None) -> None:
    """Configure the root logger once (idempotent)."""
    root = logging.getLogger()
    if getattr(root, "_tender_configured", False):
        return
    logging.basicConfig(level=level or get_settings().log_level, format=FORMAT)
    for noisy in ("httpx", "httpcore", "amqp", "kombu"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    root._tender_configured = True  # type: ignore[attr-defined]
