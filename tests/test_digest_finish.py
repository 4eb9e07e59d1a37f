"""A digest run is finished by the batch that settles its last deliveries, with real workers and no
dispatcher or beat in between (issue 10 item 7: runs stayed `finished_at: null` until the next beat)."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from service.digests import runs
from service.extensions import db
from service.models import Delivery, Digest
from service.publishing import posts

from .conftest import wait_for_ping, wait_until
from .test_digests import per_recipient, seed
from .workers import WorkerProcess


def finished_at(digest_id: int):
    """The run's finished_at as committed now (read only: nothing here settles or finishes anything)."""
    db.session.rollback()
    return db.session.scalar(select(Digest.finished_at).where(Digest.id == digest_id))


def assert_finished_after_its_last_mail(digest_id: int, recipients: int) -> None:
    wait_until(lambda: finished_at(digest_id), 60, f"digest {digest_id} was not finished by its last batch")
    assert runs.counts([digest_id])[digest_id] == {"pending": 0, "sending": 0, "sent": recipients, "failed": 0, "skipped": 0}
    last_mail = db.session.scalar(select(func.max(Delivery.sent_at)).where(Delivery.digest_id == digest_id))
    assert finished_at(digest_id) >= last_mail


def test_the_last_batch_finishes_the_run(app, worker, mailbox):
    """Five batches on a worker of two processes: whichever settles last finishes the run."""
    app.config["DIGEST_BATCH_SIZE"] = 10
    with app.app_context():
        seed(45)
        posts.create("Slack water", "Words.", "subscribers", True)
        digest_id = runs.send_now().id
        assert_finished_after_its_last_mail(digest_id, 45)
    counts = per_recipient(mailbox)
    assert len(counts) == 45 and set(counts.values()) == {1}


@pytest.fixture
def quick_retries(app, backend):
    """A worker of our own with 4xx retries after a fraction of a second (the session worker is stopped)."""
    if backend.worker is not None:
        backend.worker.stop()
        backend.worker = None
    fast = {"KEEPREADING_DIGEST_RETRY_DELAY": "0.2", "KEEPREADING_DIGEST_RETRY_MAX_DELAY": "1"}
    process = WorkerProcess({**backend.env, **fast}, log=backend.folder / "finish-worker.log").start()
    wait_for_ping(app, "quick-retries")
    yield process
    process.stop()


def test_a_run_whose_last_batch_was_retried_finishes_with_the_retry(app, quick_retries, mailbox):
    """450 for some readers: their batch is retried by Celery, and that retry finishes the run."""
    mailbox.faults.refuse_first_attempt = {"reader3@example.com", "reader17@example.com"}
    app.config["DIGEST_BATCH_SIZE"] = 10
    with app.app_context():
        seed(20)
        posts.create("Neap tide", "Words.", "subscribers", True)
        digest_id = runs.send_now().id
        assert_finished_after_its_last_mail(digest_id, 20)
        retried = db.session.scalars(select(Delivery.subscriber_id).where(Delivery.attempts > 1)).all()
    assert len(retried) == 2
    counts = per_recipient(mailbox)
    assert len(counts) == 20 and set(counts.values()) == {1}
