"""Logs as an operator reads them: one JSON object per line, request and task ids, and no token in any line."""
from __future__ import annotations

import io
import json
import logging
import re
import uuid
from contextlib import contextmanager
from datetime import timedelta

import pytest

from service import logs, tasks
from service.digests import runs, sending
from service.extensions import db
from service.mail import outbox
from service.models import Delivery, utcnow
from service.readers import subscriptions

from .conftest import BASE_URL, wait_until
from .helpers import Reader, csrf_token, link_to, links_in, outbox_rows, path_of
from .test_digests import publish_at

TOKEN_IN_PATH = re.compile(r"/(?:confirm|signin|unsubscribe)/([^/?#\s\"'<>]+)|[?&]t=([^&#\s\"'<>]+)")


@contextmanager
def captured_lines():
    """What the service's log handler writes, while inside: a list of the lines, filled on exit."""
    [handler] = [each for each in logging.getLogger().handlers if each.get_name() == "keepreading"]
    stream = io.StringIO()
    previous = handler.setStream(stream)
    lines: list[str] = []
    try:
        yield lines
    finally:
        handler.setStream(previous)
        lines.extend(stream.getvalue().splitlines())


def tokens_in(texts) -> set[str]:
    found = set()
    for text in texts:
        for match in TOKEN_IN_PATH.finditer(text):
            found.add(match.group(1) or match.group(2))
    return found


@pytest.fixture
def own_queue(app):
    app.extensions["celery"].conf.task_default_queue = f"kr-logs-{uuid.uuid4().hex[:8]}"


def send_outbox(app) -> None:
    with app.app_context():
        for row in outbox_rows(app):
            if row.sent_at is None and row.kind == outbox.SIGNIN_REQUEST:
                subscriptions.answer_signin_request(row.id)  # as the answer_signin_request task does
            elif row.sent_at is None:
                outbox.send(row.id)


def test_every_line_is_json_and_no_token_reaches_the_log(app, client, mailbox, own_queue):
    """Confirm, sign-in, unsubscribe and digest links, good and broken: each token used, none logged."""
    with captured_lines() as lines:
        reader = Reader(client, "logged@example.org", mailbox)
        reader.subscribe()
        send_outbox(app)
        confirm = reader.confirm_link()
        reader.press_button(confirm)
        client.get(confirm + "x")  # a broken token is still a token
        client.post("/account", data={"csrf_token": csrf_token(client.get("/account").data), "action": "signout"})
        client.post("/signin", data={"email": reader.email, "website": "", "csrf_token": csrf_token(client.get("/signin").data)},
                    environ_base={"REMOTE_ADDR": reader.ip})
        send_outbox(app)
        signin = link_to(reader.mails(3)[-1].text, "/signin/")  # confirm, welcome, sign-in
        reader.sign_in(signin)
        with app.app_context():
            publish_at(utcnow(), "Logged post")  # after the reader confirmed: theirs in the next digest
            digest = runs.create_run("manual:logs", None, utcnow() + timedelta(seconds=1))
            for first, last in runs.id_ranges(Delivery.digest_id == digest.id):
                sending.send_batch(digest.id, first, last)
        digest_mail = reader.mails(4)[-1]
        article = next(path_of(url) for url in links_in(digest_mail.text) if "?t=" in url)
        unsubscribe = path_of(digest_mail.message["List-Unsubscribe"].strip("<>"))
        client.get(article)
        client.get(unsubscribe)
        client.post(unsubscribe, data={"List-Unsubscribe": "One-Click"})
    used = tokens_in([confirm, confirm + "x", signin, article, unsubscribe])
    assert len(used) == 5
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    leaked = [line for line in lines if any(token in line for token in used)]
    assert leaked == []
    requests = [record for record in records if record["logger"] == "service.web.access_log"]
    routes = {record["route"] for record in requests}
    assert {"/confirm/<token>", "/signin/<token>", "/unsubscribe/<token>", "/p/<slug>"} <= routes
    for record in requests:
        assert record["request_id"] and record["level"] == "INFO" and record["time"]
        assert isinstance(record["status"], int) and record["duration_ms"] >= 0
    assert any("/confirm/[redacted]" in record["path"] for record in requests)
    assert any(record["path"].endswith("?t=[redacted]") for record in requests)


def test_a_traceback_with_a_token_is_redacted(app, client, mailbox, own_queue):
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.get("/boom/<value>")
    def boom(value):
        raise RuntimeError(f"could not use {value} from /confirm/{value}")

    reader = Reader(client, "crash@example.org", mailbox)
    reader.subscribe()
    send_outbox(app)
    token = reader.confirm_link().rsplit("/", 1)[1]
    with captured_lines() as lines:
        assert client.get(f"/boom/{token}").status_code == 500
    records = [json.loads(line) for line in lines]
    [failure] = [record for record in records if record["level"] == "ERROR"]
    assert "RuntimeError" in failure["exc_info"] and "[redacted]" in failure["exc_info"]
    assert not any(token in line for line in lines)


def test_the_request_id_comes_from_a_trusted_proxy_only_and_is_echoed(app, client):
    given = "req-7f3a9c1e-0b2d-4e5f-8a6b-1c2d3e4f5a6b"
    with captured_lines() as lines:
        untrusted = client.get("/", headers={"X-Request-ID": given})
        app.config["PROXY_COUNT"] = 1
        trusted = client.get("/", headers={"X-Request-ID": given})
        insane = client.get("/", headers={"X-Request-ID": "two words\" and a quote"})
    assert trusted.headers["X-Request-ID"] == given
    assert untrusted.headers["X-Request-ID"] != given and re.fullmatch(r"[0-9a-f]{32}", untrusted.headers["X-Request-ID"])
    assert re.fullmatch(r"[0-9a-f]{32}", insane.headers["X-Request-ID"])
    logged = [json.loads(line)["request_id"] for line in lines]
    assert logged == [response.headers["X-Request-ID"] for response in (untrusted, trusted, insane)]


def test_worker_lines_are_json_with_the_task(app, backend, worker):
    value = f"logged-{uuid.uuid4().hex}"
    with app.app_context():
        tasks.ping.delay(value)

    def task_line():
        for line in (backend.folder / "worker.log").read_text(errors="replace").splitlines():
            if line.startswith("{") and value in line:
                record = json.loads(line)
                if record.get("task") == "service.tasks.ping":
                    return record
        return None

    record = wait_until(task_line, 60, "the worker logged no JSON line for the task")
    assert record["task_id"] and record["logger"].startswith("celery") and record["level"] == "INFO"


@pytest.mark.parametrize("text, kept", [
    ("GET /confirm/eyJhIjoxfQ.Zz9xYw.abcdefghijklmnopqrstuvwxyz HTTP/1.1", "GET /confirm/[redacted] HTTP/1.1"),
    ("/p/harbour-notes?t=WzEsMiwzXQ.Zz9xYw.sig&utm=x", "/p/harbour-notes?t=[redacted]&utm=x"),
    ("/unsubscribe/abc.def.ghi", "/unsubscribe/[redacted]"),
    ("redis://:hunter2@redis.internal:6379/0", "redis://:[redacted]@redis.internal:6379/0"),
    ("Authorization: Bearer s3cr3t-token", "Authorization: Bearer [redacted]"),
    ("a link https://x.example/studio/invite/abc123", "a link https://x.example/studio/invite/[redacted]"),
    ("nothing secret in /p/harbour-notes", "nothing secret in /p/harbour-notes"),
])
def test_redact(text, kept):
    assert logs.redact(text) == kept


def test_development_keeps_readable_lines_and_the_email_links(bare_env_app):
    app = bare_env_app
    [handler] = [each for each in logging.getLogger().handlers if each.get_name() == "keepreading"]
    link = f"{BASE_URL}/confirm/eyJhIjoxfQ.Zz9xYw.abcdefghijklmnopqrstuvwxyz"
    mail_log = logging.LogRecord("service.mail.transports", logging.WARNING, __file__, 1, "links: %s", (link,), None)
    other = logging.LogRecord("service.web.reader", logging.INFO, __file__, 1, "opened %s", (link,), None)
    assert app.config["ENV"] == "development"
    assert handler.format(mail_log).endswith(f"links: {link}")
    assert handler.format(other).endswith("opened http://localhost/confirm/[redacted]")


@pytest.fixture
def bare_env_app(backend, monkeypatch, app):
    from service import create_app

    for name, setting in backend.env.items():
        monkeypatch.setenv(name, setting)
    monkeypatch.setenv("KEEPREADING_ENV", "development")
    development = create_app()
    yield development
    logs.configure(app)  # the suite's own mode again
    with development.app_context():
        db.session.remove()
        db.engine.dispose()
