"""The Celery app, the helper threads (provider loop), CPU pinning and the sweeps' locks."""
