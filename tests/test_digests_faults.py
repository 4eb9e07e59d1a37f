"""Digests under faults, with real worker processes: SIGKILL mid-run, 421s, a 550, the SMTP server away."""
from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from service.digests import runs
from service.extensions import db
from service.models import Delivery, Digest, Subscriber
from service.publishing import posts

from .conftest import wait_for_ping, wait_until
from .mailbox import Mailbox
from .test_digests import per_recipient, seed
from .workers import WorkerProcess

pytestmark = pytest.mark.slow
FAST = {  # short leases and retry delays, so faults settle within seconds
    "KEEPREADING_DELIVERY_LEASE": "6",
    "KEEPREADING_DIGEST_RETRY_DELAY": "0.2",
    "KEEPREADING_DIGEST_RETRY_MAX_DELAY": "1",
}


@pytest.fixture
def workers(app, backend):
    """Start workers of our own (the session worker is stopped so that it does not compete); stop them after."""
    if backend.worker is not None:
        backend.worker.stop()
        backend.worker = None
    app.config.update(DELIVERY_LEASE=6.0, DIGEST_RETRY_DELAY=0.2, DIGEST_RETRY_MAX_DELAY=1.0)
    started: list[WorkerProcess] = []

    def start(beat: bool = False, **env) -> WorkerProcess:
        process = WorkerProcess({**backend.env, **FAST, **env}, concurrency=2, beat=beat,
                                log=backend.folder / f"digest-worker-{len(started)}.log").start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def status_counts(digest_id: int) -> dict[str, int]:
    rows = db.session.execute(select(Delivery.status, func.count()).where(Delivery.digest_id == digest_id)
                              .group_by(Delivery.status)).all()
    db.session.rollback()
    return dict(rows)


def dispatched_until_settled(digest_id: int, timeout: float) -> dict:
    """The beat's dispatcher, run here every half second (as beat would every two minutes)."""
    def settled():
        runs.dispatch()
        digest = db.session.get(Digest, digest_id)
        db.session.refresh(digest)
        return digest.finished_at is not None

    wait_until(settled, timeout, f"digest {digest_id} not settled", interval=0.5)
    return status_counts(digest_id)


def test_worker_killed_mid_run_then_a_new_one_sends_each_mail_once(app, workers, mailbox):
    with app.app_context():
        app.config["DIGEST_BATCH_SIZE"] = 100
        ids = seed(2000)
        posts.create("Storm warning", "Words.", "subscribers", True)
        first = workers()
        wait_for_ping(app, "first-worker")
        digest = runs.send_now()
        mailbox.wait_for(700, timeout=120)
        first.kill()
        at_kill = len(mailbox.messages)
        states = status_counts(digest.id)
        second = workers()
        wait_for_ping(app, "second-worker")
        final = dispatched_until_settled(digest.id, timeout=180)
        assert second.alive
    counts = per_recipient(mailbox)
    print(f"\nkill test: {at_kill} mails at the sink when the worker was killed; deliveries then {states}; "
          f"after a new worker and the dispatcher: {final}; {sum(counts.values())} mails for "
          f"{len(counts)} of {len(ids)} subscribers, most to one address: {max(counts.values())}")
    assert 0 < at_kill < len(ids)
    assert final == {"sent": len(ids)}
    assert len(counts) == len(ids) and set(counts.values()) == {1}


DEFAULTS = {  # the shipped settings: a 30 s lease renewed by the heartbeat, recovery beat every 15 s
    "KEEPREADING_DELIVERY_LEASE": "30",
    "KEEPREADING_RECOVERY_CHECK_SECONDS": "15",
    "KEEPREADING_DIGEST_RETRY_DELAY": "30",
    "KEEPREADING_DIGEST_RETRY_MAX_DELAY": "1800",
}


def test_worker_killed_with_the_default_settings_beat_settles_the_run_within_90_seconds(app, workers, mailbox):
    """No dispatcher run by the test: a second worker with beat (the shipped schedule) takes over."""
    with app.app_context():
        app.config.update(DIGEST_BATCH_SIZE=100, DELIVERY_LEASE=30.0)
        ids = seed(2000)
        posts.create("Squall", "Words.", "subscribers", True)
        keeper = workers(beat=True, **DEFAULTS)
        victim = workers(**DEFAULTS)
        wait_for_ping(app, "keeper-and-victim")
        digest = runs.send_now()
        mailbox.wait_for(600, timeout=120)
        victim.kill()
        killed_at, at_kill = time.monotonic(), len(mailbox.messages)
        states = status_counts(digest.id)

        def finished():
            row = db.session.get(Digest, digest.id)
            db.session.refresh(row)
            db.session.rollback()
            return row.finished_at is not None

        wait_until(finished, 150, "the run did not settle", interval=0.5)
        settled = time.monotonic() - killed_at
        final = status_counts(digest.id)
        assert keeper.alive
    counts = per_recipient(mailbox)
    print(f"\ndefault-settings kill: {at_kill} mails at the kill, deliveries then {states}; settled "
          f"{settled:.1f}s after it: {final}; {sum(counts.values())} mails for {len(counts)} of {len(ids)}")
    assert states.get("sending", 0) > 0  # the killed worker held claims
    assert final == {"sent": len(ids)}
    assert len(counts) == len(ids) and set(counts.values()) == {1}
    assert settled <= 90


def test_heartbeat_keeps_a_slow_batch_longer_than_its_lease(app, workers, mailbox):
    """Lease 3 s, each mail answered after 0.1 s, 100 mails a batch (10 s): the heartbeat renews the claim,
    the dispatcher (run here all along) takes nothing back, every reader gets one mail."""
    with app.app_context():
        app.config.update(DIGEST_BATCH_SIZE=100, DELIVERY_LEASE=3.0)
        ids = seed(100)
        mailbox.faults.delay = 0.1
        posts.create("Drizzle", "Words.", "subscribers", True)
        workers(KEEPREADING_DELIVERY_LEASE="3")
        digest = runs.send_now()
        final = dispatched_until_settled(digest.id, timeout=120)
        attempts = db.session.scalar(select(func.max(Delivery.attempts)).where(Delivery.digest_id == digest.id))
    counts = per_recipient(mailbox)
    assert final == {"sent": len(ids)}
    assert attempts == 1  # never taken back and claimed again
    assert len(counts) == len(ids) and set(counts.values()) == {1}


def test_421_for_a_tenth_of_recipients_all_delivered_after_retries(app, workers, mailbox):
    with app.app_context():
        ids = seed(200)
        mailbox.faults.refuse_first_attempt = {f"reader{index}@example.com" for index in range(0, 200, 10)}
        posts.create("Swell", "Words.", "subscribers", True)
        workers()
        digest = runs.send_now()
        final = dispatched_until_settled(digest.id, timeout=90)
        attempts = dict(db.session.execute(select(Subscriber.email, Delivery.attempts).join_from(Delivery, Subscriber)).all())
    assert final == {"sent": len(ids)}
    assert {email for email, count in attempts.items() if count > 1} == mailbox.faults.refuse_first_attempt
    counts = per_recipient(mailbox)
    assert len(counts) == len(ids) and set(counts.values()) == {1}


def test_550_bounces_the_subscriber_who_is_skipped_next_run(app, workers, mailbox):
    with app.app_context():
        seed(20)
        gone = "reader7@example.com"
        mailbox.faults.by_recipient[gone] = "550 5.1.1 no such user"
        posts.create("Fog", "Words.", "subscribers", True)
        workers()
        first = runs.send_now()
        assert dispatched_until_settled(first.id, timeout=60) == {"sent": 19, "failed": 1}
        bounced = db.session.scalar(select(Subscriber).where(Subscriber.email == gone))
        assert bounced.status == "bounced" and bounced.bounced_at is not None
        assert "550" in db.session.scalar(select(Delivery.error).where(Delivery.status == "failed"))
        posts.create("Clear skies", "Words.", "subscribers", True)
        second = runs.send_now()
        assert dispatched_until_settled(second.id, timeout=60) == {"sent": 19}
        assert gone not in db.session.scalars(select(Subscriber.email).join_from(Delivery, Subscriber)
                                              .where(Delivery.digest_id == second.id)).all()
    assert len(mailbox.to(gone)) == 0 and len(mailbox.messages) == 38


def test_smtp_server_down_for_a_while_nothing_sent_until_delivered(app, workers):
    later = Mailbox()  # its port is free until it starts: connections are refused
    try:
        with app.app_context():
            ids = seed(50)
            posts.create("Power cut", "Words.", "subscribers", True)
            workers(KEEPREADING_SMTP_URL=later.url)
            digest = runs.send_now()

            def refused():
                errors = db.session.scalars(select(Delivery.error).where(Delivery.digest_id == digest.id)).all()
                db.session.rollback()
                return all(error and "refused" in error.lower() for error in errors)

            wait_until(refused, 60, "the refused connection was not recorded")
            assert status_counts(digest.id) == {"pending": len(ids)}
            assert db.session.scalar(select(func.max(Delivery.attempts))) == 0  # the server's fault, not the readers'
            later.start()
            final = dispatched_until_settled(digest.id, timeout=90)
        assert final == {"sent": len(ids)}
        counts = per_recipient(later)
        assert len(counts) == len(ids) and set(counts.values()) == {1}
    finally:
        later.stop()

