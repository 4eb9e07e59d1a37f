"""Extensions created unbound, bound to the app in create_app."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from celery import Celery, Task, bootsteps
from flask import Flask
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from kombu import Queue
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
# Models subclass Model, which is db.Model (a subclass of Base with Flask-SQLAlchemy's table naming and binds).
# mypy cannot take an attribute of an instance as a base class, so it checks them against Base.
if TYPE_CHECKING:
    Model = Base
else:
    Model = db.Model
migrate = Migrate(directory=str(Path(__file__).parent / "migrations"))
limiter = Limiter(key_func=get_remote_address, default_limits=[], strategy="moving-window")
csrf = CSRFProtect()


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """SQLite: enforce foreign keys (cascades), and let the web and the worker share the file."""
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()


def celery_init_app(app: Flask) -> Celery:
    """Flask's Celery pattern: every task runs inside an app context."""

    class FlaskTask(Task):
        def __call__(self, *args, **kwargs):
            with app.app_context():
                return self.run(*args, **kwargs)

    celery: Celery = Celery(app.name, task_cls=FlaskTask)
    celery.config_from_object(celery_settings(app.config))
    if app.config["BROKER_URL"].startswith("sqla+"):
        celery.steps["consumer"].add(_polling_step(float(app.config.get("BROKER_POLLING_INTERVAL") or 0.1)))
    celery.set_default()
    app.extensions["celery"] = celery
    return celery


def create_broker_tables(celery: Celery) -> None:
    """The embedded broker (kombu's database transport) makes its tables, and a queue's row, when a process
    first uses it, and a fresh install's first concurrent enqueues race there (a CREATE TABLE or the queue's
    INSERT fails in one process, and its enqueue with it): `db upgrade` makes both beforehand. kombu names its
    tables from the transport's options, so its own channel makes them (create_all, then the row if missing)."""
    if celery.conf.broker_url.startswith("sqla+"):
        with celery.connection_for_write() as connection:
            Queue(celery.conf.task_default_queue, channel=connection.default_channel).declare()


def _polling_step(interval: float) -> type:
    """The embedded broker (kombu's database transport) is polled: a worker whose prefetch is full or whose
    queue is empty sleeps `polling_interval` (kombu's default: 1 s) before it looks again, so it took about one
    task a second. kombu hands every transport option to create_engine, which refuses `polling_interval`, so
    the interval is set on the worker's own connection once it is made (and made again)."""

    class BrokerPolling(bootsteps.StartStopStep):
        requires = ("celery.worker.consumer.connection:Connection",)

        def start(self, consumer) -> None:
            consumer.connection.transport.polling_interval = interval

    return BrokerPolling


def celery_settings(config) -> dict:
    """At-least-once delivery with idempotent tasks: late acks, requeue on lost workers."""
    broker = config["BROKER_URL"]
    settings = {
        "broker_url": broker,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "beat_schedule": {
            "dispatch-digests": {"task": "service.tasks.dispatch_digests", "schedule": 120.0},
            "recover-digests": {"task": "service.tasks.recover_digests",
                                "schedule": float(config.get("RECOVERY_CHECK_SECONDS") or 15.0)},
            "flush-outbox": {"task": "service.tasks.flush_outbox", "schedule": 60.0},
            "prune-deliveries": {"task": "service.tasks.prune_deliveries", "schedule": 3600.0},
            "sweep-studio-sessions": {"task": "service.tasks.sweep_studio_sessions", "schedule": 3600.0},
            "roll-up-stats": {"task": "service.tasks.roll_up_stats", "schedule": 60.0},
            "publish-scheduled-posts": {"task": "service.tasks.publish_scheduled_posts",
                                        "schedule": float(config.get("PUBLISH_CHECK_SECONDS") or 60.0)},
        },
        "task_default_queue": config.get("CELERY_QUEUE") or "celery",
    }
    if broker.startswith("redis"):
        # Longer than any retry countdown, so a delayed task is never redelivered early; a publisher
        # gives up on an unreachable broker within about a second (the database keeps what matters).
        settings["broker_transport_options"] = {
            "visibility_timeout": 3 * 3600,
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        }
    return settings
