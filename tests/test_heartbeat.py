"""The claim's heartbeat and fencing, in-process: a renewal keeps the rows of a live batch; once the dispatcher
took a claim back and another batch claimed the rows, the first batch renews nothing, stops before handing
anything over, and its outcomes leave the new claim alone."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from service.digests import runs, sending
from service.extensions import db
from service.models import Delivery, utcnow
from service.publishing import posts

from .test_digests import seed


def claimed_run(count: int = 5):
    seed(count)
    posts.create("Gale", "Words.", "subscribers", True)
    digest = runs.create_run("manual:heartbeat", None, utcnow())
    ids = list(db.session.scalars(select(Delivery.id).where(Delivery.digest_id == digest.id).order_by(Delivery.id)))
    rows = sending.claim(digest.id, ids[0], ids[-1], utcnow() + timedelta(seconds=30))
    return digest, rows


def test_a_renewal_moves_the_lease_of_every_row_still_held(app):
    with app.app_context():
        digest, rows = claimed_run()
        beat = sending.Heartbeat(db.engine, digest.id, {row.delivery_id: row.token for row in rows}, 30, time.monotonic())
        before = set(db.session.scalars(select(Delivery.lease_until)))
        db.session.rollback()
        assert beat.renew(utcnow() + timedelta(seconds=5)) == len(rows)
        after = set(db.session.scalars(select(Delivery.lease_until)))
        assert len(after) == 1 and min(after) > max(before)
        beat.check()  # still ours, time to spare


def test_a_claim_taken_back_and_claimed_again_is_fenced_off(app):
    with app.app_context():
        digest, rows = claimed_run()
        tokens = {row.delivery_id: row.token for row in rows}
        beat = sending.Heartbeat(db.engine, digest.id, tokens, 30, time.monotonic())
        # the worker looks dead: its lease ran out, the dispatcher hands the rows out, another batch claims them
        db.session.execute(update(Delivery).values(lease_until=utcnow() - timedelta(seconds=1)))
        db.session.commit()
        assert runs.recover(utcnow()) == len(rows)
        again = sending.claim(digest.id, rows[0].delivery_id, rows[-1].delivery_id, utcnow() + timedelta(seconds=30))
        assert [row.token for row in again] == [row.token + 1 for row in rows]
        assert beat.renew(utcnow()) == 0
        beat.lost = True  # what the thread sets when a renewal holds fewer rows than claimed
        with pytest.raises(sending.LeaseRunningOut):
            beat.check()
        # the first batch's outcomes touch nothing: the rows stay the second claim's
        outcome = sending.Outcomes(sent=[rows[0].delivery_id], unsent=[row.delivery_id for row in rows[1:]])
        sending.record(outcome, None, tokens)
        assert set(db.session.scalars(select(Delivery.status))) == {"sending"}
        assert set(db.session.scalars(select(Delivery.attempts))) == {rows[0].token + 1}


def test_a_batch_that_cannot_renew_stops_at_its_deadline(app):
    with app.app_context():
        digest, rows = claimed_run(1)
        beat = sending.Heartbeat(db.engine, digest.id, {rows[0].delivery_id: rows[0].token}, 1.0, time.monotonic() - 0.9)
        with pytest.raises(sending.LeaseRunningOut):  # a fifth of the lease before it runs out: no hand-over
            beat.check()
