"""Bursts of transactional mail (issue 15): one task drains every due outbox row in claimed batches, each mail
once, also when the worker is SIGKILLed mid-drain."""
from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text, update

from service import tasks
from service.extensions import db
from service.mail import commits, handovers, outbox
from service.models import OutboxEmail, Subscriber, utcnow

from .conftest import wait_until
from .mailbox import _free_port
from .workers import WorkerProcess


def seed_confirmations(count: int, prefix: str = "burst") -> list[int]:
    """Pending subscribers, each with a confirmation waiting in the outbox (no task queued); the rows' ids."""
    now = utcnow()
    db.session.execute(insert(Subscriber), [
        {"email": f"{prefix}{n}@example.org", "name": "", "status": "pending", "frequency": "default",
         "created_at": now, "consent_at": now} for n in range(count)])
    ids = db.session.scalars(select(Subscriber.id).where(Subscriber.email.like(f"{prefix}%"))
                             .order_by(Subscriber.id)).all()
    db.session.execute(insert(OutboxEmail), [{"kind": "confirm", "subscriber_id": subscriber_id,
                                              "data": {"next": "/"}, "created_at": now} for subscriber_id in ids])
    db.session.commit()
    return list(db.session.scalars(select(OutboxEmail.id).order_by(OutboxEmail.id)))


def per_recipient(mailbox) -> Counter:
    with mailbox.lock:
        return Counter(message.to for message in mailbox.messages)


def test_one_drain_sends_every_due_row_once_and_leaves_the_others(app, mailbox, own_queue):
    with app.app_context():
        ids = seed_confirmations(outbox.DRAIN_BATCH * 2 + 50)
        waiting, held, stale = ids[:3]
        later = utcnow() + timedelta(minutes=5)
        db.session.execute(update(OutboxEmail).where(OutboxEmail.id == waiting)
                           .values(lease_until=later, attempts=1, error="421 try later"))  # in its back-off
        db.session.execute(update(OutboxEmail).where(OutboxEmail.id == held).values(lease_until=later, attempts=1))
        db.session.execute(update(OutboxEmail).where(OutboxEmail.id == stale)
                           .values(created_at=utcnow() - timedelta(days=2)))  # flush leaves it too
        request = outbox.add_signin_request("someone@example.org", "/")  # the request task's, never the drain's
        db.session.commit()
        request_id = request.id
        assert outbox.drain(ids[-1]) == len(ids) - 3
        assert outbox.drain() == 0  # nothing due any more: a queued task for a drained row finds nothing
        unsent = set(db.session.scalars(select(OutboxEmail.id).where(OutboxEmail.sent_at.is_(None))))
        attempts = Counter(db.session.scalars(select(OutboxEmail.attempts).where(OutboxEmail.sent_at.is_not(None))))
    counts = per_recipient(mailbox)
    assert len(counts) == len(ids) - 3 and set(counts.values()) == {1}
    assert unsent == {waiting, held, stale, request_id}
    assert attempts == {1: len(ids) - 3}


def test_a_stale_row_is_still_sent_by_its_own_task(app, mailbox, own_queue):
    """The drain skips day-old rows of others (a day-old confirmation only confuses), as flush does; a row's
    own task still sends it, as before."""
    with app.app_context():
        first, second = seed_confirmations(2)
        db.session.execute(update(OutboxEmail).values(created_at=utcnow() - timedelta(days=2)))
        db.session.commit()
        assert outbox.drain(second) == 1
        assert db.session.get(OutboxEmail, first).sent_at is None
        assert db.session.get(OutboxEmail, second).sent_at is not None
    assert len(mailbox.messages) == 1


def test_a_refusal_mid_batch_retries_that_row_and_a_lost_server_releases_the_rest(app, mailbox, own_queue):
    with app.app_context():
        ids = seed_confirmations(20)
        mailbox.faults.by_recipient["burst3@example.org"] = "450 4.2.1 mailbox busy"
        mailbox.faults.by_recipient["burst4@example.org"] = "550 5.1.1 no such user"
        assert outbox.drain() == 18
        rows = {row.id: row for row in db.session.scalars(select(OutboxEmail))}
        busy, unknown = rows[ids[3]], rows[ids[4]]
        assert busy.sent_at is None and busy.error.startswith("450") and busy.lease_until > utcnow()
        assert unknown.sent_at is None and unknown.attempts == outbox.MAX_ATTEMPTS
        db.session.rollback()
        # the server goes away: the first row is retried later, the rest wait without spending an attempt
        fresh = seed_confirmations(5, prefix="later")[-5:]
        app.config["SMTP_URL"] = f"smtp://127.0.0.1:{_free_port()}"  # nothing listens there
        assert outbox.drain() == 0
        rows = {row.id: row for row in db.session.scalars(select(OutboxEmail).where(OutboxEmail.id.in_(fresh)))}
        assert all(row.sent_at is None and row.error and row.lease_until > utcnow() for row in rows.values())
        assert sorted(row.attempts for row in rows.values()) == [0, 0, 0, 0, 1]
    assert len(per_recipient(mailbox)) == 18


def test_a_mark_is_committed_once_the_dot_is_written_and_its_answer_read_after(app, backend):
    """On PostgreSQL the mark's COMMIT is written before the "." and held by the kernel until `release` (right
    after the "."); its answer is read by `settle`."""
    if backend.name != "postgresql":
        pytest.skip("SQLite commits in the worker's own process: its hand-overs go to a file (see the next tests)")
    with app.app_context(), db.engine.connect() as other:
        [outbox_id] = seed_confirmations(1)
        error = select(OutboxEmail.error).where(OutboxEmail.id == outbox_id)
        db.session.execute(update(OutboxEmail).where(OutboxEmail.id == outbox_id).values(error="marked"))
        assert commits.holds_commits()
        mark = commits.send()
        assert mark.corked is not None
        assert other.scalar(error) is None  # held (for at most 200 ms)
        other.rollback()
        mark.release()
        wait_until(lambda: other.scalar(error) == "marked" or other.rollback(), 5, "the COMMIT was not sent")
        mark.settle()
        assert not db.session().in_transaction()  # SQLAlchemy's transaction ended with psycopg's
        assert db.session.scalar(error) == "marked"


def dead_workers_journal(app, ids: list[int], retracted: tuple[int, ...] = ()) -> Path:
    """The hand-over file a SQLite worker killed after the "." (before its marks) leaves: no process holds it."""
    folder = Path(app.instance_path) / handovers.FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "outbox-999999-deadbeef.log"
    path.write_text("".join(f"{outbox_id}\n" for outbox_id in ids) + "".join(f"-{n}\n" for n in retracted))
    return path


def test_sqlite_records_each_hand_over_before_the_dot_and_empties_its_file_once_marked(app, backend, mailbox, own_queue,
                                                                                     monkeypatch):
    if backend.name != "sqlite":
        pytest.skip("PostgreSQL's mark is its COMMIT, held until the \".\" (see above)")
    with app.app_context():
        ids = seed_confirmations(3)
        seen: list[set[int]] = []
        original = handovers.Handovers.record

        def record(journal, outbox_id):  # what the file holds as each mail's "." is about to go
            original(journal, outbox_id)
            seen.append(handovers.recorded(app.instance_path, ids))

        monkeypatch.setattr(handovers.Handovers, "record", record)
        assert outbox.drain() == 3
        assert seen == [set(ids[:1]), set(ids[:2]), set(ids)]
        assert handovers.recorded(app.instance_path, ids) == set()  # all marked: the file is empty again
        assert all(row.sent_at for row in db.session.scalars(select(OutboxEmail)))
    assert len(per_recipient(mailbox)) == 3


def test_sqlite_rows_a_killed_worker_handed_over_are_marked_sent_not_sent_again(app, backend, mailbox, own_queue):
    """A worker killed between the "." and its mark: the rows its file names are marked when claimed again, or by
    flush (even a row at its last attempt, which no claim takes); a retracted one (refused after its ".") is sent."""
    if backend.name != "sqlite":
        pytest.skip("PostgreSQL's mark is its COMMIT, written before the \".\"")
    with app.app_context():
        claimed_again, last_attempt, refused, never = seed_confirmations(4)
        expired = utcnow() - timedelta(seconds=1)
        db.session.execute(update(OutboxEmail).where(OutboxEmail.id.in_([claimed_again, refused, never]))
                           .values(lease_until=expired, attempts=1))
        db.session.execute(update(OutboxEmail).where(OutboxEmail.id == last_attempt)
                           .values(lease_until=expired, attempts=outbox.MAX_ATTEMPTS))
        db.session.commit()
        path = dead_workers_journal(app, [claimed_again, last_attempt, refused], retracted=(refused,))
        assert outbox.drain() == 2  # `refused` and `never`: the server never took them
        rows = {row.id: row for row in db.session.scalars(select(OutboxEmail))}
        assert rows[claimed_again].sent_at and rows[refused].sent_at and rows[never].sent_at
        assert rows[last_attempt].sent_at is None
        outbox.flush()  # the file's process is gone: its last hand-over is marked, then the file goes
        db.session.expire_all()
        assert db.session.get(OutboxEmail, last_attempt).sent_at is not None
        assert not path.exists()
    assert sorted(message.to for message in mailbox.messages) == ["burst2@example.org", "burst3@example.org"]


def test_sqlite_flush_keeps_a_live_workers_file_and_a_gone_ones_under_a_live_claim(app, backend, own_queue):
    if backend.name != "sqlite":
        pytest.skip("hand-over files are SQLite's")
    with app.app_context():
        [held] = seed_confirmations(1)
        db.session.execute(update(OutboxEmail).where(OutboxEmail.id == held)
                           .values(lease_until=utcnow() + timedelta(minutes=5), attempts=1))
        db.session.commit()
        gone = dead_workers_journal(app, [held])
        live = handovers.of_process(app.instance_path)
        live.record(held)  # this process's file, flock held
        outbox.flush()
        assert gone.exists() and db.session.get(OutboxEmail, held).sent_at is None  # a claim still holds the row
        live.marked(held)
        live.tidy()
        gone.unlink()
        assert handovers.recorded(app.instance_path, [held]) == set()


@pytest.fixture
def at_commit(app):
    """`at_commit(name, when, body)`: PostgreSQL runs the PL/pgSQL `body` for each outbox row updated to match
    `when` as its transaction commits (a deferred trigger), until the test ends."""
    names: list[str] = []

    def install(name: str, when: str, body: str) -> None:
        db.session.execute(text(f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} "
                                "RETURN NULL; END $$"))
        db.session.execute(text(f"CREATE CONSTRAINT TRIGGER {name} AFTER UPDATE ON outbox DEFERRABLE INITIALLY "
                                f"DEFERRED FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION {name}()"))
        db.session.commit()
        names.append(name)

    yield install
    with app.app_context():
        for name in names:
            db.session.execute(text(f"DROP TRIGGER {name} ON outbox"))
            db.session.execute(text(f"DROP FUNCTION {name}()"))
        db.session.commit()


@pytest.mark.parametrize("refusal", [
    "RAISE EXCEPTION 'the mark of % refused', NEW.id;",
    "PERFORM pg_terminate_backend(pg_backend_pid()); PERFORM pg_sleep(5);",  # the connection ends instead
])
def test_a_mark_refused_after_the_dot_leaves_its_mail_sent_and_its_row_claimed(app, backend, mailbox, own_queue,
                                                                               at_commit, refusal, caplog):
    if backend.name != "postgresql":
        pytest.skip("SQLite commits in the worker's own process: no answer comes after the end of data")
    with app.app_context():
        ids = seed_confirmations(3)
        at_commit("refuse_mark", f"NEW.id = {ids[1]} AND NEW.sent_at IS NOT NULL", refusal)
        with caplog.at_level(logging.WARNING, logger="service.mail.outbox"):
            assert outbox.drain() == 3  # the server took all three
        rows = {row.id: row for row in db.session.scalars(select(OutboxEmail))}
    assert len(per_recipient(mailbox)) == 3
    assert rows[ids[0]].sent_at and rows[ids[2]].sent_at  # the session went on (on a new connection when the old one ended)
    # handed over, not marked: its claim runs out and it is sent again, the one case where a reader may get it twice
    assert rows[ids[1]].sent_at is None and rows[ids[1]].lease_until is not None
    assert f"outbox email {ids[1]}: handed over, its mark unconfirmed" in caplog.text


def test_a_burst_of_signups_all_confirmed_once_through_the_worker(app, client, worker, mailbox):
    count = 120
    for n in range(count):
        answer = client.post("/subscribe", data={"email": f"wave{n}@example.org", "next": "/"},
                             environ_base={"REMOTE_ADDR": f"198.51.100.{n % 200}"})
        assert answer.status_code == 200
    mailbox.wait_for(count, timeout=120)
    with app.app_context():
        wait_until(lambda: db.session.scalar(select(func.count()).select_from(OutboxEmail)
                                             .where(OutboxEmail.sent_at.is_(None))) == 0, 30, "rows left unsent")
    counts = per_recipient(mailbox)
    assert set(counts) == {f"wave{n}@example.org" for n in range(count)} and set(counts.values()) == {1}
    assert all("Confirm your subscription" in message.message["Subject"] for message in mailbox.messages)


@pytest.fixture
def own_workers(app, backend):
    """Workers of this test's own, with a short outbox lease (the session's worker is stopped)."""
    if backend.worker is not None:
        backend.worker.stop()
        backend.worker = None
    app.config["OUTBOX_LEASE"] = 3.0
    started: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        process = WorkerProcess({**backend.env, "KEEPREADING_OUTBOX_LEASE": "3"}, concurrency=2,
                                log=backend.folder / f"outbox-worker-{len(started)}.log").start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


# Mails at the sink when each worker is killed, and a pause of a few milliseconds before the kill so that the
# kills land at different points of a mail's hand-over (the claim, the render, the mark, the end of data).
KILLS = [(100 * n, n / 1000) for n in range(1, 9)]


@pytest.mark.slow
@pytest.mark.flaky(reruns=1)  # a kill in the microseconds between the hand-over's record and the "."; see below
def test_workers_killed_mid_drain_then_each_confirmation_arrives_once(app, backend, own_workers, mailbox, at_commit):
    with app.app_context():
        if backend.name == "postgresql":
            # a COMMIT 2 ms longer, as with a database across a network or a synchronous standby: a third of
            # each mail's time when the mark's answer was awaited before the "."
            at_commit("slow_mark", "NEW.sent_at IS NOT NULL AND OLD.sent_at IS NULL", "PERFORM pg_sleep(0.002);")
        ids = seed_confirmations(1000)
        for outbox_id in ids:  # as the signups would: a task for each row, the first of them drains most
            tasks.send_outbox_email.delay(outbox_id)
        at_kills, claimed = [], []
        for sent_before_kill, pause in KILLS:
            worker = own_workers()
            mailbox.wait_for(sent_before_kill, timeout=120)
            time.sleep(pause)
            worker.kill()
            at_kills.append(len(mailbox.messages))
            claimed.append(db.session.scalar(select(func.count()).select_from(OutboxEmail).where(
                OutboxEmail.sent_at.is_(None), OutboxEmail.lease_until.is_not(None))))
            db.session.rollback()
        last = own_workers()

        def settled() -> bool:
            outbox.flush()  # what beat does every minute: rows whose lease ran out are queued again
            unsent = db.session.scalar(select(func.count()).select_from(OutboxEmail).where(OutboxEmail.sent_at.is_(None)))
            db.session.rollback()
            return unsent == 0

        wait_until(settled, 120, "outbox rows left unsent", interval=1)
        assert last.alive
    with contextlib.suppress(AssertionError):  # the last marks may be a little ahead of their mails; a lost one never comes
        mailbox.wait_for(len(ids), timeout=10)
    time.sleep(1)  # anything sent twice arrives by now
    counts = per_recipient(mailbox)
    lost, twice = len(ids) - len(counts), sum(count - 1 for count in counts.values())
    print(f"\noutbox kill test: mails at the sink at each kill {at_kills}, rows claimed and unsent then {claimed}; "
          f"{sum(counts.values())} mails for {len(counts)} of {len(ids)} readers: {lost} lost, {twice} sent twice")
    assert at_kills[-1] < len(ids) - outbox.DRAIN_BATCH and all(claimed)  # each kill came mid-drain
    assert twice == 0  # each hand-over is recorded before the final "." of its DATA
    # The hand-over is recorded just before the "." (PostgreSQL: the mark's COMMIT, held by the kernel, its answer
    # read after; SQLite: an append to the worker's hand-over file, the row marked after the answer), so a
    # process killed between the two writes dies in a few microseconds of no I/O. With PostgreSQL's answer
    # awaited before the ".", each of 12 runs lost 2 to 9 mails; with SQLite's commit before it, about one mail
    # in 50 kills. A kill can still land in those microseconds, hence the one rerun.
    assert lost == 0
