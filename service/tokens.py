"""Every signed token: one itsdangerous serializer per purpose, keys rotated through fallbacks."""
from __future__ import annotations

import hashlib
import hmac
import time
from typing import TYPE_CHECKING

from flask import current_app
from itsdangerous import BadData, BadSignature, Serializer, SignatureExpired, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode, int_to_bytes, want_bytes

from .errors import InvalidToken, TokenExpired

if TYPE_CHECKING:
    from .models import Staff, Subscriber

# purpose -> config key of its max age (None: never expires). Every payload is
# [subscriber id, fingerprint, *extra]; the extras per purpose:
#   confirm, signin   [next, link epoch]   single-use: spending one moves the subscriber's link epoch on
#   reader, pass      [session epoch]      the session cookie, the reading pass of an article link
#   article           [post id]
#   unsubscribe       []
# Browser-held values name no subscriber and have payloads of their own (`seal`, `unseal`):
#   meter             [[post id, unix time read], ...]   a browser's metered articles of the last 30 days
PURPOSES = {
    "confirm": "CONFIRM_MAX_AGE",
    "signin": "SIGNIN_MAX_AGE",
    "unsubscribe": None,
    "article": "ARTICLE_LINK_MAX_AGE",
    "reader": "READER_SESSION_MAX_AGE",
    "studio_invite": "STUDIO_INVITE_MAX_AGE",  # payload [staff id, fingerprint, link generation]
    "studio_signin": "STUDIO_LINK_MAX_AGE",
    "pass": "READING_PASS_MAX_AGE",
    "meter": "METER_WINDOW",
}
BROWSER_PURPOSES = {"meter"}


def email_fingerprint(email: str, token_key: str) -> str:
    """A short digest of the address and the row's random key: a token dies when the email changes or its
    row is deleted (a new row may get the same id, never the same key). An empty key digests the address
    alone, as every token did before rows had keys."""
    text = f"{token_key}:{email}" if token_key else email
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def serializer(purpose: str) -> URLSafeTimedSerializer:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    cache = current_app.extensions.setdefault("keepreading_serializers", {})
    if purpose not in cache:
        config = current_app.config
        keys = [*config["SECRET_KEY_FALLBACKS"], config["SECRET_KEY"]]
        cache[purpose] = URLSafeTimedSerializer(keys, salt=f"keepreading.{purpose}")
    return cache[purpose]


def make(purpose: str, holder: Subscriber | Staff, *extra) -> str:
    """A token for a subscriber (bound to its never-reused key) or a staff account (bound to its address)."""
    return serializer(purpose).dumps([holder.id, _fingerprint(holder), *extra])


def _fingerprint(holder: Subscriber | Staff) -> str:
    return email_fingerprint(holder.email, getattr(holder, "token_key", ""))


class Minter:
    """Many tokens of one purpose (a digest's links, thousands a second): the tokens `make` signs, with
    the signer's key derived once and the timestamp encoded once a second. Payloads this short never
    gain from itsdangerous' optional zlib step, so it is skipped: `verify` reads both forms."""

    def __init__(self, purpose: str):
        self.serializer = serializer(purpose)
        signer = self.serializer.make_signer()
        self.sep = signer.sep
        self.mac = hmac.new(signer.derive_key(), digestmod=signer.digest_method)
        self.second, self.stamp = -1, b""

    def __call__(self, subscriber_id: int, fingerprint: str, *extra) -> str:
        payload = base64_encode(want_bytes(Serializer.dump_payload(self.serializer, [subscriber_id, fingerprint, *extra])))
        value = payload + self.sep + self._stamp()
        mac = self.mac.copy()
        mac.update(value)
        return (value + self.sep + base64_encode(mac.digest())).decode("ascii")

    def _stamp(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second, self.stamp = now, base64_encode(int_to_bytes(now))
        return self.stamp


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


def seal(purpose: str, payload) -> str:
    """A signed value a browser keeps for us (no subscriber in it): what `unseal` reads back."""
    if purpose not in BROWSER_PURPOSES:
        raise ValueError(f"{purpose!r} tokens name a subscriber: use make()")
    return serializer(purpose).dumps(payload)


def unseal(purpose: str, token: str):
    """The payload `seal` signed; raises TokenExpired past the purpose's max age, InvalidToken when forged,
    tampered with or signed for another purpose."""
    if purpose not in BROWSER_PURPOSES:
        raise ValueError(f"{purpose!r} tokens name a subscriber: use verify()")
    try:
        return serializer(purpose).loads(token, max_age=current_app.config[PURPOSES[purpose]])
    except SignatureExpired:
        raise TokenExpired(purpose) from None
    except (BadSignature, UnicodeDecodeError, ValueError):
        raise InvalidToken(purpose) from None


def _unsafe_payload(purpose: str, exc: SignatureExpired):
    """An expired token's payload (its signature was good, only its age is wrong)."""
    if exc.payload is None:
        return None
    try:
        return serializer(purpose).load_payload(exc.payload)
    except (BadData, TypeError):
        return None


def matches(payload: list, holder: Subscriber | Staff) -> bool:
    """The token was made for this very row (its id may have been someone else's before)."""
    return payload[0] == holder.id and payload[1] == _fingerprint(holder)
