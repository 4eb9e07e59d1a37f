"""Abuse defences the routes cannot express alone: per-address limits, the honeypot, blocked domains."""
from __future__ import annotations

import logging

from flask import current_app
from limits import parse_many

from ..errors import ValidationError
from ..extensions import limiter
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
    (mails, not requests; every spelling of the mailbox together) is spent."""
    return _spend("ADDRESS_RATE_LIMIT", "mail", email)


def spend_renewal_mail(email: str) -> bool:
    """A fresh link for the holder of an older one (the mailbox is proven): a budget of its own, RENEW_RATE_LIMIT,
    that no stranger can spend, so a spent anonymous budget never keeps the owner from a working link."""
    return _spend("RENEW_RATE_LIMIT", "renew", email)


def mailbox_proven(email: str) -> None:
    """The owner followed a link from this mailbox: its anonymous budget starts again."""
    for item in parse_many(current_app.config["ADDRESS_RATE_LIMIT"]):
        limiter.limiter.clear(item, *_key("mail", email))


def _spend(setting: str, scope: str, email: str) -> bool:
    items, key = parse_many(current_app.config[setting]), _key(scope, email)
    strategy = limiter.limiter
    # test() first so a spent daily budget leaves the hourly one alone; hit() has the last word (at a
    # window's edge the storage's test and hit can disagree by an instant).
    if not all(strategy.test(item, *key) for item in items) or not all([strategy.hit(item, *key) for item in items]):
        log.info("per-mailbox %s budget spent: no mail", scope)
        return False
    return True


def _key(scope: str, email: str) -> tuple[str, str, str]:
    return (current_app.config.get("RATELIMIT_KEY_PREFIX") or "kr", scope, mailbox_key(email))


def ensure_domain_allowed(email: str) -> None:
    domain = email.rpartition("@")[2]
    blocked = publication.blocked_domains()
    if any(domain == entry or domain.endswith("." + entry) for entry in blocked):
        raise ValidationError("Addresses at this domain cannot subscribe. Please use another address.", field="email")
