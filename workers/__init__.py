"""Celery app, tasks, ledger, events, alerts, billing client and the ``tender`` CLI."""
