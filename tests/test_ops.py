"""Health and metrics: what an anonymous caller learns (little), what a token holder reads, counted from the database."""
from __future__ import annotations

import logging
from datetime import timedelta

import pytest
import time_machine
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from service import create_app
from service.digests import runs, sending
from service.extensions import db
from service.mail import outbox
from service.models import Delivery, OutboxEmail, Subscriber, utcnow
from service.publishing import posts
from service.readers import subscriptions

from .conftest import ADMIN_TOKEN
from .helpers import Reader, outbox_rows
from .test_digests import seed

METRICS_TOKEN = "a-metrics-token-for-the-scraper"


def scrape(client, token: str = ADMIN_TOKEN) -> dict:
    """{(sample name, sorted labels): value} of one authorised scrape."""
    response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.data
    return samples(response.get_data(as_text=True))


def samples(text: str) -> dict:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(found: dict, name: str, **labels) -> float:
    return found[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def own_queue(app):
    """Tasks published to a queue of this test's own, which no worker reads: the test sends in-process."""
    app.extensions["celery"].conf.task_default_queue = f"kr-ops-{id(app)}"


# --- who may read what ---

@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer wrong-token", f"Basic {ADMIN_TOKEN}",
                                           f"Bearer {ADMIN_TOKEN}x", f"Bearer {METRICS_TOKEN[:-1]}"])
def test_metrics_are_closed_to_anyone_without_a_token(app, client, admin, authorization):
    app.config["METRICS_TOKEN"] = METRICS_TOKEN
    admin.publish(title="A draft", published=False)
    Reader(client, "counted@example.org").subscribe()
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert b"keepreading_" not in response.data and b"pending" not in response.data


@pytest.mark.parametrize("token", [METRICS_TOKEN, ADMIN_TOKEN])
def test_metrics_open_to_the_metrics_token_or_the_admin_token(app, client, token):
    app.config["METRICS_TOKEN"] = METRICS_TOKEN
    Reader(client, "counted@example.org").subscribe()
    assert value(scrape(client, token), "keepreading_subscribers", status="pending") == 1


def test_metrics_stay_closed_when_no_token_is_set(app, client):
    app.config.update(METRICS_TOKEN=None, ADMIN_TOKEN=None)
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer None"}).status_code == 401


def test_health_names_the_failing_check_and_logs_why(app, client, caplog):
    app.extensions["celery"].conf.broker_url = "redis://:broker-password@127.0.0.1:1/0"
    with caplog.at_level(logging.ERROR, logger="service.web.health"):
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.get_json() == {"database": "ok", "broker": "failing", "status": "failing: broker"}
    [record] = [record for record in caplog.records if record.name == "service.web.health"]
    assert record.exc_info is not None and "broker" in record.getMessage()


def test_health_never_shows_the_database_error(backend, monkeypatch, tmp_path):
    for name, setting in backend.env.items():
        monkeypatch.setenv(name, setting)
    monkeypatch.setenv("KEEPREADING_DATABASE_URL", f"sqlite:///{tmp_path}/missing-folder/secret-name.sqlite")
    response = create_app({"TESTING": True}).test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json() == {"database": "failing", "broker": "ok", "status": "failing: database"}
    assert b"secret-name" not in response.data and b"Error" not in response.data


# --- what the database says ---

def test_signups_confirmations_and_transactional_mail_by_outcome(app, client, mailbox, own_queue):
    mailbox.faults.by_recipient["gone@example.org"] = "550 5.1.1 no such user"
    mailbox.faults.by_recipient["later@example.org"] = "451 4.3.0 try again later"
    for email in ("kept@example.org", "gone@example.org", "later@example.org", "waiting@example.org"):
        Reader(client, email, mailbox).subscribe()
    before = scrape(client)
    assert value(before, "keepreading_outbox_backlog", kind="confirm") == 4
    assert value(before, "keepreading_subscriber_events_total", kind="signup") == 4
    with app.app_context():
        for row in outbox_rows(app)[:3]:
            outbox.send(row.id)
    reader = Reader(client, "kept@example.org", mailbox)
    reader.confirm_from_mail()
    found = scrape(client)
    assert value(found, "keepreading_mails_total", kind="confirm", outcome="sent") == 1
    assert value(found, "keepreading_mails_total", kind="confirm", outcome="bounced") == 1
    assert value(found, "keepreading_mails_total", kind="confirm", outcome="failed") == 0
    assert value(found, "keepreading_outbox_backlog", kind="confirm") == 2  # one to retry, one never tried
    assert value(found, "keepreading_outbox_backlog", kind="welcome") == 1  # the confirmed reader's welcome
    assert value(found, "keepreading_subscriber_events_total", kind="confirmed") == 1
    assert value(found, "keepreading_subscribers", status="confirmed") == 1


def test_digest_runs_deliveries_and_outcomes(app, client, mailbox, own_queue):
    with app.app_context():
        seed(3, prefix="digest")
        posts.create("News", "Words for the teaser.\n\n<!--more-->\n\nThe rest.", "subscribers", True)
        db.session.commit()
        mailbox.faults.by_recipient["digest1@example.com"] = "550 5.1.1 no such user"
        digest = runs.create_run("manual:metrics", None, utcnow())
        digest_id = digest.id
    running = scrape(client)
    assert value(running, "keepreading_digest_runs", state="running") == 1
    assert value(running, "keepreading_digest_deliveries", status="pending") == 3
    assert ("keepreading_digest_last_finished_age_seconds", ()) not in running
    with app.app_context():
        for first, last in runs.id_ranges(Delivery.digest_id == digest_id):
            assert sending.send_batch(digest_id, first, last) is None
        runs.settle(digest_id)
    found = scrape(client)
    assert value(found, "keepreading_digest_runs", state="running") == 0
    assert value(found, "keepreading_digest_runs", state="finished") == 1
    assert value(found, "keepreading_digest_deliveries", status="pending") == 0
    assert value(found, "keepreading_mails_total", kind="digest", outcome="sent") == 2
    assert value(found, "keepreading_mails_total", kind="digest", outcome="bounced") == 1
    assert value(found, "keepreading_digest_run_seconds_count") == 1
    assert value(found, "keepreading_digest_last_finished_age_seconds") >= 0
    assert value(found, "keepreading_subscriber_events_total", kind="bounced") == 1


def test_settled_counts_are_read_once_and_outlive_erased_readers(app, client, mailbox, own_queue):
    """An hour on, sent mail is counted for good: erasing the reader (and their rows) leaves the count."""
    Reader(client, "erased@example.org", mailbox).subscribe()
    with app.app_context():
        outbox.send(outbox_rows(app)[0].id)
    with time_machine.travel(utcnow() + timedelta(hours=2)):
        assert value(scrape(client), "keepreading_mails_total", kind="confirm", outcome="sent") == 1
        with app.app_context():
            subscriptions.erase(db.session.scalar(select(Subscriber)))
            assert db.session.scalar(select(OutboxEmail.id)) is None
        found = scrape(client)
    assert value(found, "keepreading_mails_total", kind="confirm", outcome="sent") == 1
    assert value(found, "keepreading_subscriber_events_total", kind="deleted") == 1
    assert ("keepreading_subscribers", (("status", "pending"),)) not in found
