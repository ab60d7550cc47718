"""The worker core: Celery tasks over the ledger, payments, events and monitoring; see docs/architecture.md."""
