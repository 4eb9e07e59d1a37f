"""A fresh install's first concurrent requests (issue 15): gunicorn with 2 workers on an empty database, every
public route asked at once, no 5xx, and the lazily made rows (the publication's settings) made once."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from werkzeug.routing import IntegerConverter

from .conftest import create_postgres_database, drop_postgres_database, wait_until
from .mailbox import _free_port
from .workers import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(params=["upgraded", "upgraded, settings row missing"])
def empty_install(request, backend, tmp_path):
    """The environment of an instance whose database `db upgrade` has just made (and, in the second case,
    whose settings row is missing, as in a database made otherwise): nothing else in it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("KEEPREADING_", "PROMETHEUS_"))}
    env.update(backend.env)
    env.update({"KEEPREADING_INSTANCE_PATH": str(tmp_path), "KEEPREADING_SIGNUP_RATE_LIMIT": "10000/minute",
                "KEEPREADING_CELERY_QUEUE": f"kr-fresh-{os.getpid()}-{time.time_ns()}"})
    database = None
    if backend.name == "sqlite":
        env["KEEPREADING_DATABASE_URL"] = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
        env["KEEPREADING_BROKER_URL"] = f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"
    else:
        database = env["KEEPREADING_DATABASE_URL"] = create_postgres_database(f"kr_fresh_{os.getpid()}")
    subprocess.run([sys.executable, "-m", "service.cli", "db", "upgrade"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    engine = create_engine(env["KEEPREADING_DATABASE_URL"])
    with engine.begin() as connection:
        assert connection.scalar(text("SELECT count(*) FROM publication_settings")) == 1  # the migration's row
    if backend.name == "sqlite":  # the embedded broker's tables and queue, made by the upgrade too
        broker = create_engine(env["KEEPREADING_BROKER_URL"].removeprefix("sqla+"))
        with broker.connect() as connection:
            assert connection.scalars(text("SELECT name FROM kombu_queue")).all() == [env["KEEPREADING_CELERY_QUEUE"]]
            assert connection.scalar(text("SELECT count(*) FROM kombu_message")) == 0
        broker.dispose()
    with engine.begin() as connection:
        if request.param.endswith("missing"):
            connection.execute(text("DELETE FROM publication_settings"))
    yield env, engine
    engine.dispose()
    if database:
        drop_postgres_database(database)


def public_requests(app) -> list[tuple[str, str, dict | None]]:
    """Every GET route (arguments filled with values that match nothing), and the public forms' POSTs."""
    wanted = []
    for rule in app.url_map.iter_rules():
        if "GET" not in (rule.methods or ()):
            continue
        values = {name: "1" if isinstance(rule._converters[name], IntegerConverter) else "nothing-here"
                  for name in rule.arguments}
        wanted.append(("GET", rule.build(values, append_unknown=False)[1], None))
    wanted += [("POST", "/signin", {"email": "first@example.org"}),
               ("POST", "/unsubscribe/nothing-here", {"List-Unsubscribe": "One-Click"}),
               ("POST", "/confirm/nothing-here", {})]
    wanted += [("POST", "/subscribe", {"email": f"first{n}@example.org", "next": "/"}) for n in range(24)]
    return wanted


def ask(base: str, method: str, path: str, form: dict | None) -> tuple[str, int]:
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return f"{method} {path}", answer.status
    except urllib.error.HTTPError as answer:
        return f"{method} {path}", answer.code


class NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_first_concurrent_requests_on_an_empty_database_get_no_5xx(app, empty_install, mailbox, tmp_path):
    env, engine = empty_install
    urllib.request.install_opener(urllib.request.build_opener(NoRedirects))
    port = _free_port()
    log = tmp_path / "gunicorn.log"
    command = [sys.executable, "-m", "gunicorn", "-c", "service/deploy/gunicorn_conf.py", "--workers", "2",
               "--bind", f"127.0.0.1:{port}", "wsgi:app"]
    with open(log, "ab") as output:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        wait_until(lambda: listening(port), 60, "gunicorn did not listen")  # no request before the burst
        time.sleep(1)  # both workers forked and waiting
        wanted = public_requests(app) * 2
        start = threading.Barrier(min(len(wanted), 32))

        def fire(item):
            try:
                start.wait(timeout=5)
            except threading.BrokenBarrierError:
                pass
            return ask(f"http://127.0.0.1:{port}", *item)

        with ThreadPoolExecutor(max_workers=32) as pool:
            answers = list(pool.map(fire, wanted))
    finally:
        server.terminate()
        server.wait(timeout=30)
        urllib.request.install_opener(None)
    failed = sorted({f"{route}: {status}" for route, status in answers if status >= 500})
    assert not failed, f"5xx answers: {failed}\n{log.read_text()[-3000:]}"
    assert {status for route, status in answers if route.startswith("POST /subscribe")} == {200}
    assert len(answers) == len(wanted) > 60
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM publication_settings")) == 1
        assert connection.scalar(text("SELECT count(*) FROM subscribers")) == 24
        # nothing lost: each signup has its confirmation in the outbox, and its task queued at once (a failed
        # enqueue is noted on the row, for flush_outbox to queue it again a minute later; on the embedded broker
        # the first ones raced kombu's making its tables and queue, until `db upgrade` made them)
        assert connection.scalar(text("SELECT count(DISTINCT subscriber_id) FROM outbox WHERE kind = 'confirm'")) == 24
        assert connection.scalars(text("SELECT error FROM outbox WHERE error IS NOT NULL")).all() == []
    assert "Traceback" not in log.read_text()
    # and a worker started now (no beat, so no flush_outbox) sends every confirmation once
    worker = WorkerProcess(env, log=tmp_path / "worker.log").start()
    try:
        signups = {f"first{n}@example.org" for n in range(24)}
        wait_until(lambda: signups <= {message.to for message in mailbox.messages}, 60, "confirmations not sent")
    finally:
        worker.stop()
    confirmations = [message.to for message in mailbox.messages if message.to in signups]
    assert sorted(confirmations) == sorted(signups)
