"""Abuse defences the routes cannot express alone: per-mailbox mail budgets, the honeypot, blocked domains."""
from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import datetime, timedelta

from flask import current_app
from limits import parse_many
from sqlalchemy import delete, select

from ..errors import ValidationError
from ..extensions import db
from ..models import MailboxSpend, utcnow
from ..publishing import publication
from .addresses import mailbox_key

log = logging.getLogger(__name__)
HONEYPOT_FIELD = "website"


def signup_limit() -> str:
    """The per-IP limit on signup and sign-in requests, read per request so it follows the config."""
    return current_app.config["SIGNUP_RATE_LIMIT"]


def honeypot_filled(fields) -> bool:
    """People leave the hidden field empty; form-filling bots do not."""
    return bool(str(fields.get(HONEYPOT_FIELD) or "").strip())


def spend_anonymous_mail(email: str) -> bool:
    """One mail to this mailbox on behalf of someone who has not proven it: False once ADDRESS_RATE_LIMIT
    (mails, not requests; every spelling of the mailbox together) is spent. Part of the caller's transaction."""
    return _spend("ADDRESS_RATE_LIMIT", "mail", email)


def spend_renewal_mail(email: str) -> bool:
    """A fresh link for the holder of an older one (the mailbox is proven): a budget of its own, RENEW_RATE_LIMIT,
    that no stranger can spend, so a spent anonymous budget never keeps the owner from a working link."""
    return _spend("RENEW_RATE_LIMIT", "renew", email)


def mailbox_proven(email: str) -> None:
    """The owner followed a link from this mailbox: its anonymous budget starts again."""
    db.session.execute(delete(MailboxSpend).where(MailboxSpend.mailbox == _digest(email), MailboxSpend.scope == "mail"))
    db.session.commit()


def forget_spent_budgets(now: datetime | None = None) -> int:
    """Beat house-keeping: spends older than the longest window count for nothing any more."""
    longest = max(_window(item) for setting in ("ADDRESS_RATE_LIMIT", "RENEW_RATE_LIMIT")
                  for item in parse_many(current_app.config[setting]))
    gone = db.session.execute(delete(MailboxSpend).where(MailboxSpend.spent_at <= (now or utcnow()) - longest))
    db.session.commit()
    return gone.rowcount  # type: ignore[attr-defined]


def _spend(setting: str, scope: str, email: str) -> bool:
    """Moving windows over this mailbox's recent spends; a spend is recorded only when every window has room.
    Two requests for one mailbox in the same instant may both pass: at most one mail over, never a lock-out."""
    items, mailbox, now = parse_many(current_app.config[setting]), _digest(email), utcnow()
    recent = select(MailboxSpend.spent_at).where(MailboxSpend.mailbox == mailbox, MailboxSpend.scope == scope,
                                                 MailboxSpend.spent_at > now - max(map(_window, items)))
    times = db.session.scalars(recent).all()
    if any(sum(moment > now - _window(item) for moment in times) >= item.amount for item in items):
        log.info("per-mailbox %s budget spent: no mail", scope)
        return False
    db.session.add(MailboxSpend(mailbox=mailbox, scope=scope, spent_at=now))
    return True


def _window(item) -> timedelta:
    return timedelta(seconds=item.get_expiry())


def _digest(email: str) -> str:
    """The mailbox (every spelling of it together) as a keyed digest: the budget table holds no address."""
    key = current_app.config["SECRET_KEY"].encode()
    return hmac.new(key, mailbox_key(email).encode(), hashlib.sha256).hexdigest()


def ensure_domain_allowed(email: str) -> None:
    domain = email.rpartition("@")[2]
    blocked = publication.blocked_domains()
    if any(domain == entry or domain.endswith("." + entry) for entry in blocked):
        raise ValidationError("Addresses at this domain cannot subscribe. Please use another address.", field="email")
