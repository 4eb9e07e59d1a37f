"""Celery tasks: thin wrappers that call domain functions with ids."""
from __future__ import annotations

from celery import shared_task


@shared_task(name="service.tasks.ping")
def ping(value: str) -> str:
    """Round-trip check used by the health tests and the Celery smoke test."""
    from . import health

    return health.record_ping(value)
