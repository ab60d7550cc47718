"""Logging: readable lines by default, JSON lines when ``TENDER_LOG_FORMAT=json``, the
payment a line is about on every line, and no secret on any line.

* **Context.** Code working on a payment opens :func:`log_context` (payment id, tenant,
  reference) and adds the instance once chosen (:func:`bind_log_context`); every record
  logged inside carries them, as JSON fields or as a ``[payment_id=... ...]`` suffix.
* **Redaction.** Every secret a process holds is registered when its plugin is configured
  (:func:`remember_secrets`); :class:`RedactSecrets` masks any of them in a record's message,
  arguments and traceback before any handler formats it, whatever logged it.

:func:`install` puts both filters and the formatter on a handler; Celery's handlers get them
through its logging signals (``workers.core.app``), ``tender api`` and the CLI through
:func:`configure_logging`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from config.settings import get_settings

FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
CONTEXT_FIELDS = ("payment_id", "tenant", "instance", "reference")
MASK = "****"
MIN_SECRET_LENGTH = 8  # shorter values are not treated as secrets (they would mask words)

_context: ContextVar[dict[str, str] | None] = ContextVar("tender_log_context", default=None)
_secrets: frozenset[str] = frozenset()
_secrets_lock = threading.Lock()


# --- context -------------------------------------------------------------------------------


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Fields every record logged inside carries (``None`` values are left out)."""
    current = _context.get() or {}
    token = _context.set(current | {k: str(v) for k, v in fields.items() if v is not None})
    try:
        yield
    finally:
        _context.reset(token)


def bind_log_context(**fields: object) -> None:
    """Add fields to the innermost :func:`log_context` (the instance, once chosen)."""
    current = _context.get()
    if current is not None:
        current.update({k: str(v) for k, v in fields.items() if v is not None})


class AddContext(logging.Filter):
    """Puts the log context on the record: as attributes (JSON keeps them as fields) and,
    for readable lines, as a ``[payment_id=...]`` suffix of the message."""

    def __init__(self, *, suffix: bool) -> None:
        super().__init__()
        self.suffix = suffix

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _context.get()
        if not fields or getattr(record, "_tender_context", False):
            return True
        for name, value in fields.items():
            setattr(record, name, value)
        if self.suffix:
            shown = " ".join(f"{k}={fields[k]}" for k in CONTEXT_FIELDS if k in fields)
            record.msg = f"{record.getMessage()} [{shown}]"
            record.args = None
        record._tender_context = True
        return True


# --- redaction -----------------------------------------------------------------------------


def remember_secrets(values: list[str] | tuple[str, ...]) -> None:
    """Secrets this process holds (a configured plugin's keys): never to be logged."""
    global _secrets
    fresh = {v for v in values if v and len(v) >= MIN_SECRET_LENGTH} - _secrets
    if fresh:
        with _secrets_lock:
            _secrets = _secrets | fresh


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactSecrets(logging.Filter):
    """Masks every remembered secret in the record before it is formatted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


# --- handlers ------------------------------------------------------------------------------


class OncePerCondition(logging.Filter):
    """Lets one record per condition (logger, message template, exception type) through
    every ``every_s`` seconds: a server out of file descriptors logs one traceback per
    accept otherwise (267 MB of log in a probe). The next one through says how many were
    dropped."""

    def __init__(self, every_s: float = 60.0, clock: Any = None) -> None:
        super().__init__()
        self.every_s = every_s
        self.clock = clock or time.monotonic
        self._seen: dict[tuple[str, str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        kind = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        key = (record.name, str(record.msg), kind)
        now = self.clock()
        with self._lock:
            last, dropped = self._seen.get(key, (float("-inf"), 0))
            if now - last < self.every_s:
                self._seen[key] = (last, dropped + 1)
                return False
            self._seen[key] = (now, 0)
            if len(self._seen) > 1000:
                self._seen.clear()
        if dropped:
            record.msg = f"{record.msg} (and {dropped} more like it in {self.every_s:.0f} s)"
        return True


def formatter(json_lines: bool, fmt: str = FORMAT) -> logging.Formatter:
    if json_lines:
        return JsonFormatter(
            "%(asctime)s %(levelname)s %(processName)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "asctime": "time", "processName": "process"},
        )
    return logging.Formatter(fmt)


def install(
    handler: logging.Handler, *, json_lines: bool | None = None, keep_format: bool = True
) -> None:
    """Tender's filters on ``handler`` (once), and JSON lines when configured. A handler
    that has its own format (Celery's) keeps it for readable lines."""
    if json_lines is None:
        json_lines = get_settings().log_format == "json"
    if not any(isinstance(f, RedactSecrets) for f in handler.filters):
        # Context first: the redaction then sees the whole line.
        handler.addFilter(AddContext(suffix=not json_lines))
        handler.addFilter(RedactSecrets())
    if json_lines or not keep_format or handler.formatter is None:
        handler.setFormatter(formatter(json_lines))


def configure_logging(level: str | None = None) -> None:
    """Configure the root logger once (idempotent): the CLI and ``tender api``."""
    root = logging.getLogger()
    if getattr(root, "_tender_configured", False):
        return
    logging.basicConfig(level=level or get_settings().log_level, format=FORMAT)
    for handler in root.handlers:
        install(handler)
    for noisy in ("httpx", "httpcore", "amqp", "kombu"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    root._tender_configured = True  # type: ignore[attr-defined]


def context_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The log context a record carries (tests, and handlers that want it)."""
    return {k: getattr(record, k) for k in CONTEXT_FIELDS if hasattr(record, k)}
