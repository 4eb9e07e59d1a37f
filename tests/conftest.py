"""Fixtures: the app on SQLite and PostgreSQL, a real SMTP mailbox, real Celery workers."""
from __future__ import annotations

import itertools
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from celery.signals import before_task_publish
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from service import create_app
from service.extensions import db
from service.models import Event

from .mailbox import Mailbox
from .workers import WorkerProcess

ADMIN_TOKEN = "test-admin-token"
SECRET_KEY = "test-secret-key-0123456789-0123456789"  # production (the workers) needs 32 bytes
BASE_URL = "http://localhost"
POSTGRES_ADMIN_URL = os.environ.get("KEEPREADING_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("KEEPREADING_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_SERVERS = os.environ.get("KEEPREADING_TEST_REQUIRE_SERVERS") == "1"
_unique = itertools.count()


def need_server(name: str, problem: str | None) -> None:
    """A test that needs a server fails in CI when it cannot reach it, and is skipped elsewhere."""
    if problem is None:
        return
    message = f"{name} is not reachable: {problem}"
    if REQUIRE_SERVERS:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def postgres_problem() -> str | None:
    import psycopg

    try:
        psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        return str(exc).strip()
    return None


def redis_problem() -> str | None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        return str(exc)
    return None


@dataclass
class Backend:
    """One database + broker pair that the whole session's tests run against."""

    name: str
    folder: Path
    env: dict[str, str] = field(default_factory=dict)
    worker: WorkerProcess | None = None
    schema_ready: bool = False

    def clean(self) -> None:
        tables = [table.name for table in reversed(db.metadata.sorted_tables)]
        if self.name == "postgresql":
            for attempt in range(5):
                try:
                    db.session.execute(text(f"TRUNCATE TABLE {', '.join(tables)} RESTART IDENTITY CASCADE"))
                    break
                except OperationalError as error:  # the session's worker, still sending, read one table first
                    db.session.rollback()
                    if "deadlock" not in str(error) or attempt == 4:
                        raise
                    time.sleep(0.2)
        else:
            for table in tables:
                db.session.execute(text(f"DELETE FROM {table}"))
        db.session.commit()


def create_postgres_database(name: str) -> str:
    """A new, empty database (dropped first if a crashed run left it); its SQLAlchemy URL."""
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {name}")
    host = POSTGRES_ADMIN_URL.split("://", 1)[1].rsplit("/", 1)[0]
    return f"postgresql+psycopg://{host}/{name}"


def drop_postgres_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def mailbox_server():
    box = Mailbox()
    box.start()
    yield box
    box.stop()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend(request, tmp_path_factory, mailbox_server):
    folder = tmp_path_factory.mktemp(request.param)
    env = {
        "KEEPREADING_INSTANCE_PATH": str(folder),
        "KEEPREADING_SECRET_KEY": SECRET_KEY,
        "KEEPREADING_ADMIN_TOKEN": ADMIN_TOKEN,
        "KEEPREADING_BASE_URL": BASE_URL,
        "KEEPREADING_SMTP_URL": mailbox_server.url,
        "KEEPREADING_CELERY_QUEUE": f"kr-test-{os.getpid()}-{request.param}",
        # The worker's per-mailbox budgets in Redis, apart from other runs' (each test's app has its own prefix).
        "KEEPREADING_RATE_LIMIT_PREFIX": f"kr-test-{os.getpid()}-{request.param}-{time.time_ns()}",
    }
    database_url = None
    if request.param == "sqlite":
        env["KEEPREADING_DATABASE_URL"] = f"sqlite:///{folder / 'test.sqlite'}"
        env["KEEPREADING_BROKER_URL"] = f"sqla+sqlite:///{folder / 'broker.sqlite'}"
    else:
        need_server("PostgreSQL", postgres_problem())
        need_server("Redis", redis_problem())
        database_url = create_postgres_database(f"kr_test_{os.getpid()}")
        env["KEEPREADING_DATABASE_URL"] = database_url
        env["KEEPREADING_BROKER_URL"] = REDIS_URL
        env["KEEPREADING_REDIS_URL"] = REDIS_URL
    chosen = Backend(request.param, folder, env)
    yield chosen
    if chosen.worker:
        chosen.worker.stop()
    if database_url:
        drop_postgres_database(database_url)


@pytest.fixture
def app(backend, monkeypatch, mailbox, mailbox_server):
    for name in list(os.environ):
        if name.startswith("KEEPREADING_") and not name.startswith("KEEPREADING_TEST_"):
            monkeypatch.delenv(name)
    for name, value in backend.env.items():
        monkeypatch.setenv(name, value)
    app = create_app({"TESTING": True, "RATELIMIT_KEY_PREFIX": f"kr-test-{os.getpid()}-{next(_unique)}"})
    with app.app_context():
        if not backend.schema_ready:
            db.create_all()
            backend.schema_ready = True
        settle_worker(app, backend)
        backend.clean()
    mailbox_server.clear()  # of what the earlier tasks sent (`mailbox` is a test's parameter in some)
    yield app
    with app.app_context():
        db.session.remove()
        backend.clean()
        db.session.remove()
        for engine in db.engines.values():
            engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def mailbox(mailbox_server):
    mailbox_server.clear()
    yield mailbox_server
    mailbox_server.clear()


@pytest.fixture
def worker(app, backend):
    """A real Celery worker on this backend's broker and database, started once a session."""
    if backend.worker is None or not backend.worker.alive:
        backend.worker = WorkerProcess(backend.env, log=backend.folder / "worker.log").start()
    wait_for_ping(app, f"ready-{next(_unique)}")
    return backend.worker


_published = {"since_settled": False}


@before_task_publish.connect
def _note_publish(**_kwargs) -> None:
    _published["since_settled"] = True


def settle_worker(app, backend) -> None:
    """The session's worker drains every due outbox row, whichever task it runs: a task an earlier test
    queued must not send this test's rows. When anything was queued since, a ping queued behind it is
    waited for (the tasks before it have run, and found nothing of this test's)."""
    if backend.worker is not None and backend.worker.alive and _published["since_settled"]:
        wait_for_ping(app, f"settle-{next(_unique)}")
    _published["since_settled"] = False


def wait_for_ping(app, value: str, timeout: float = 60) -> None:
    from service import tasks

    with app.app_context():
        tasks.ping.delay(value)
        wait_until(lambda: db.session.scalar(select(Event.id).where(Event.kind == "ping")) is not None
                   and _pinged(value), timeout, f"the worker did not run ping({value!r})")
        db.session.execute(Event.__table__.delete().where(Event.kind == "ping"))
        db.session.commit()


def _pinged(value: str) -> bool:
    events = db.session.scalars(select(Event).where(Event.kind == "ping")).all()
    db.session.rollback()
    return any(event.data.get("value") == value for event in events)


def wait_until(check, timeout: float = 30, message: str = "condition not met", interval: float = 0.1):
    """Poll `check` until it returns a truthy value (for work done by another process)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} within {timeout}s")
        time.sleep(interval)


class Admin:
    """The admin API as the publisher's tools call it."""

    def __init__(self, client):
        self.client = client
        self.headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def post(self, path, **kwargs):
        return self.client.post("/api/v1" + path, headers=self.headers, **kwargs)

    def get(self, path, **kwargs):
        return self.client.get("/api/v1" + path, headers=self.headers, **kwargs)

    def patch(self, path, **kwargs):
        return self.client.patch("/api/v1" + path, headers=self.headers, **kwargs)

    def delete(self, path, **kwargs):
        return self.client.delete("/api/v1" + path, headers=self.headers, **kwargs)

    def publish(self, title="A post", body="Some words.", visibility="subscribers", **extra):
        response = self.post("/posts", json={"title": title, "body": body, "visibility": visibility,
                                             "published": True, **extra})
        assert response.status_code == 201, response.get_json()
        return response.get_json()


@pytest.fixture
def admin(client):
    return Admin(client)


@pytest.fixture
def own_queue(app):
    """Tasks published to a queue no worker reads (the test runs them itself, or leaves mail unsent); emptied after."""
    celery = app.extensions["celery"]
    queue = f"kr-budget-{uuid.uuid4().hex[:12]}"
    celery.conf.task_default_queue = queue
    yield queue
    with app.app_context():
        celery.control.purge()
