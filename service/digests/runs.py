"""Digest runs: who is due, one run per schedule slot, deliveries fanned out in id ranges, stale claims recovered.

A run takes every due subscriber at once: it inserts their Delivery rows (INSERT ... SELECT in keyset
id ranges, never a list of subscribers in memory) and moves their watermark to the run's cutoff in the
same transaction, under the publication lock, so a second run, a duplicate beat or a concurrent
dispatcher finds nothing new. A delivery carries the posts published in (delivery.since, digest.cutoff].
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import cast
from zoneinfo import ZoneInfo

from flask import current_app
from kombu.exceptions import ChannelError
from sqlalchemy import CursorResult, and_, case, delete, exists, func, insert, literal, or_, select, update

from ..errors import NotFound, ValidationError
from ..extensions import db
from ..models import (
    Delivery,
    Digest,
    Post,
    PublicationSettings,
    Subscriber,
    UTCDateTime,
    utcnow,
)
from ..publishing import publication
from . import journal as send_journal

SEND_BATCH = "service.tasks.send_digest_batch"  # the name queued messages carry: part of the contract
OPEN = ("pending", "sending")
COUNTED = ("pending", "sending", "sent", "failed", "skipped")


# --- the schedule ---

def due_slots(settings: PublicationSettings, now: datetime) -> list[tuple[str, str]]:
    """(frequency, slot) pairs due at `now`: from the send hour on, once per local day (weekly: on its weekday).

    Counted in the publisher's time zone, so the hour holds across DST changes; on a day whose send
    hour does not exist (spring forward) the first later hour sends."""
    local = now.astimezone(ZoneInfo(settings.timezone))
    if local.hour < settings.send_hour:
        return []
    slots = [("daily", f"daily:{local.date().isoformat()}")]
    if local.weekday() == settings.send_weekday:
        slots.append(("weekly", f"weekly:{local.date().isoformat()}"))
    return slots


def schedule(now: datetime) -> list[int]:
    """Create the runs due at `now` that do not exist yet; the ids of those created."""
    created = []
    for frequency, slot in due_slots(publication.settings(), now):
        digest = create_run(slot, frequency, now)
        if digest is not None:
            created.append(digest.id)
    return created


def dispatch(now: datetime | None = None) -> dict:
    """The beat's work: runs due now, claims whose worker died, runs that are settled."""
    now = now or utcnow()
    created = schedule(now)
    for digest_id in created:
        enqueue(digest_id)
    return {"created": created, **recover_and_finish(now)}


def recover_and_finish(now: datetime | None = None) -> dict:
    """The recovery beat's work (every RECOVERY_CHECK_SECONDS): a dead worker's claims go to another, settled runs close."""
    now = now or utcnow()
    return {"requeued": recover(now), "finished": finish(now)}


def send_now(frequency: str | None = None, now: datetime | None = None) -> Digest:
    """A manual run for every confirmed subscriber with unseen posts (of one frequency if given), sent now."""
    if frequency not in (None, "daily", "weekly"):
        raise ValidationError("frequency must be daily or weekly", field="frequency")
    digest = create_run(f"manual:{uuid.uuid4()}", frequency, now or utcnow())
    assert digest is not None  # a new slot: no run has it yet
    enqueue(digest.id)
    return digest


# --- creating a run ---

def create_run(slot: str, frequency: str | None, now: datetime) -> Digest | None:
    """One run for `slot`, with a delivery for each due subscriber; None when the slot has its run already."""
    db.session.commit()  # the lock below must open the transaction that reads and writes
    publication.lock()
    if db.session.scalar(select(Digest.id).where(Digest.slot == slot)) is not None:
        db.session.rollback()
        return None
    digest = Digest(slot=slot, frequency=frequency, cutoff=now, created_at=now)
    db.session.add(digest)
    db.session.flush()
    if not _add_deliveries(digest, now):
        digest.finished_at = now
    db.session.commit()
    return digest


def _due(frequency: str | None, latest_post: datetime) -> list:
    """Confirmed readers of this cadence who have not had the latest post ('default' follows the publisher)."""
    conditions = [Subscriber.status == "confirmed", watermark() < latest_post]
    if frequency is None:
        conditions.append(Subscriber.frequency != "off")
    elif publication.settings().default_frequency == frequency:
        conditions.append(Subscriber.frequency.in_((frequency, "default")))
    else:
        conditions.append(Subscriber.frequency == frequency)
    return conditions


def watermark():
    """Posts after this instant are new to the reader (set at confirmation, moved by each digest)."""
    return func.coalesce(Subscriber.digest_watermark, Subscriber.confirmed_at, Subscriber.created_at)


def _add_deliveries(digest: Digest, now: datetime) -> int:
    """INSERT ... SELECT the due subscribers in keyset id ranges, then move their watermarks; the count."""
    latest = db.session.scalar(select(func.max(Post.published_at))
                               .where(Post.published.is_(True), Post.published_at <= digest.cutoff))
    if latest is None:
        return 0
    due, size = _due(digest.frequency, latest), current_app.config["DIGEST_BATCH_SIZE"]
    promised = literal(now + promise(), UTCDateTime)  # a queued task owns the pending rows until then
    last = 0
    while True:
        upper = db.session.scalar(select(Subscriber.id).where(*due, Subscriber.id > last)
                                  .order_by(Subscriber.id).offset(size - 1).limit(1))
        bounds = [Subscriber.id > last] + ([Subscriber.id <= upper] if upper is not None else [])
        rows = select(literal(digest.id), Subscriber.id, watermark(), literal("pending"), literal(0), promised)
        db.session.execute(insert(Delivery).from_select(
            ["digest_id", "subscriber_id", "since", "status", "attempts", "lease_until"], rows.where(*due, *bounds)))
        if upper is None:
            break
        last = upper
    readers = select(Delivery.subscriber_id).where(Delivery.digest_id == digest.id)
    moved = cast(CursorResult, db.session.execute(update(Subscriber).where(Subscriber.id.in_(readers))
                               .values(digest_watermark=digest.cutoff).execution_options(synchronize_session=False)))
    return moved.rowcount


def _lease() -> timedelta:
    return timedelta(seconds=current_app.config["DELIVERY_LEASE"])


def promise() -> timedelta:
    """How long queued (pending, unclaimed) rows wait for their task before the dispatcher queues them again:
    four leases, at least two minutes. Longer than a claim's lease, since a queued task is lost only with the
    broker's queue (a broker restarted without persistence), while a big run's later batches may wait for a
    free worker: each promise that runs out queues a duplicate task, which finds nothing left to claim."""
    return max(4 * _lease(), timedelta(minutes=2))


# --- handing ranges to workers ---

def enqueue(digest_id: int) -> int:
    """One batch task per id range of the run's pending deliveries; the number of tasks."""
    count = 0
    for first, last in id_ranges(Delivery.digest_id == digest_id, Delivery.status == "pending"):
        queue_batch(digest_id, first, last)
        count += 1
    return count


def queue_batch(digest_id: int, first_id: int, last_id: int) -> None:
    """Queue the batch task by its name: service.tasks imports this module, so this one does not import it."""
    current_app.extensions["celery"].send_task(SEND_BATCH, args=[digest_id, first_id, last_id])


def id_ranges(*conditions) -> Iterator[tuple[int, int]]:
    """(first, last) delivery ids of consecutive chunks of DIGEST_BATCH_SIZE rows matching `conditions`."""
    size, last = current_app.config["DIGEST_BATCH_SIZE"], 0
    while True:
        ids = db.session.scalars(select(Delivery.id).where(*conditions, Delivery.id > last)
                                 .order_by(Delivery.id).limit(size)).all()
        if not ids:
            return
        yield ids[0], ids[-1]
        last = ids[-1]


# --- recovery and completion ---

def recover(now: datetime, digest_id: int | None = None) -> int:
    """Claims whose lease ran out (their worker died) and pending rows no task holds go back to workers.

    A 'sending' row the send journal holds was handed to the mail server: it is sent. The others are
    pending again and enqueued. The number of deliveries handed out again."""
    runs = select(Digest).where(Digest.finished_at.is_(None))
    if digest_id is not None:
        runs = runs.where(Digest.id == digest_id)
    count = 0
    unfinished = db.session.scalars(runs).all()  # a handful
    orphans_possible = bool(unfinished) and _queue_empty()
    for digest in unfinished:
        count += _recover_run(digest, now, orphans_possible)
    return count


def _queue_empty() -> bool:
    """Whether the broker's queue holds no task. A broker restarted without persistence loses its queue: the
    pending rows it held then have no task, and the recovery need not wait out their promise."""
    celery = current_app.extensions["celery"]
    try:
        with celery.connection_for_read() as connection:
            try:
                _, waiting, _ = connection.default_channel.queue_declare(queue=celery.conf.task_default_queue,
                                                                         passive=True)
            except ChannelError:  # Redis forgets an empty list: no such queue is an empty one
                return True
    except Exception:  # the broker away: nothing to learn now
        return False
    return waiting == 0


def _recover_run(digest: Digest, now: datetime, orphans_possible: bool = False) -> int:
    stale_lease = or_(Delivery.lease_until.is_(None), Delivery.lease_until < now)
    if orphans_possible:
        # the queue is empty, yet these rows' task was due two leases ago: lost with the queue (or held by a busy
        # worker, whose copy then finds nothing left to claim)
        overdue = and_(Delivery.status == "pending", Delivery.lease_until < now + promise() - 2 * _lease())
        stale_lease = or_(stale_lease, overdue)
    stale = and_(Delivery.digest_id == digest.id, Delivery.status.in_(OPEN), stale_lease)
    journal, size, count = send_journal.for_run(digest), current_app.config["DIGEST_BATCH_SIZE"], 0
    max_attempts = current_app.config["DIGEST_MAX_ATTEMPTS"]
    last = 0
    while True:
        rows = db.session.execute(select(Delivery.id, Delivery.status).where(stale, Delivery.id > last)
                                  .order_by(Delivery.id).limit(size)).all()
        if not rows:
            return count
        last = rows[-1].id
        handed_over = journal.recorded([row.id for row in rows if row.status == "sending"])
        ids = [row.id for row in rows if row.id not in handed_over]
        # the UPDATEs test staleness again: a live batch may have renewed its claim since the SELECT
        _mark(stale, handed_over, status="sent", sent_at=now, lease_until=None,
              error="sent; its worker stopped before recording it")
        again = _mark(stale, ids, status=case((Delivery.attempts >= max_attempts, "failed"), else_="pending"),
                      lease_until=now + promise(),
                      error=case((Delivery.attempts >= max_attempts, "gave up: attempts exhausted"), else_=Delivery.error))
        db.session.commit()
        if again:
            queue_batch(digest.id, min(again), max(again))
        count += len(again)


def _mark(stale, ids, **values) -> list[int]:
    if not ids:
        return []
    return list(db.session.scalars(update(Delivery).where(stale, Delivery.id.in_(list(ids))).values(**values)
                                   .returning(Delivery.id).execution_options(synchronize_session=False)))


def finish(now: datetime) -> list[int]:
    """Runs none of whose deliveries is pending or sending get their finished_at; their ids."""
    still_open = exists().where(Delivery.digest_id == Digest.id, Delivery.status.in_(OPEN))
    settled = db.session.scalars(select(Digest).where(Digest.finished_at.is_(None), ~still_open)).all()
    for digest in settled:
        digest.finished_at = now
    db.session.commit()
    for digest in settled:
        send_journal.for_run(digest).drop()
    return [digest.id for digest in settled]


def finish_if_settled(digest_id: int, now: datetime | None = None) -> bool:
    """Finish this run when none of its deliveries is open any more; True for the one caller that did.

    A batch calls it right after committing its outcomes, in a statement of its own: of batches that
    settle at once, the last to commit sees every other's outcomes, so the run finishes with its last
    batch, not at the next beat. The conditional UPDATE lets only one of them finish it."""
    still_open = exists().where(Delivery.digest_id == digest_id, Delivery.status.in_(OPEN))
    finished = cast(CursorResult, db.session.execute(
        update(Digest).where(Digest.id == digest_id, Digest.finished_at.is_(None), ~still_open)
        .values(finished_at=now or utcnow()).execution_options(synchronize_session=False)
    )).rowcount
    db.session.commit()
    return finished == 1


def settle(digest_id: int, now: datetime | None = None) -> dict:
    """For `digest send --wait`: recover this run's stale claims, finish it if it can be; its summary."""
    now = now or utcnow()
    recover(now, digest_id)
    finish(now)
    return summary(get(digest_id))


# --- reading runs ---

def get(digest_id: int) -> Digest:
    digest = db.session.get(Digest, digest_id)
    if digest is None:
        raise NotFound(f"no digest run {digest_id}")
    return digest


def counts(digest_ids: list[int]) -> dict[int, dict[str, int]]:
    found = {digest_id: dict.fromkeys(COUNTED, 0) for digest_id in digest_ids}
    kept = db.session.execute(select(Digest.id, Digest.kept_counts)
                              .where(Digest.id.in_(digest_ids), Digest.kept_counts.is_not(None))).all()
    for digest_id, tally in kept:  # pruned runs: their rows are gone, their counts kept
        found[digest_id].update({status: tally.get(status, 0) for status in COUNTED})
    rows = db.session.execute(select(Delivery.digest_id, Delivery.status, func.count())
                              .where(Delivery.digest_id.in_(digest_ids)).group_by(Delivery.digest_id, Delivery.status))
    for digest_id, status, number in rows:
        found[digest_id][status] = number
    return found


def summary(digest: Digest, tally: dict[str, int] | None = None) -> dict:
    tally = tally if tally is not None else counts([digest.id])[digest.id]
    return {
        "id": digest.id,
        "slot": digest.slot,
        "frequency": digest.frequency,
        "cutoff": digest.cutoff.isoformat(),
        "created_at": digest.created_at.isoformat(),
        "finished_at": digest.finished_at.isoformat() if digest.finished_at else None,
        "recipients": sum(tally.values()),
        "counts": tally,
    }


def recent(limit: int = 50) -> list[dict]:
    """The latest runs, newest first, with their delivery counts."""
    runs = db.session.scalars(select(Digest).order_by(Digest.id.desc()).limit(limit)).all()
    tallies = counts([digest.id for digest in runs])
    return [summary(digest, tallies[digest.id]) for digest in runs]


def history(limit: int = 50) -> list[dict]:
    """`recent` runs with what the studio shows beside them: bounces and how long each took."""
    runs = recent(limit)
    bounced = _bounces([run["id"] for run in runs])
    for run in runs:
        run["bounced"] = bounced.get(run["id"], 0)
        finished = run["finished_at"] and datetime.fromisoformat(run["finished_at"])
        run["duration"] = (finished - datetime.fromisoformat(run["created_at"])).total_seconds() if finished else None
    return runs


def _bounces(digest_ids: list[int]) -> dict[int, int]:
    """Failed deliveries whose address is now marked bounced (a 5xx answer): per run (as at pruning for pruned runs)."""
    kept = db.session.execute(select(Digest.id, Digest.kept_counts)
                              .where(Digest.id.in_(digest_ids), Digest.kept_counts.is_not(None))).all()
    return _live_bounces(digest_ids) | {digest_id: tally.get("bounced", 0) for digest_id, tally in kept}


def _live_bounces(digest_ids: list[int]) -> dict[int, int]:
    rows = db.session.execute(select(Delivery.digest_id, func.count()).join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                              .where(Delivery.digest_id.in_(digest_ids), Delivery.status == "failed",
                                     Subscriber.status == "bounced").group_by(Delivery.digest_id))
    return dict(rows.all())


# --- retention ---

def prune(now: datetime | None = None, batch: int = 5000, budget: int = 200_000) -> int:
    """Delete the per-recipient rows of runs finished more than DELIVERY_RETENTION_DAYS ago, `batch` rows a
    transaction (short locks: sends go on), at most `budget` rows a call (the beat comes back for the rest).
    Each run first keeps its counts (kept_counts), so its summary reads the same afterwards. Deleted rows."""
    days = current_app.config["DELIVERY_RETENTION_DAYS"]
    if days <= 0:
        return 0
    before = (now or utcnow()) - timedelta(days=days)
    old = db.session.scalars(select(Digest).where(Digest.finished_at.is_not(None), Digest.finished_at < before)
                             .where(exists().where(Delivery.digest_id == Digest.id)).order_by(Digest.id)).all()
    deleted = 0
    for digest in old:
        if digest.kept_counts is None:
            tally = counts([digest.id])[digest.id]
            digest.kept_counts = {**tally, "bounced": _live_bounces([digest.id]).get(digest.id, 0)}
            db.session.commit()
        while deleted < budget:
            chunk = select(Delivery.id).where(Delivery.digest_id == digest.id).order_by(Delivery.id).limit(batch)
            gone = cast(CursorResult, db.session.execute(
                delete(Delivery).where(Delivery.id.in_(chunk.scalar_subquery()))
                .execution_options(synchronize_session=False))).rowcount
            db.session.commit()
            deleted += gone
            if gone < batch:
                break
        if deleted >= budget:
            break
    return deleted
