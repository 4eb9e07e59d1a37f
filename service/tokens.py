"""Every signed token: one itsdangerous serializer per purpose, keys rotated through fallbacks."""
from __future__ import annotations

import hashlib

from flask import current_app
from itsdangerous import BadData, BadSignature, SignatureExpired, URLSafeTimedSerializer

from .errors import InvalidToken, TokenExpired

# purpose -> config key of its max age (None: never expires)
PURPOSES = {
    "confirm": "CONFIRM_MAX_AGE",
    "signin": "SIGNIN_MAX_AGE",
    "unsubscribe": None,
    "article": "ARTICLE_LINK_MAX_AGE",
    "reader": "READER_SESSION_MAX_AGE",
}


def email_fingerprint(email: str) -> str:
    """A short digest of the address: a token dies when the subscriber's email changes."""
    return hashlib.sha256(email.encode()).hexdigest()[:10]


def serializer(purpose: str) -> URLSafeTimedSerializer:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    cache = current_app.extensions.setdefault("keepreading_serializers", {})
    if purpose not in cache:
        config = current_app.config
        keys = [*config["SECRET_KEY_FALLBACKS"], config["SECRET_KEY"]]
        cache[purpose] = URLSafeTimedSerializer(keys, salt=f"keepreading.{purpose}")
    return cache[purpose]


def make(purpose: str, subscriber_id: int, email: str, *extra) -> str:
    return serializer(purpose).dumps([subscriber_id, email_fingerprint(email), *extra])


def verify(purpose: str, token: str) -> list:
    """The payload [subscriber_id, fingerprint, *extra]; raises TokenExpired or InvalidToken."""
    key = PURPOSES[purpose]
    max_age = current_app.config[key] if key else None
    try:
        payload = serializer(purpose).loads(token, max_age=max_age)
    except SignatureExpired as exc:
        raise TokenExpired(purpose, _unsafe_payload(purpose, exc)) from None
    except (BadSignature, UnicodeDecodeError, ValueError):
        raise InvalidToken(purpose) from None
    if not isinstance(payload, list) or len(payload) < 2 or not isinstance(payload[0], int):
        raise InvalidToken(purpose)
    return payload


def _unsafe_payload(purpose: str, exc: SignatureExpired):
    """An expired token's payload (its signature was good, only its age is wrong)."""
    try:
        return serializer(purpose).load_payload(exc.payload)
    except (BadData, TypeError):
        return None


def matches(payload: list, email: str) -> bool:
    return payload[1] == email_fingerprint(email)
