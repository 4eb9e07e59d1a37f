"""Liveness checks: the database and the broker answer."""
from __future__ import annotations

from flask import current_app
from sqlalchemy import text

from ..extensions import db
from ..models import Event


def check_database() -> str | None:
    try:
        db.session.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means the database is not usable
        db.session.rollback()
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def check_broker() -> str | None:
    celery = current_app.extensions["celery"]
    try:
        with celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=3)
    except Exception as exc:  # kombu raises many kinds of errors for an unreachable broker
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def record_ping(value: str) -> str:
    db.session.add(Event(kind="ping", data={"value": value}))
    db.session.commit()
    return value
