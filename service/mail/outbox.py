"""Transactional email (confirm, sign-in, welcome; studio invitations and sign-in links): a database row first, then a task that claims and sends it.

The row is written in the same transaction as the change that needs the mail, and the task is queued only
after that commit. If the broker is down the row waits, and the `flush_outbox` beat task queues it again.

A sign-in request is a row too (kind `signin_request`, the typed address in `data`, no subscriber): the
request path writes the same row whatever the address, and the worker decides what it becomes (a sign-in
link, a confirmation, or nothing) with `claim_request`, then `become` or `forget`, so the address leaves it.
"""
from __future__ import annotations

import logging
import smtplib
from datetime import timedelta
from typing import cast

from flask import current_app
from sqlalchemy import CursorResult, delete, or_, select, update

from .. import tokens
from ..extensions import db
from ..models import OutboxEmail, Staff, Subscriber, utcnow
from ..publishing import publication
from . import links, mailer, transports

log = logging.getLogger(__name__)
SEND_TASK = "service.tasks.send_outbox_email"
SIGNIN_REQUEST = "signin_request"
TASKS = {SIGNIN_REQUEST: "service.tasks.answer_signin_request"}  # kinds another task handles before any send
LEASE = timedelta(minutes=5)
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
    email = _claim(outbox_id)
    if email is None:
        return False
    try:
        message = _message(email)
        if message is None:
            return _give_up(email, "the recipient is gone")
        mailer.send_message(message)
    except transports.DeliveryError as error:
        return _give_up(email, str(error)) if error.permanent else _retry_later(email, str(error))
    except (smtplib.SMTPException, OSError) as error:
        return _retry_later(email, f"{type(error).__name__}: {error}")
    except ValueError as error:  # an address the header encoder refuses: sending again cannot help
        return _give_up(email, str(error))
    email.sent_at, email.lease_until, email.error = utcnow(), None, None
    db.session.commit()
    return True


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
    due = select(OutboxEmail.id, OutboxEmail.kind).where(
        OutboxEmail.sent_at.is_(None),
        OutboxEmail.attempts < MAX_ATTEMPTS,
        OutboxEmail.created_at > now - STALE_AFTER,
        or_(OutboxEmail.lease_until.is_(None), OutboxEmail.lease_until < now),
        or_(OutboxEmail.error.is_not(None), OutboxEmail.created_at < now - FIRST_TRY_GRACE),
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


def _claim(outbox_id: int, kind_is=None) -> OutboxEmail | None:
    """An atomic lease: of two workers given the same row, one sends; a dead worker's lease runs out.
    Only rows of `kind_is` (default: emails, never a request still to answer)."""
    now = utcnow()
    claimed = cast(CursorResult, db.session.execute(
        update(OutboxEmail)
        .where(OutboxEmail.id == outbox_id, OutboxEmail.sent_at.is_(None), OutboxEmail.attempts < MAX_ATTEMPTS,
               OutboxEmail.kind != SIGNIN_REQUEST if kind_is is None else kind_is,
               or_(OutboxEmail.lease_until.is_(None), OutboxEmail.lease_until < now))
        .values(lease_until=now + LEASE, attempts=OutboxEmail.attempts + 1)
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
