"""Transactional email (confirm, sign-in, welcome; studio invitations and sign-in links): a database row first, then a task that claims and sends it.

The row is written in the same transaction as the change that needs the mail, and the task is queued only
after that commit. If the broker is down the row waits, and the `flush_outbox` beat task queues it again.

A sign-in request is a row too (kind `signin_request`, the typed address in `data`, no subscriber): the
request path writes the same row whatever the address, and the worker decides what it becomes (a sign-in
link, a confirmation, or nothing) with `claim_request`, then `become` or `forget`, so the address leaves it.

A burst (a shared post's signups) is sent by `drain`: each task claims every due row in batches of
DRAIN_BATCH (one UPDATE each) and sends them on one transport, so the rows queued after it find their mail
gone already. Each row is marked sent in the database just before the mail server takes the message (the
final "." of its DATA), so a worker killed mid-drain leaves rows either sent (the server took them) or
claimed and unsent, sent again when their lease runs out: never a mail twice. On PostgreSQL the mark's
COMMIT is written just before the "." and its answer read after it (commits.send); on SQLite the hand-over
is appended to a file first and the row marked after the server's answer (handovers). Either way no database
round trip lies between the record and the ".": only a kill in the few microseconds between the two writes
loses the mail it was handing over.
"""
from __future__ import annotations

import logging
import smtplib
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from flask import current_app
from sqlalchemy import CursorResult, and_, delete, or_, select, update
from sqlalchemy.exc import OperationalError

from .. import tokens
from ..extensions import db
from ..models import OutboxEmail, Staff, Subscriber, utcnow
from ..publishing import publication
from . import commits, handovers, links, mailer, transports

log = logging.getLogger(__name__)
SEND_TASK = "service.tasks.send_outbox_email"
SIGNIN_REQUEST = "signin_request"
TASKS = {SIGNIN_REQUEST: "service.tasks.answer_signin_request"}  # kinds another task handles before any send
LEASE = timedelta(minutes=5)  # the default of KEEPREADING_OUTBOX_LEASE
DRAIN_BATCH = 100  # rows one UPDATE claims; a drain claims batch after batch until none is due
DRAIN_SECONDS = 60.0  # a drain stops claiming after this long; the tasks queued for later rows go on
FIRST_TRY_GRACE = timedelta(minutes=2)  # a new row's own task may still be queued
STALE_AFTER = timedelta(days=1)  # a day-old confirmation email would only confuse
MAX_ATTEMPTS = 6
SUBJECTS = {
    "confirm": "Confirm your subscription to {publication}",
    "signin": "Your sign-in link for {publication}",
    "welcome": "Welcome to {publication}",
    "studio_invite": "Your studio account at {publication}",
    "studio_signin": "Your sign-in link for the studio of {publication}",
}
ACTION_ENDPOINTS = {"confirm": "account.confirm", "signin": "account.signin_link",
                    "studio_invite": "studio.set_password", "studio_signin": "studio.signin_link"}
STAFF_KINDS = {"studio_invite", "studio_signin"}  # to a staff member (data["staff_id"]), not a subscriber


def add(kind: str, subscriber: Subscriber, **data) -> OutboxEmail:
    """Stage an email in the caller's transaction; dispatch it after the commit."""
    if kind not in SUBJECTS or kind in STAFF_KINDS:
        raise ValueError(f"unknown email kind {kind!r}")
    email = OutboxEmail(kind=kind, subscriber_id=subscriber.id, data=data)
    db.session.add(email)
    return email


def add_for_staff(kind: str, staff: Staff) -> OutboxEmail:
    """Stage a studio email (invitation, sign-in link) to a staff member, like `add`."""
    if kind not in STAFF_KINDS:
        raise ValueError(f"unknown studio email kind {kind!r}")
    email = OutboxEmail(kind=kind, data={"staff_id": staff.id})
    db.session.add(email)
    return email


def add_signin_request(email: str, next_url: str) -> OutboxEmail:
    """Stage a sign-in request for the worker to answer: the same row, whoever the address belongs to."""
    request = OutboxEmail(kind=SIGNIN_REQUEST, subscriber_id=None, data={"email": email, "next": next_url})
    db.session.add(request)
    return request


def commit_and_dispatch(emails: list[OutboxEmail]) -> None:
    """Commit the caller's transaction, then queue a send task for each staged email."""
    db.session.flush()
    staged = [(email.id, email.kind) for email in emails]  # read before the commit expires them
    db.session.commit()
    for outbox_id, kind in staged:
        enqueue(outbox_id, kind)


def enqueue(outbox_id: int, kind: str | None = None) -> None:
    """Queue the row's task; a broker failure is logged and noted on the row, never raised."""
    celery = current_app.extensions["celery"]
    try:
        # A pooled connection, no publish retries, and connection attempts bounded by the broker's
        # transport options: during an outage a signup must not wait on the broker (the row is safe).
        celery.send_task(TASKS.get(kind or "", SEND_TASK), args=[outbox_id], retry=False)
    except Exception as error:  # kombu raises many kinds of errors for an unreachable broker
        log.warning("could not queue outbox email %s (flush_outbox will): %s", outbox_id, error)
        _note(outbox_id, f"not queued: {type(error).__name__}")


def send(outbox_id: int) -> bool:
    """Claim the row, send it, mark it sent. False when another worker has it or it is done."""
    claim = Claim.starting_now([outbox_id])
    email = _claim(outbox_id, lease_until=claim.lease_until)
    if email is None or _handed_over_before([email], claim):
        return False
    transport = transports.open_transport()
    try:
        with _rows_kept():
            return _deliver(email, transport, claim)
    except (LeaseRunningOut, OSError, smtplib.SMTPException) as error:
        return _retry_later(email, f"{type(error).__name__}: {error}")
    finally:
        transport.close()
        _tidy_journal()


class LeaseRunningOut(Exception):
    """The batch's claim is about to expire: stop before another worker may take its rows."""


def drain(outbox_id: int | None = None) -> int:
    """Send this row (when it is still due) and every other email due now, batch after batch on one
    transport; the number sent. A row another worker holds, or waiting out a back-off, is left alone."""
    sent, started = 0, time.monotonic()
    transport = None
    try:
        with _rows_kept():
            while time.monotonic() - started < DRAIN_SECONDS:
                claim = _claim_batch(outbox_id)
                outbox_id = None
                if not claim.ids:
                    break
                transport = transport or transports.open_transport()
                batch_sent, stopped = _send_batch(claim, transport)
                sent += batch_sent
                if stopped:
                    break
    finally:
        if transport is not None:
            transport.close()
        _tidy_journal()
    return sent


@contextmanager
def _rows_kept():
    """Commits keep the rows and readers a batch loaded: each mail's mark is its own commit, and expiring
    the whole batch at each one made a drain quadratic (measured: 76 mails/s at 1,000, most of it there).
    One connection for the loads and the marks: a second one waiting on a table lock that waits on the
    first (a TRUNCATE, an ALTER TABLE) would never be seen as a deadlock."""
    session = db.session()
    before, session.expire_on_commit = session.expire_on_commit, False
    try:
        yield
    finally:
        session.expire_on_commit = before
        session.expire_all()  # the caller reads the rows as they are now


def _lease() -> timedelta:
    return timedelta(seconds=current_app.config.get("OUTBOX_LEASE") or LEASE.total_seconds())


@dataclass
class Claim:
    """Rows leased by one UPDATE: their lease's end is the claim's mark (a row whose lease_until is another
    value is no longer this claim's), and the monotonic time by which its mails must be handed over."""

    ids: list[int]
    lease_until: datetime
    deadline: float

    @classmethod
    def starting_now(cls, ids: list[int] | None = None) -> "Claim":
        lease = _lease()
        return cls(ids or [], utcnow() + lease, time.monotonic() + lease.total_seconds() * 0.8)


def _claim_batch(first_id: int | None) -> Claim:
    """Lease up to DRAIN_BATCH due emails (and `first_id` if it is due) in one UPDATE; only this caller gets
    the ids it returns (PostgreSQL skips rows another drain is locking; SQLite has one writer at a time)."""
    claim, now = Claim.starting_now(), utcnow()
    claimable = and_(OutboxEmail.sent_at.is_(None), OutboxEmail.attempts < MAX_ATTEMPTS,
                     OutboxEmail.kind != SIGNIN_REQUEST,
                     or_(OutboxEmail.lease_until.is_(None), OutboxEmail.lease_until < now))
    fresh = OutboxEmail.created_at > now - STALE_AFTER  # flush leaves older ones alone too
    wanted = fresh if first_id is None else or_(OutboxEmail.id == first_id, fresh)
    # A CTE, evaluated once: PostgreSQL may run a LIMIT ... SKIP LOCKED subquery again for each row it
    # updates, and so claim more rows than the limit.
    picked = (select(OutboxEmail.id).where(claimable, wanted).order_by(OutboxEmail.id).limit(DRAIN_BATCH)
              .with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED"))
    claim.ids = sorted(db.session.execute(
        update(OutboxEmail).where(OutboxEmail.id.in_(select(picked.c.id)), claimable)
        .values(lease_until=claim.lease_until, attempts=OutboxEmail.attempts + 1)
        .returning(OutboxEmail.id).execution_options(synchronize_session=False)
    ).scalars().all())
    db.session.commit()
    return claim


def _send_batch(claim: Claim, transport) -> tuple[int, bool]:
    """Send the claimed rows on `transport`: (how many went out, whether the batch stopped early)."""
    emails = db.session.scalars(select(OutboxEmail).where(OutboxEmail.id.in_(claim.ids)).order_by(OutboxEmail.id)
                                .execution_options(populate_existing=True)).all()  # the claim's attempts, not a kept row's
    subscriber_ids = [email.subscriber_id for email in emails if email.subscriber_id]
    db.session.scalars(select(Subscriber).where(Subscriber.id.in_(subscriber_ids))).all()  # one query, not one per row
    done = _handed_over_before(emails, claim)
    emails = [email for email in emails if email.id not in done]
    sent = 0
    for index, email in enumerate(emails):
        try:
            outcome = _deliver(email, transport, claim)
        except LeaseRunningOut:  # a slow server: the rest are claimed again, with a fresh lease
            _release(claim, [row.id for row in emails[index:]])
            return sent, False
        except (OSError, smtplib.SMTPException) as trouble:
            # the server is away: this row and the rest wait a while; not the readers' doing, so those
            # never tried do not count it as an attempt
            problem = f"{type(trouble).__name__}: {trouble}"
            _retry_later(email, problem)
            _release(claim, [row.id for row in emails[index + 1:]], problem)
            return sent, True
        sent += outcome
    return sent, False


def _deliver(email: OutboxEmail, transport, claim: Claim) -> bool:
    """One claimed row: composed now, its hand-over recorded just before the server takes it (the row marked
    sent on PostgreSQL; on SQLite appended to the process's hand-over file, the row marked after the answer)."""
    outbox_id = email.id
    try:
        message = _message(email)
    except ValueError as error:  # an address the header encoder refuses: sending again cannot help
        return _give_up(email, str(error))
    if message is None:
        return _give_up(email, "the recipient is gone")
    journal = None if commits.holds_commits() else handovers.of_process(current_app.instance_path)
    mark: commits.HeldCommit | None = None
    handed_over = False

    def commit() -> Callable[[], None] | None:
        nonlocal mark, handed_over
        if time.monotonic() >= claim.deadline:
            raise LeaseRunningOut("the claim's lease is running out")
        if journal is not None:
            journal.record(outbox_id)
            handed_over = True
            return None
        mark = _mark_sent(outbox_id, claim)
        handed_over = True
        return mark.release  # the COMMIT goes once the "." is written

    try:
        try:
            transport.deliver(message.sender, message.recipient, message.data, commit)
        finally:
            if mark is not None:
                _settle(mark, outbox_id)
    except transports.DeliveryError as error:
        if journal is not None and handed_over:
            journal.retract(outbox_id)
        if mark is not None:
            db.session.execute(update(OutboxEmail).where(OutboxEmail.id == outbox_id)
                               .values(sent_at=None, lease_until=claim.lease_until)
                               .execution_options(synchronize_session=False))
            db.session.commit()
        email = db.session.get(OutboxEmail, outbox_id) or email
        return _give_up(email, str(error)) if error.permanent else _retry_later(email, str(error))
    except (OSError, smtplib.SMTPException):
        if not handed_over:
            raise
        log.warning("outbox email %s: connection lost after end of data; taken as sent", outbox_id)
    if journal is not None:
        _mark_handed_over(outbox_id, claim, journal)
    return True


def _mark_sent(outbox_id: int, claim: Claim) -> commits.HeldCommit:
    """Sent, if the row is still this claim's: its COMMIT is written, and its answer read after the "."
    (PostgreSQL; see commits.send). LeaseRunningOut when it is not (the mail is then abandoned)."""
    marked = _mark(OutboxEmail.id == outbox_id, OutboxEmail.lease_until == claim.lease_until).rowcount
    if marked != 1:
        db.session.rollback()
        raise LeaseRunningOut(f"outbox email {outbox_id}: the claim was lost")
    return commits.send()


def _mark(*where) -> CursorResult:
    """Mark sent the unsent rows `where` holds (uncommitted): the one statement of every way a row is marked."""
    return cast(CursorResult, db.session.execute(
        update(OutboxEmail).where(OutboxEmail.sent_at.is_(None), *where)
        .values(sent_at=utcnow(), lease_until=None, error=None).execution_options(synchronize_session=False)))


def _mark_handed_over(outbox_id: int, claim: Claim, journal: handovers.Handovers) -> None:
    """A hand-over the journal holds, now marked in the database (SQLite). While the database is busy or away
    the record stands in for the mark: the row is marked when its claim runs out (`_handed_over_before`)."""
    try:
        _mark(OutboxEmail.id == outbox_id, OutboxEmail.lease_until == claim.lease_until)
        db.session.commit()
    except OperationalError as trouble:
        db.session.rollback()
        log.warning("outbox email %s: handed over, marked sent later (%s)", outbox_id, trouble)
        return
    journal.marked(outbox_id)  # marked now, or by whoever took the row over after its claim ran out


def _handed_over_before(emails: Sequence[OutboxEmail], claim: Claim) -> set[int]:
    """Rows claimed again whose earlier claim handed them over (a worker killed between the "." and the mark,
    SQLite): marked sent now, not sent again. Their ids."""
    again = [email.id for email in emails if email.attempts > 1]
    if not again or commits.holds_commits():
        return set()
    done = handovers.recorded(current_app.instance_path, again)
    if done:
        _mark(OutboxEmail.id.in_(done), OutboxEmail.lease_until == claim.lease_until)
        db.session.commit()
        log.warning("outbox emails %s: handed over by a worker that stopped before marking them; marked sent",
                    sorted(done))
    return done


def _tidy_journal() -> None:
    if not commits.holds_commits():
        handovers.of_process(current_app.instance_path).tidy()


def _settle_recorded(ids: set[int]) -> set[int]:
    """Rows a gone process handed over: marked sent unless a live claim holds them; the ids still waiting."""
    _mark(OutboxEmail.id.in_(ids), or_(OutboxEmail.lease_until.is_(None), OutboxEmail.lease_until < utcnow()))
    db.session.commit()
    return set(db.session.scalars(select(OutboxEmail.id).where(OutboxEmail.id.in_(ids), OutboxEmail.sent_at.is_(None))))


def _settle(mark: commits.HeldCommit, outbox_id: int) -> None:
    """Read the answer to the mark's COMMIT, once the server has the mail."""
    try:
        mark.settle()
    except commits.CommitUnconfirmed as trouble:
        # Handed over, and perhaps not marked: if the COMMIT did not take, the row stays claimed and is sent
        # again when the claim runs out. Like a connection lost after the ".", the one case left where a
        # reader may get a mail twice.
        log.warning("outbox email %s: handed over, its mark unconfirmed (%s); it may be sent again", outbox_id, trouble)


def _release(claim: Claim, ids: list[int], problem: str | None = None) -> None:
    """This claim's rows never tried, the claim uncounted: due again at once, or after a short wait
    (flush_outbox queues them) when there was a `problem`."""
    if ids:
        values: dict[str, object] = {"lease_until": None, "attempts": OutboxEmail.attempts - 1}
        if problem:
            values.update(lease_until=utcnow() + timedelta(minutes=1), error=problem[:500])
        db.session.execute(update(OutboxEmail).where(OutboxEmail.id.in_(ids), OutboxEmail.sent_at.is_(None),
                                                     OutboxEmail.lease_until == claim.lease_until)
                           .values(values).execution_options(synchronize_session=False))
        db.session.commit()


def claim_request(outbox_id: int) -> OutboxEmail | None:
    """Lease a sign-in request to answer; None when it is answered already or another worker has it."""
    return _claim(outbox_id, OutboxEmail.kind == SIGNIN_REQUEST)


def become(request: OutboxEmail, kind: str, subscriber: Subscriber, **data) -> None:
    """The answer to a request is this email: the row turns into it, and the typed address leaves it."""
    if kind not in SUBJECTS:
        raise ValueError(f"unknown email kind {kind!r}")
    request.kind, request.subscriber_id, request.data = kind, subscriber.id, data
    request.lease_until, request.attempts, request.error = None, 0, None


def forget(request: OutboxEmail) -> None:
    """A request that needs no email: the row, and the address it held, go."""
    db.session.delete(request)


def flush() -> int:
    """Queue every unsent row that is due again (never queued, failed for a while, or lease expired);
    drop sign-in requests that were never answered in time, with the addresses they hold."""
    now = utcnow()
    db.session.execute(delete(OutboxEmail).where(
        OutboxEmail.kind == SIGNIN_REQUEST,
        or_(OutboxEmail.created_at <= now - STALE_AFTER, OutboxEmail.attempts >= MAX_ATTEMPTS),
    ).execution_options(synchronize_session=False))
    db.session.commit()
    if not commits.holds_commits():  # the hand-overs of workers that died before marking them
        handovers.sweep(current_app.instance_path, _settle_recorded, STALE_AFTER.total_seconds())
    due = select(OutboxEmail.id, OutboxEmail.kind).where(
        OutboxEmail.sent_at.is_(None),
        OutboxEmail.attempts < MAX_ATTEMPTS,
        OutboxEmail.created_at > now - STALE_AFTER,
        or_(OutboxEmail.lease_until.is_(None), OutboxEmail.lease_until < now),
        # a row no worker claimed yet may have its own task still queued; a claimed one whose lease ran
        # out (its worker died) is due at once
        or_(OutboxEmail.error.is_not(None), OutboxEmail.attempts > 0, OutboxEmail.created_at < now - FIRST_TRY_GRACE),
    )
    rows = list(db.session.execute(due.order_by(OutboxEmail.id).limit(1000)))
    db.session.rollback()
    for outbox_id, kind in rows:
        enqueue(outbox_id, kind)
    return len(rows)


def _message(email: OutboxEmail):
    if email.kind in STAFF_KINDS:
        staff = db.session.get(Staff, (email.data or {}).get("staff_id") or 0)
        return compose_for_staff(email.kind, staff) if staff else None
    subscriber = db.session.get(Subscriber, email.subscriber_id) if email.subscriber_id else None
    return compose(email, subscriber) if subscriber else None


def compose(email: OutboxEmail, subscriber: Subscriber) -> mailer.Mail:
    """Render the email now, so its link's lifetime starts when it is sent."""
    context = {
        "publication": publication.name(),
        "reader_name": mailer.one_line(subscriber.name or ""),  # a greeting on one line, like the To: header
        "unsubscribe_url": links.unsubscribe_url(subscriber),
        "archive_url": links.external("reader.archive"),
        "account_url": links.external("account.account"),
        "action_url": _action_url(email, subscriber),
    }
    text, html = mailer.render_pair(email.kind, **context)
    subject = SUBJECTS[email.kind].format(publication=context["publication"])
    return mailer.build(subscriber.email, subscriber.name or "", subject, text, html, extra=links.list_headers(subscriber))


def compose_for_staff(kind: str, staff: Staff):
    """A studio link to one staff member: single use (the token carries the account's link generation)."""
    context = {
        "publication": publication.name(),
        "staff_name": staff.name,
        "action_url": staff_link(kind, staff),
        "valid_for": _duration(current_app.config[tokens.PURPOSES[kind]]),
    }
    text, html = mailer.render_pair(kind, **context)
    subject = SUBJECTS[kind].format(publication=context["publication"])
    return mailer.build(staff.email, staff.name, subject, text, html)


def staff_link(kind: str, staff: Staff) -> str:
    """The invitation or sign-in link for this account, as mailed (the CLI prints it in development)."""
    return links.external(ACTION_ENDPOINTS[kind], token=tokens.make(kind, staff, staff.link_generation))


def _duration(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = round(seconds / size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


def _action_url(email: OutboxEmail, subscriber: Subscriber) -> str | None:
    """The confirm or sign-in link (a token of the email's own kind); the welcome email has none."""
    endpoint = ACTION_ENDPOINTS.get(email.kind)
    if endpoint is None:
        return None
    next_url = (email.data or {}).get("next") or "/"
    token = tokens.make(email.kind, subscriber, next_url, subscriber.link_epoch)  # single-use: see subscriptions
    return links.external(endpoint, token=token)


def _claim(outbox_id: int, kind_is=None, lease_until: datetime | None = None) -> OutboxEmail | None:
    """An atomic lease: of two workers given the same row, one sends; a dead worker's lease runs out.
    Only rows of `kind_is` (default: emails, never a request still to answer)."""
    now = utcnow()
    claimed = cast(CursorResult, db.session.execute(
        update(OutboxEmail)
        .where(OutboxEmail.id == outbox_id, OutboxEmail.sent_at.is_(None), OutboxEmail.attempts < MAX_ATTEMPTS,
               OutboxEmail.kind != SIGNIN_REQUEST if kind_is is None else kind_is,
               or_(OutboxEmail.lease_until.is_(None), OutboxEmail.lease_until < now))
        .values(lease_until=lease_until or now + _lease(), attempts=OutboxEmail.attempts + 1)
        .execution_options(synchronize_session=False)
    )).rowcount
    db.session.commit()
    return db.session.get(OutboxEmail, outbox_id) if claimed else None


def _retry_later(email: OutboxEmail, problem: str) -> bool:
    """Keep the lease as a back-off (1, 2, 4 ... minutes); flush_outbox queues it when it runs out."""
    email.lease_until = utcnow() + timedelta(minutes=2 ** (email.attempts - 1))
    email.error = problem[:500]
    db.session.commit()
    log.warning("outbox email %s not sent, will retry: %s", email.id, problem)
    return False


def _give_up(email: OutboxEmail, problem: str) -> bool:
    email.attempts, email.lease_until, email.error = MAX_ATTEMPTS, None, problem[:500]
    db.session.commit()
    log.warning("outbox email %s given up: %s", email.id, problem)
    return False


def _note(outbox_id: int, problem: str) -> None:
    db.session.execute(update(OutboxEmail).where(OutboxEmail.id == outbox_id).values(error=problem)
                       .execution_options(synchronize_session=False))
    db.session.commit()
