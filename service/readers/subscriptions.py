"""The subscriber lifecycle: signup, double opt-in, sign-in, account, leaving. Every status change lives here."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from flask import current_app
from sqlalchemy import CursorResult, Table, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from .. import tokens
from ..errors import Conflict, InvalidToken, LinkUsed, TokenExpired, ValidationError
from ..extensions import db
from ..mail import outbox
from ..models import FREQUENCIES, STATUSES, Event, OutboxEmail, Subscriber, new_token_key, utcnow
from . import abuse, access, subscriber_list
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
    subscriber = _find_or_add(email, name)
    mail = _mail_for_signup(subscriber, next_url, signup)
    outbox.commit_and_dispatch(mail)


def request_signin(email: object, next_url: object = "/", honeypot: bool = False) -> None:
    """Queue the request for the worker (`answer_signin_request`). The request does the same work whatever
    the address: one row written, one task queued, no lookup, so its timing tells nobody who subscribed."""
    if honeypot:
        return
    email, next_url = normalise_email(email), _next(next_url)
    outbox.commit_and_dispatch([outbox.add_signin_request(email, next_url)])


def answer_signin_request(outbox_id: int) -> bool:
    """In the worker: mail a sign-in link to a reader, or a new confirmation to a pending one (within the
    mailbox's anonymous budget), nothing to anyone else. True when a mail went out."""
    request = outbox.claim_request(outbox_id)
    if request is None:
        return False
    email, next_url = request.data.get("email") or "", request.data.get("next") or "/"
    subscriber = find(email)
    kind = _signin_mail_kind(subscriber) if subscriber else None
    if subscriber is None or kind is None or not abuse.spend_anonymous_mail(email):
        outbox.forget(request)
        db.session.commit()
        return False
    outbox.become(request, kind, subscriber, next=next_url)
    db.session.commit()
    return outbox.send(outbox_id)


def renew_link(purpose: str, token: str) -> None:
    """An expired confirm or sign-in link still proves the mailbox: a fresh one, from the budget of renewals
    (which no stranger can spend) rather than the anonymous one."""
    try:
        payload = tokens.verify(purpose, token)
    except TokenExpired as expired:
        payload = expired.payload
    if not isinstance(payload, list) or len(payload) < 2 or not isinstance(payload[0], int):
        raise InvalidToken(purpose)
    subscriber = _holder(purpose, payload)
    kind = _renewed_kind(subscriber)
    mail = []
    if kind is not None and abuse.spend_renewal_mail(subscriber.email):
        mail = [outbox.add(kind, subscriber, next=_next_from(payload))]
    outbox.commit_and_dispatch(mail)


def _mail_for_signup(subscriber: Subscriber, next_url: str, signup: Signup) -> list[OutboxEmail]:
    if not _claim_cooldown(subscriber) or not abuse.spend_anonymous_mail(subscriber.email):
        return []
    if subscriber.status in READING_STATUSES:
        return [outbox.add("signin", subscriber, next=next_url)]
    _record_consent(subscriber, signup)
    return [outbox.add("confirm", subscriber, next=next_url)]


def _signin_mail_kind(subscriber: Subscriber) -> str | None:
    if subscriber.status in READING_STATUSES:
        return "signin"
    if subscriber.status == "pending" and _claim_cooldown(subscriber):
        return "confirm"
    return None


def _renewed_kind(subscriber: Subscriber) -> str | None:
    if subscriber.status in READING_STATUSES:
        return "signin"
    return "confirm" if subscriber.status == "pending" else None


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
        existing = find(email)
        if existing is None:  # erased since, or another constraint broken: say what failed, not None later
            raise
        return existing
    db.session.add(Event(kind="signup", subscriber_id=subscriber.id, data={}))
    return subscriber


def _claim_cooldown(subscriber: Subscriber) -> bool:
    """One confirmation per address per CONFIRM_COOLDOWN, atomically, whatever the number of requests."""
    now = utcnow()
    since = now - timedelta(seconds=current_app.config["CONFIRM_COOLDOWN"])
    claimed = cast(CursorResult, db.session.execute(
        update(Subscriber)
        .where(Subscriber.id == subscriber.id,
               or_(Subscriber.last_confirmation_at.is_(None), Subscriber.last_confirmation_at <= since))
        .values(last_confirmation_at=now)
        .execution_options(synchronize_session=False)
    )).rowcount
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
# Confirmation and sign-in links work once: each carries the subscriber's link epoch as it was when it was
# mailed, and pressing one (POST) moves the epoch on, so that link and every other one mailed before it are
# spent. Leaving moves it on too. The GET pages only check a link, so mail scanners spend nothing.

def confirm(token: str) -> tuple[Subscriber, str]:
    """Double opt-in, second half: the link is spent, the subscriber confirmed (once) and welcomed."""
    payload = tokens.verify("confirm", token)
    subscriber = _spend("confirm", payload, _unspent("confirm", payload))
    mail = []
    if subscriber.status != "confirmed":
        _move(subscriber, "confirmed")
        mail = [outbox.add("welcome", subscriber)]
    outbox.commit_and_dispatch(mail)
    abuse.mailbox_proven(subscriber.email)
    return subscriber, _next_from(payload)


def sign_in(token: str) -> tuple[Subscriber, str]:
    """A magic link, pressed: spent, and its holder is the one to sign in."""
    payload = tokens.verify("signin", token)
    subscriber = _spend("signin", payload, _unspent("signin", payload))
    db.session.commit()
    abuse.mailbox_proven(subscriber.email)
    return subscriber, _next_from(payload)


def check_link(purpose: str, token: str) -> None:
    """For the GET pages: the link is good (or InvalidToken / TokenExpired / LinkUsed), and nothing changes."""
    _unspent(purpose, tokens.verify(purpose, token))


def unsubscribe(token: str) -> None:
    """RFC 8058 one-click: leave at once. A well-signed link for a row that is gone has nothing left to do."""
    payload = tokens.verify("unsubscribe", token)
    subscriber = db.session.get(Subscriber, payload[0])
    if subscriber is None or not tokens.matches(payload, subscriber):
        return
    if subscriber.status != "unsubscribed":
        _move(subscriber, "unsubscribed")
    db.session.commit()


def check_unsubscribe_link(token: str) -> None:
    tokens.verify("unsubscribe", token)


def _holder(purpose: str, payload: list) -> Subscriber:
    subscriber = db.session.get(Subscriber, payload[0])
    if subscriber is None or not tokens.matches(payload, subscriber):
        raise InvalidToken(purpose)
    return subscriber


def _unspent(purpose: str, payload: list) -> Subscriber:
    """The holder of a confirm or sign-in link ([id, fingerprint, next, link epoch]) that is not spent yet."""
    subscriber = _holder(purpose, payload)
    if len(payload) != 4 or payload[3] != subscriber.link_epoch:
        raise LinkUsed(purpose)
    if purpose == "confirm" and subscriber.status == "unsubscribed" and not _consented_since_leaving(subscriber):
        raise InvalidToken(purpose)  # mailed after they left, for a signup from before: no consent to act on
    return subscriber


def _spend(purpose: str, payload: list, subscriber: Subscriber) -> Subscriber:
    """Move the link epoch on, in one conditional UPDATE: of two presses at once, one wins."""
    spent = cast(CursorResult, db.session.execute(
        update(Subscriber)
        .where(Subscriber.id == subscriber.id, Subscriber.link_epoch == payload[3])
        .values(link_epoch=Subscriber.link_epoch + 1)
        .execution_options(synchronize_session=False)
    )).rowcount
    if spent != 1:
        raise LinkUsed(purpose)
    db.session.expire(subscriber, ["link_epoch"])
    return subscriber


def _consented_since_leaving(subscriber: Subscriber) -> bool:
    left, consented = subscriber.unsubscribed_at, subscriber.consent_at
    return consented is not None and (left is None or consented > left)


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


def sign_out_everywhere(reader: Subscriber) -> None:
    """End every session and reading pass of the reader, in every browser (a copied cookie included)."""
    access.end_sessions(reader)
    db.session.commit()


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


def add_imported_many(rows: list[tuple[str, str, str, datetime]]) -> set[str]:
    """Rows from the publisher's CSV as add_imported takes them, in a few statements (one SELECT, one INSERT of the
    subscribers, one of their events); the addresses added. Those already known, or twice in `rows`, are left."""
    known = set(db.session.scalars(select(Subscriber.email).where(Subscriber.email.in_([row[0] for row in rows]))))
    new: dict[str, dict] = {}
    now = utcnow()
    for email, name, status, subscribed_at in rows:
        if email in known or email in new:
            continue
        values = {"email": email, "name": name, "status": status, "frequency": "default", "created_at": subscribed_at,
                  "consent_at": subscribed_at, "consent_source": "import", "token_key": new_token_key(),
                  "confirmed_at": None, "unsubscribed_at": None, "bounced_at": None, "digest_watermark": None}
        if status in STAMPS:
            values[STAMPS[status]] = subscribed_at
        if status == "confirmed":
            values["digest_watermark"] = now  # their first digest starts now, not with the whole archive
        new[email] = values
    if new:
        table = cast(Table, Subscriber.__table__)  # Core: the ORM would split the rows into one INSERT per run of like NULLs
        db.session.execute(insert(table), list(new.values()))
        added = db.session.execute(select(Subscriber.id, Subscriber.status).where(Subscriber.email.in_(list(new))))
        db.session.execute(insert(Event), [{"kind": "import", "subscriber_id": subscriber_id, "created_at": now,
                                            "data": {"status": status}} for subscriber_id, status in added])
    return set(new)


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
    if status not in READING_STATUSES:  # leaving: no session, reading pass or mailed link of theirs works on
        access.end_sessions(subscriber)
        subscriber.link_epoch = subscriber.link_epoch + 1
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
