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


def address_allowed(email: str) -> bool:
    """Count one more request for this mailbox from anywhere; False once ADDRESS_RATE_LIMIT is spent."""
    items = parse_many(current_app.config["ADDRESS_RATE_LIMIT"])
    key = (current_app.config.get("RATELIMIT_KEY_PREFIX") or "kr", "address", mailbox_key(email))
    strategy = limiter.limiter
    if not all(strategy.test(item, *key) for item in items):
        log.info("address rate limit reached for a signup or sign-in request")
        return False
    for item in items:
        strategy.hit(item, *key)
    return True


def ensure_domain_allowed(email: str) -> None:
    domain = email.rpartition("@")[2]
    blocked = publication.blocked_domains()
    if any(domain == entry or domain.endswith("." + entry) for entry in blocked):
        raise ValidationError("Addresses at this domain cannot subscribe. Please use another address.", field="email")
