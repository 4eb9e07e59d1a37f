"""The subscriber lifecycle: signup, double opt-in, sign-in, account, leaving. Every status change lives here."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from .. import tokens
from ..errors import Conflict, InvalidToken, TokenExpired, ValidationError
from ..extensions import db
from ..mail import outbox
from ..models import FREQUENCIES, STATUSES, Event, OutboxEmail, Subscriber, utcnow
from . import abuse, subscriber_list
from .access import READING_STATUSES
from .addresses import clean_name, normalise_email, one_line, safe_next, source_text

log = logging.getLogger(__name__)

# status -> the statuses it may move to. "deleted" is the last word: the row goes with it.
TRANSITIONS: dict[str, set[str]] = {
    "pending": {"confirmed", "unsubscribed", "deleted"},
    "confirmed": {"unsubscribed", "bounced", "deleted"},
    "unsubscribed": {"confirmed", "deleted"},
    "bounced": {"confirmed", "unsubscribed", "deleted"},
    "deleted": set(),
}
STAMPS = {"confirmed": "confirmed_at", "unsubscribed": "unsubscribed_at", "bounced": "bounced_at"}
assert set(TRANSITIONS) == set(STATUSES)


@dataclass(frozen=True)
class Signup:
    """One signup request as it arrived: the fields, and the consent data around them."""

    email: object
    name: object = ""
    next_url: object = "/"
    source: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    honeypot: bool = False


# --- signup and sign-in requests (anonymous: answers never reveal what is known) ---

def subscribe(signup: Signup) -> None:
    """Store a pending subscriber and queue one confirmation per cooldown; the caller's answer is always the same."""
    if signup.honeypot:
        log.info("honeypot filled: signup ignored")
        return
    email, name = normalise_email(signup.email), clean_name(signup.name)
    next_url = _next(signup.next_url)
    abuse.ensure_domain_allowed(email)
    if not abuse.address_allowed(email):
        return
    subscriber = _find_or_add(email, name)
    mail = _mail_for_signup(subscriber, next_url, signup)
    outbox.commit_and_dispatch(mail)


def request_signin(email: object, next_url: object = "/", honeypot: bool = False) -> None:
    """Mail a sign-in link to a reader, or a new confirmation to a pending one; nothing for anyone else."""
    if honeypot:
        return
    email, next_url = normalise_email(email), _next(next_url)
    if not abuse.address_allowed(email):
        return
    subscriber = find(email)
    mail = _mail_for_signin(subscriber, next_url) if subscriber else []
    outbox.commit_and_dispatch(mail)


def renew_link(purpose: str, token: str) -> None:
    """An expired confirm or sign-in link still proves the mailbox: send a fresh one."""
    try:
        payload = tokens.verify(purpose, token)
    except TokenExpired as expired:
        payload = expired.payload
    if not isinstance(payload, list) or len(payload) < 2 or not isinstance(payload[0], int):
        raise InvalidToken(purpose)
    subscriber = _holder(purpose, payload)
    request_signin(subscriber.email, payload[2] if len(payload) > 2 else "/")


def _mail_for_signup(subscriber: Subscriber, next_url: str, signup: Signup) -> list[OutboxEmail]:
    if not _claim_cooldown(subscriber):
        return []
    if subscriber.status in READING_STATUSES:
        return [outbox.add("signin", subscriber, next=next_url)]
    _record_consent(subscriber, signup)
    return [outbox.add("confirm", subscriber, next=next_url)]


def _mail_for_signin(subscriber: Subscriber, next_url: str) -> list[OutboxEmail]:
    if subscriber.status in READING_STATUSES:
        return [outbox.add("signin", subscriber, next=next_url)]
    if subscriber.status == "pending" and _claim_cooldown(subscriber):
        return [outbox.add("confirm", subscriber, next=next_url)]
    return []


def _find_or_add(email: str, name: str) -> Subscriber:
    subscriber = find(email)
    if subscriber is not None:
        return subscriber
    subscriber = Subscriber(email=email, name=name, status="pending", frequency="default")
    db.session.add(subscriber)
    try:
        db.session.flush()
    except IntegrityError:  # the same address, signed up at the same moment by another request
        db.session.rollback()
        return find(email)
    db.session.add(Event(kind="signup", subscriber_id=subscriber.id, data={}))
    return subscriber


def _claim_cooldown(subscriber: Subscriber) -> bool:
    """One confirmation per address per CONFIRM_COOLDOWN, atomically, whatever the number of requests."""
    now = utcnow()
    since = now - timedelta(seconds=current_app.config["CONFIRM_COOLDOWN"])
    claimed = db.session.execute(
        update(Subscriber)
        .where(Subscriber.id == subscriber.id,
               or_(Subscriber.last_confirmation_at.is_(None), Subscriber.last_confirmation_at <= since))
        .values(last_confirmation_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    return claimed == 1


def _record_consent(subscriber: Subscriber, signup: Signup) -> None:
    subscriber.consent_at = utcnow()
    subscriber.consent_ip = (signup.ip or "")[:64] or None
    user_agent = source_text(signup.user_agent)
    subscriber.consent_user_agent = user_agent[:400] if user_agent else None
    subscriber.consent_source = source_text(signup.source)


def _next(value: object) -> str:
    return safe_next(one_line(value, "next", 500))


# --- following an emailed link (the holder of the mailbox acts) ---

def confirm(token: str) -> tuple[Subscriber, str]:
    """Double opt-in, second half: the subscriber is confirmed (once) and welcomed. Replays change nothing."""
    payload = tokens.verify("confirm", token)
    subscriber = _holder("confirm", payload)
    mail = []
    if subscriber.status != "confirmed":
        _move(subscriber, "confirmed")
        mail = [outbox.add("welcome", subscriber)]
    outbox.commit_and_dispatch(mail)
    return subscriber, _next_from(payload)


def sign_in(token: str) -> tuple[Subscriber, str]:
    payload = tokens.verify("signin", token)
    return _holder("signin", payload), _next_from(payload)


def check_link(purpose: str, token: str) -> None:
    """For the GET pages: the link is good (or InvalidToken / TokenExpired), and nothing changes."""
    _holder(purpose, tokens.verify(purpose, token))


def unsubscribe(token: str) -> None:
    """RFC 8058 one-click: leave at once. A well-signed link for a row that is gone has nothing left to do."""
    payload = tokens.verify("unsubscribe", token)
    subscriber = db.session.get(Subscriber, payload[0])
    if subscriber is None or not tokens.matches(payload, subscriber.email):
        return
    if subscriber.status != "unsubscribed":
        _move(subscriber, "unsubscribed")
    db.session.commit()


def check_unsubscribe_link(token: str) -> None:
    tokens.verify("unsubscribe", token)


def _holder(purpose: str, payload: list) -> Subscriber:
    subscriber = db.session.get(Subscriber, payload[0])
    if subscriber is None or not tokens.matches(payload, subscriber.email):
        raise InvalidToken(purpose)
    return subscriber


def _next_from(payload: list) -> str:
    return safe_next(payload[2]) if len(payload) > 2 and isinstance(payload[2], str) else "/"


# --- the reader's own account ---

def update_account(reader: Subscriber, name: object, frequency: object) -> None:
    reader.name = clean_name(name)
    if frequency not in FREQUENCIES:
        raise ValidationError("Choose daily, weekly, off or the publication's default.", field="frequency")
    reader.frequency = frequency
    db.session.commit()


def account_data(reader: Subscriber) -> dict:
    """Everything stored about the reader, for "download my data"."""
    events = db.session.scalars(select(Event).where(Event.subscriber_id == reader.id).order_by(Event.id))
    return {
        **as_dict(reader),
        "consent": {"at": _iso(reader.consent_at), "ip": reader.consent_ip,
                    "user_agent": reader.consent_user_agent, "source": reader.consent_source},
        "events": [{"kind": event.kind, "at": _iso(event.created_at), **event.data} for event in events],
    }


def erase(reader: Subscriber) -> None:
    """Delete my data: the row, its consent data and its queued mail go; an anonymous event stays."""
    _move(reader, "deleted")
    db.session.flush()
    db.session.delete(reader)  # the database cascades: outbox and deliveries go, events lose the link
    db.session.commit()


# --- the publisher's side ---

def find(email: str) -> Subscriber | None:
    return db.session.scalar(select(Subscriber).where(Subscriber.email == email))


def mark_bounced(subscriber_id: int, reason: str = "") -> None:
    """A permanent SMTP refusal: no more mail to this address (digests skip it)."""
    subscriber = db.session.get(Subscriber, subscriber_id)
    if subscriber is not None and "bounced" in TRANSITIONS[subscriber.status]:
        _move(subscriber, "bounced", reason=reason[:200])
        db.session.commit()


def add_imported(email: str, name: str, status: str, subscribed_at: datetime) -> bool:
    """A row from the publisher's CSV; an address already known is left as it is (re-importing is idempotent)."""
    if find(email) is not None:
        return False
    subscriber = Subscriber(email=email, name=name, status=status, frequency="default", created_at=subscribed_at,
                            consent_at=subscribed_at, consent_source="import")
    if status in STAMPS:
        setattr(subscriber, STAMPS[status], subscribed_at)
    if status == "confirmed":
        subscriber.digest_watermark = utcnow()  # their first digest starts now, not with the whole archive
    db.session.add(subscriber)
    db.session.flush()
    db.session.add(Event(kind="import", subscriber_id=subscriber.id, data={"status": status}))
    return True


def as_dict(subscriber: Subscriber) -> dict:
    return {
        "id": subscriber.id,
        "email": subscriber.email,
        "name": subscriber.name,
        "status": subscriber.status,
        "frequency": subscriber.frequency,
        "created_at": _iso(subscriber.created_at),
        "confirmed_at": _iso(subscriber.confirmed_at),
        "unsubscribed_at": _iso(subscriber.unsubscribed_at),
    }


def _move(subscriber: Subscriber, status: str, **data) -> None:
    """The one place a status changes: checked against TRANSITIONS, stamped, and written to the event log."""
    if status not in TRANSITIONS[subscriber.status]:
        raise Conflict(f"a {subscriber.status} subscriber cannot become {status}")
    now, previous = utcnow(), subscriber.status
    subscriber.status = status
    if status in STAMPS:
        setattr(subscriber, STAMPS[status], now)
    if status == "confirmed":
        subscriber.digest_watermark = now  # posts published from now on are the reader's first digest
    db.session.add(Event(kind=status, subscriber_id=subscriber.id, data={"from": previous, **data}))


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


# --- the publisher's actions on one subscriber (the studio) ---

def unsubscribe_for_publisher(subscriber_id: int) -> Subscriber:
    """The publisher takes a reader off the list (they asked by reply, say): no more digests."""
    subscriber = subscriber_list.get(subscriber_id)
    _move(subscriber, "unsubscribed", by="publisher")
    db.session.commit()
    return subscriber


def erase_for_publisher(subscriber_id: int) -> None:
    """A GDPR erasure request that reached the publisher: as the reader's own "delete my data"."""
    erase(subscriber_list.get(subscriber_id))


def resend_confirmation(subscriber_id: int) -> Subscriber:
    """Send a pending subscriber a new confirmation email, once per CONFIRM_COOLDOWN like every other."""
    subscriber = subscriber_list.get(subscriber_id)
    if subscriber.status != "pending":
        raise Conflict(f"Only a pending subscriber needs a confirmation; this one is {subscriber.status}.")
    if not _claim_cooldown(subscriber):
        db.session.rollback()
        minutes = max(1, current_app.config["CONFIRM_COOLDOWN"] // 60)
        raise Conflict(f"A confirmation email went to this address less than {minutes} minutes ago.")
    db.session.add(Event(kind="confirmation_resent", subscriber_id=subscriber.id, data={"by": "publisher"}))
    outbox.commit_and_dispatch([outbox.add("confirm", subscriber, next="/")])
    return subscriber
