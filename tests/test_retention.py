"""Retention: per-recipient delivery rows of runs finished past DELIVERY_RETENTION_DAYS are pruned in bounded
batches; each run keeps its counts, open and recent runs keep their rows."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select, update

from service.digests import runs
from service.extensions import db
from service.models import Delivery, Digest, Subscriber, utcnow

from .test_digests import publish_at, seed


def a_run(slot: str, when, finished: bool = True) -> int:
    digest = runs.create_run(slot, None, when)
    assert digest is not None
    db.session.execute(update(Delivery).where(Delivery.digest_id == digest.id)
                       .values(status="sent", sent_at=when, lease_until=None))
    db.session.execute(update(Subscriber).values(digest_watermark=when - timedelta(days=1000)))  # due again
    if finished:
        digest.finished_at = when
    db.session.commit()
    return digest.id


def rows_of(digest_id: int) -> int:
    return db.session.scalar(select(func.count()).select_from(Delivery).where(Delivery.digest_id == digest_id))


def test_old_runs_lose_their_rows_in_bounded_batches_and_keep_their_counts(app):
    with app.app_context():
        now = utcnow()
        seed(60, since=now - timedelta(days=200))
        publish_at(now - timedelta(days=150), "Old news")
        old = a_run("manual:old", now - timedelta(days=120))
        open_old = a_run("manual:open", now - timedelta(days=110), finished=False)
        recent = a_run("manual:recent", now - timedelta(days=10))
        assert rows_of(old) == rows_of(open_old) == rows_of(recent) == 60
        db.session.execute(update(Delivery).where(Delivery.digest_id == old, Delivery.subscriber_id % 10 == 0)
                           .values(status="failed", error="550 no such user"))
        db.session.execute(update(Subscriber).where(Subscriber.id % 10 == 0).values(status="bounced"))
        db.session.commit()
        before = runs.summary(runs.get(old))["counts"]
        assert before["failed"] == 6 and before["sent"] == 54

        assert runs.prune(now, batch=7, budget=20) == 21  # whole batches, stopping once past the budget
        assert rows_of(old) == 39
        assert runs.prune(now, batch=7, budget=1000) == 39
        assert rows_of(old) == 0 and rows_of(open_old) == 60 and rows_of(recent) == 60
        assert runs.prune(now) == 0

        summary = runs.summary(runs.get(old))
        assert summary["counts"] == before and summary["recipients"] == 60
        history = {run["id"]: run for run in runs.history()}
        assert history[old]["bounced"] == 6
        assert history[recent]["counts"]["sent"] == 60


def test_retention_zero_keeps_every_row(app):
    with app.app_context():
        app.config["DELIVERY_RETENTION_DAYS"] = 0
        now = utcnow()
        seed(5, since=now - timedelta(days=400))
        publish_at(now - timedelta(days=390), "Ancient")
        old = a_run("manual:ancient", now - timedelta(days=365))
        assert runs.prune(now) == 0 and rows_of(old) == 5
        assert db.session.get(Digest, old).kept_counts is None
