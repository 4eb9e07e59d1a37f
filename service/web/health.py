"""Liveness checks: the database and the broker answer. A failure is logged in full and answered by name only."""
from __future__ import annotations

import logging

from flask import current_app
from sqlalchemy import text

from ..extensions import db
from ..models import Event

log = logging.getLogger(__name__)


def failing_checks() -> list[str]:
    """The names of the checks that fail; why they fail goes to the log, never to the anonymous caller."""
    checks = {"database": check_database, "broker": check_broker}
    return [name for name, check in checks.items() if not check()]


def check_database() -> bool:
    try:
        db.session.execute(text("SELECT 1"))
    except Exception:  # any driver error means the database is not usable
        db.session.rollback()
        log.exception("health check: the database does not answer")
        return False
    return True


def check_broker() -> bool:
    celery = current_app.extensions["celery"]
    try:
        with celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=3)
    except Exception:  # kombu raises many kinds of errors for an unreachable broker
        log.exception("health check: the broker does not answer")
        return False
    return True


def record_ping(value: str) -> str:
    db.session.add(Event(kind="ping", data={"value": value}))
    db.session.commit()
    return value
