"""Tender's configuration: settings from the environment, logging and Celery options."""
