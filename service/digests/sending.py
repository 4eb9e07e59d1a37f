"""One batch of digest deliveries: claim, re-check the readers, render once per post set, send on one
SMTP connection, record the outcomes in bulk, and finish the run when this batch settled its last deliveries.

Exactly once: rows are claimed (pending -> sending, with a lease) in one UPDATE before any SMTP, so a
duplicate or redelivered task finds nothing to send; each message is written to the send journal just
before the mail server takes it and the batch stops sending before its lease runs out, so the
dispatcher can settle the claims of a worker that died (see send_journal, digests.recover).
"""
from __future__ import annotations

import contextlib
import logging
import random
import smtplib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import cast

from flask import current_app
from sqlalchemy import case, select, update
from sqlalchemy.exc import OperationalError

from ..extensions import db
from ..mail import mailer, transports
from ..models import Delivery, Digest, Post, Subscriber, utcnow
from ..publishing import publication
from ..readers import subscriptions
from . import journal as send_journal
from . import runs
from .message import DigestMail, PostItem, Reader

log = logging.getLogger(__name__)
_mails: dict[tuple, DigestMail] = {}  # (run, post set) -> rendered digest, per worker process


class LeaseRunningOut(Exception):
    """The batch's claim is about to expire: stop before the dispatcher gives its rows to another worker."""


@dataclass
class Claimed:
    delivery_id: int
    subscriber_id: int
    since: datetime | None
    token: int  # the row's attempts after this claim: fences renewals and outcomes


@dataclass
class Outcomes:
    sent: list[int] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)  # 4xx: again later
    failed: dict[int, str] = field(default_factory=dict)  # 5xx
    bounced: dict[int, str] = field(default_factory=dict)  # subscriber id -> reason
    unsent: list[int] = field(default_factory=list)  # never tried: the server was away or the lease ran out
    trouble: str = ""


def send_batch(digest_id: int, first_id: int, last_id: int, attempt: int = 0) -> float | None:
    """Send the pending deliveries of this run in [first_id, last_id]; seconds until a retry is due, or None."""
    digest = db.session.get(Digest, digest_id)
    if digest is None:
        return None
    lease = current_app.config["DELIVERY_LEASE"]
    journal = send_journal.for_run(digest)
    started = time.monotonic()
    claimed = claim(digest_id, first_id, last_id, utcnow() + timedelta(seconds=lease))
    if not claimed:  # a duplicate, or redelivered after its worker died between recording and finishing
        _finish_if_settled(digest_id, journal)
        return None
    heartbeat = Heartbeat(db.engine, digest_id, {row.delivery_id: row.token for row in claimed}, lease, started)
    heartbeat.start()
    try:
        outcomes = _send(digest, claimed, heartbeat)
    finally:
        heartbeat.stop()
    delay = backoff(attempt) if outcomes.refused or outcomes.unsent else None
    record(outcomes, delay, heartbeat.tokens)
    if not _finish_if_settled(digest_id, journal):
        journal.forget(outcomes.sent)
    return delay


def _finish_if_settled(digest_id: int, journal: send_journal.RedisJournal | send_journal.FileJournal) -> bool:
    """The batch that settles a run's last deliveries finishes it (its journal is then no longer needed)."""
    if not runs.finish_if_settled(digest_id):
        return False
    journal.drop()
    return True


def claim(digest_id: int, first_id: int, last_id: int, lease_until: datetime) -> list[Claimed]:
    """pending -> sending in one UPDATE; only this task gets the rows it returns. A row's attempts after the
    claim is the claim's fencing token: every later claim of the row counts one more (see Heartbeat)."""
    claimed = db.session.execute(
        update(Delivery)
        .where(Delivery.digest_id == digest_id, Delivery.id.between(first_id, last_id), Delivery.status == "pending")
        .values(status="sending", lease_until=lease_until, attempts=Delivery.attempts + 1)
        .returning(Delivery.id, Delivery.subscriber_id, Delivery.since, Delivery.attempts)
    ).all()
    db.session.commit()
    return sorted((Claimed(*row) for row in claimed), key=lambda row: row.delivery_id)


class Heartbeat:
    """Renews the batch's claim every third of the lease while it sends, in a thread of its own (so a slow
    SMTP answer does not hold it up), on a connection of its own.

    Fencing: a renewal touches only rows still 'sending' with this claim's token (attempts) and a lease
    not yet run out, so a claim the dispatcher took back (and another worker took) is never renewed.
    The batch may hand a message over only before `deadline`: a fifth of the lease (at most 30 s) before
    the lease its last successful renewal wrote runs out. A batch that cannot renew (the database away)
    or lost rows stops sending before its claim expires; the dispatcher then settles it."""

    def __init__(self, engine, digest_id: int, tokens: dict[int, int], lease: float, started: float):
        self.engine = engine
        self.digest_id = digest_id
        self.tokens = tokens  # delivery id -> the claim's attempts
        self.lease = lease
        self.margin = min(lease / 5, 30)
        self.deadline = started + lease - self.margin
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"digest-{digest_id}-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def check(self) -> None:
        """Raise unless the batch still holds its claim with time to spare: called right before each hand-over."""
        if self.lost:
            raise LeaseRunningOut("the claim was taken back")
        if time.monotonic() >= self.deadline:
            raise LeaseRunningOut("the claim's lease is running out and could not be renewed")

    def _run(self) -> None:
        interval = self.lease / 3
        while not self._stop.wait(interval):
            started = time.monotonic()
            if started >= self.deadline:
                return  # too late: the claim may be taken back any moment, the batch stops at its next check
            try:
                held = self.renew(utcnow())
            except Exception as trouble:  # the database away: keep trying until the deadline
                log.warning("digest %s: heartbeat failed (%s)", self.digest_id, trouble)
                interval = min(1.0, self.lease / 10)
                continue
            interval = self.lease / 3
            if held < len(self.tokens):
                self.lost = True
                log.warning("digest %s: %d of %d claimed deliveries were taken back; stopping", self.digest_id,
                            len(self.tokens) - held, len(self.tokens))
                return
            self.deadline = started + self.lease - self.margin

    def renew(self, now: datetime) -> int:
        """One UPDATE per distinct token (a batch holds a few); the number of rows still held."""
        held = 0
        with self.engine.begin() as connection:
            for token, ids in _by_token(self.tokens, list(self.tokens)).items():
                result = connection.execute(
                    update(Delivery)
                    .where(Delivery.digest_id == self.digest_id, Delivery.id.in_(ids), Delivery.status == "sending",
                           Delivery.attempts == token, Delivery.lease_until > now)
                    .values(lease_until=now + timedelta(seconds=self.lease)))
                held += result.rowcount
        return held


def _by_token(tokens: dict[int, int], ids: list[int]) -> dict[int, list[int]]:
    grouped: dict[int, list[int]] = {}
    for delivery_id in ids:
        grouped.setdefault(tokens[delivery_id], []).append(delivery_id)
    return grouped


def _send(digest: Digest, claimed: list[Claimed], heartbeat: Heartbeat) -> Outcomes:
    outcomes = Outcomes()
    readers = _readers([row.subscriber_id for row in claimed])
    posts = _posts(digest, [row.since for row in claimed])
    work = []
    for row in claimed:
        reader, status = readers.get(row.subscriber_id, (None, "deleted"))
        post_set = [post for post in posts if row.since is None or post.published_at > row.since]
        if status != "confirmed":
            outcomes.skipped[row.delivery_id] = f"subscriber {status}"
        elif not post_set:
            outcomes.skipped[row.delivery_id] = "no new posts"
        else:
            work.append((row, reader, post_set))
    if work:
        _send_on_connections(digest, work, heartbeat, outcomes)
    return outcomes


def _send_on_connections(digest: Digest, work: list, heartbeat: Heartbeat, outcomes: Outcomes) -> None:
    """SMTP_CONNECTIONS > 1: the work dealt out to that many threads, each sending on its own connection (they
    wait on a distant server's answers, not on the CPU), their outcomes gathered into `outcomes`."""
    count = min(current_app.config["SMTP_CONNECTIONS"], len(work))
    if count <= 1:
        _send_all(digest, work, heartbeat, outcomes)
        return
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    for _, _, post_set in work:  # rendered here, in this session: the threads only read the digest's loaded columns
        _mail(digest, post_set)
    shares = [Outcomes() for _ in range(count)]

    def run(index: int) -> None:
        with app.app_context():
            _send_all(digest, work[index::count], heartbeat, shares[index])

    with ThreadPoolExecutor(count, thread_name_prefix="smtp") as pool:
        list(pool.map(run, range(count)))
    for share in shares:
        outcomes.sent += share.sent
        outcomes.unsent += share.unsent
        for mine, theirs in ((outcomes.skipped, share.skipped), (outcomes.refused, share.refused),
                             (outcomes.failed, share.failed), (outcomes.bounced, share.bounced)):
            mine.update(theirs)
        outcomes.trouble = outcomes.trouble or share.trouble


def _readers(subscriber_ids: list[int]) -> dict[int, tuple[Reader, str]]:
    """Each reader's address, name and status now: an unsubscribe after the run was created counts."""
    rows = db.session.execute(select(Subscriber.id, Subscriber.email, Subscriber.name, Subscriber.status,
                                     Subscriber.token_key).where(Subscriber.id.in_(subscriber_ids)))
    return {row.id: (Reader(row.id, row.email, row.name or "", row.token_key), row.status) for row in rows}


def _posts(digest: Digest, sinces: list[datetime | None]) -> list[PostItem]:
    """Every post any of these deliveries carries, newest first (each delivery takes a suffix of them)."""
    query = select(Post.id, Post.slug, Post.title, Post.published_at, Post.teaser_html).where(
        Post.published.is_(True), Post.published_at <= digest.cutoff)
    known = [since for since in sinces if since is not None]
    if known and len(known) == len(sinces):
        query = query.where(Post.published_at > min(known))
    rows = db.session.execute(query.order_by(Post.published_at.desc(), Post.id.desc()))
    # published posts always have published_at (posts.create and posts.update set it), though the column may be NULL
    return [PostItem(*cast("tuple[int, str, str, datetime, str]", row)) for row in rows]


def _send_all(digest: Digest, work: list, heartbeat: Heartbeat, outcomes: Outcomes) -> None:
    journal = send_journal.for_run(digest)
    transport = transports.open_transport()
    from_address = mailer.sender()[1]
    try:
        for index, (row, reader, post_set) in enumerate(work):
            digest_mail = _mail(digest, post_set)  # a MAIL_FROM the header encoder refuses stops the batch here
            try:
                message = digest_mail.message(row.delivery_id, reader)
            except ValueError as refusal:  # an address the header encoder refuses: no retry can help
                outcomes.failed[row.delivery_id] = str(refusal)[:500]
                continue
            try:
                _send_one(transport, journal, from_address, message, row, reader, heartbeat, outcomes)
            except (LeaseRunningOut, OSError, smtplib.SMTPException, transports.DeliveryError) as trouble:
                outcomes.trouble = f"{type(trouble).__name__}: {trouble}"[:500]
                outcomes.unsent.extend(item[0].delivery_id for item in work[index:])
                log.warning("digest %s: batch stopped (%s); %d left for later", digest.id, outcomes.trouble,
                            len(work) - index)
                return
    finally:
        transport.close()
        journal.close()


def _send_one(transport, journal, from_address: str, message: bytes, row: Claimed, reader: Reader,
              heartbeat: Heartbeat, outcomes: Outcomes) -> None:
    handed_over = False

    def commit():
        nonlocal handed_over
        heartbeat.check()
        release = journal.record(row.delivery_id)  # written, its answer read after the final "." (journal.settle)
        handed_over = True
        return release  # the transport runs it once the "." is written: the record is held back until then

    try:
        try:
            transport.deliver(from_address, reader.email, message, commit)
        finally:
            if handed_over:
                # the answer to the record: lost with a Redis that died meanwhile, which changes nothing while this
                # batch lives to write its outcomes (the next record reconnects, or stops the batch)
                with contextlib.suppress(send_journal.JournalError):
                    journal.settle()
    except transports.DeliveryError as refusal:
        if handed_over:
            journal.retract(row.delivery_id)
        if refusal.throttled:  # the server refuses whatever comes next for now: the rest wait, no attempt counted
            raise
        reason = str(refusal)[:500]
        if refusal.permanent:
            outcomes.failed[row.delivery_id] = reason
            outcomes.bounced[row.subscriber_id] = reason
        else:
            outcomes.refused[row.delivery_id] = reason
        return
    except (OSError, smtplib.SMTPException):
        if not handed_over:
            raise
        log.warning("digest delivery %s: connection lost after end of data; taken as sent", row.delivery_id)
    outcomes.sent.append(row.delivery_id)


def _mail(digest: Digest, post_set: list[PostItem]) -> DigestMail:
    key = (digest.id, digest.created_at, tuple((post.id, post.title) for post in post_set))
    if key not in _mails:
        if len(_mails) > 64:
            _mails.clear()
        stamp = int(digest.created_at.timestamp() * 1_000_000)
        _mails[key] = DigestMail(digest.id, stamp, post_set, publication.name())
    return _mails[key]


RECORD_PATIENCE = 60.0  # seconds a batch keeps trying to write its outcomes while the database is away


def record(outcomes: Outcomes, delay: float | None, tokens: dict[int, int]) -> None:
    """Every outcome of the batch in a few bulk UPDATEs and one commit, fenced by the claim's tokens (rows the
    dispatcher took back are left alone). While the database is away (a restart) it tries again for a while;
    past that the claims expire and the dispatcher settles them from the send journal."""
    give_up = time.monotonic() + RECORD_PATIENCE
    while True:
        try:
            _record(outcomes, delay, tokens)
            break
        except OperationalError:
            db.session.rollback()
            if time.monotonic() >= give_up:
                raise
            log.warning("digest outcomes not recorded yet: the database is away; trying again")
            time.sleep(1)
    for subscriber_id, reason in outcomes.bounced.items():
        subscriptions.mark_bounced(subscriber_id, reason)


def _record(outcomes: Outcomes, delay: float | None, tokens: dict[int, int]) -> None:
    now = utcnow()
    max_attempts = current_app.config["DIGEST_MAX_ATTEMPTS"]
    again = now + timedelta(seconds=delay or 0) + runs.promise()
    _update(tokens, outcomes.sent, status="sent", sent_at=now, lease_until=None, error=None)
    for reason, ids in _by_reason(outcomes.skipped):
        _update(tokens, ids, status="skipped", lease_until=None, error=reason)
    for reason, ids in _by_reason(outcomes.failed):
        _update(tokens, ids, status="failed", lease_until=None, error=reason)
    for reason, ids in _by_reason(outcomes.refused):
        exhausted = Delivery.attempts >= max_attempts
        _update(tokens, ids, status=case((exhausted, "failed"), else_="pending"), lease_until=again, error=reason)
    # the server was away or time ran out: not the readers' doing, so these claims are not attempts
    _update(tokens, outcomes.unsent, status="pending", lease_until=again, attempts=Delivery.attempts - 1,
            error=outcomes.trouble or None)
    db.session.commit()


def _by_reason(reasons: dict[int, str]) -> list[tuple[str, list[int]]]:
    grouped: dict[str, list[int]] = {}
    for delivery_id, reason in reasons.items():
        grouped.setdefault(reason, []).append(delivery_id)
    return list(grouped.items())


def _update(tokens: dict[int, int], ids: list[int], **values) -> None:
    for token, held in _by_token(tokens, ids).items():
        db.session.execute(update(Delivery).where(Delivery.id.in_(held), Delivery.status == "sending",
                                                  Delivery.attempts == token)
                           .values(**values).execution_options(synchronize_session=False))


def backoff(attempt: int) -> float:
    """Exponential, capped, with jitter so refused recipients do not come back all at once."""
    config = current_app.config
    delay = min(config["DIGEST_RETRY_MAX_DELAY"], config["DIGEST_RETRY_DELAY"] * 2 ** attempt)
    return delay * random.uniform(0.5, 1.0)
