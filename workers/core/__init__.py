"""The Celery app, the helper threads (provider loop), CPU pinning and database lease locks."""
