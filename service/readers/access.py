"""Who may read what: the reader's session, the reading pass of an article link, and the one gating rule.

A session (cookie kr_reader) comes only from an explicit sign-in: a confirmation or sign-in link, pressed.
It reads gated posts and opens the account. A reading pass (cookie kr_pass) comes from a digest's article
link followed without a session: it reads gated posts for READING_PASS_MAX_AGE and opens nothing else.
Both carry the subscriber's session epoch; moving it on (sign-out, leaving) ends every copy of both."""
from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, g, request
from werkzeug.wrappers import Response  # flask.Response's base: what redirect() returns

from .. import tokens
from ..errors import InvalidToken, TokenExpired
from ..extensions import db
from ..models import Post, Subscriber
from ..publishing import memory

COOKIE = "kr_reader"
PASS_COOKIE = "kr_pass"
READING_STATUSES = ("confirmed", "bounced")


def can_read(status: str | None, post: Post) -> bool:
    """Public posts are for everyone; the rest for confirmed subscribers (status None: nobody signed in)."""
    return not post.is_gated or status in READING_STATUSES


def session_status() -> str | None:
    """The signed-in reader's status, from a moment's memory: all the hot reading path asks."""
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        return None
    return memory.remember(("reader", cookie), lambda: status_of(reader_from_session(cookie)))


def reading_status() -> str | None:
    """The status gated posts are shown by: the signed-in reader's, else that of the browser's reading pass."""
    status, reading_pass = session_status(), request.cookies.get(PASS_COOKIE)
    if status is not None or not reading_pass:
        return status
    return memory.remember(("pass", reading_pass), lambda: status_of(_bearer("pass", reading_pass)))


def status_of(reader: Subscriber | None) -> str | None:
    return reader.status if reader else None


def reader_from_session(cookie: str | None) -> Subscriber | None:
    """The subscriber a signed session cookie names, if it is still valid for them."""
    return _bearer("reader", cookie)


def _bearer(purpose: str, value: str | None) -> Subscriber | None:
    """Whom a session cookie or reading pass ([id, fingerprint, session epoch]) names, unless revoked since."""
    if not value:
        return None
    try:
        payload = tokens.verify(purpose, value)
    except InvalidToken:
        return None
    reader = db.session.get(Subscriber, payload[0])
    if reader is None or len(payload) != 3 or not tokens.matches(payload, reader) or payload[2] != reader.session_epoch:
        return None
    return reader


@dataclass(frozen=True)
class ArticleLink:
    """What a digest's signed article link says: the reader it opens the post for, or that it expired."""

    reader: Subscriber | None = None
    expired: bool = False


def article_link(token: str | None, post: Post) -> ArticleLink:
    """A digest link (purpose "article", payload [subscriber, fingerprint, post]) for this post.

    Valid: the post may be read in full. Expired: the reader is asked to sign in. Anything else
    (tampered, another post, an address that changed, a row deleted) is no link at all: the teaser."""
    if not token:
        return ArticleLink()
    try:
        payload = tokens.verify("article", token)
    except TokenExpired:
        return ArticleLink(expired=True)
    except InvalidToken:
        return ArticleLink()
    reader = db.session.get(Subscriber, payload[0])
    if len(payload) != 3 or payload[2] != post.id or reader is None or not tokens.matches(payload, reader):
        return ArticleLink()
    return ArticleLink(reader) if reader.status in READING_STATUSES else ArticleLink()


def current_reader() -> Subscriber | None:
    """The signed-in reader (a reading pass is not one): who the account pages are for."""
    if "reader" not in g:
        g.reader = reader_from_session(request.cookies.get(COOKIE))
    return g.reader


def session_token(reader: Subscriber) -> str:
    return tokens.make("reader", reader, reader.session_epoch)


def sign_in(response: Response, reader: Subscriber) -> None:
    _set(response, COOKIE, session_token(reader), current_app.config["READER_SESSION_MAX_AGE"])
    g.reader = reader


def give_reading_pass(response: Response, reader: Subscriber) -> None:
    """Reading access for a while, from an article link: never the account, never over a session."""
    reading_pass = tokens.make("pass", reader, reader.session_epoch)
    _set(response, PASS_COOKIE, reading_pass, current_app.config["READING_PASS_MAX_AGE"])


def end_sessions(reader: Subscriber) -> None:
    """Every session and reading pass of the reader stops working once this is committed; the page memory
    of this process forgets at that commit, other processes within PAGE_CACHE_SECONDS."""
    reader.session_epoch = reader.session_epoch + 1


def sign_out(response: Response) -> None:
    secure = current_app.config["SECURE_COOKIES"]
    for name in (COOKIE, PASS_COOKIE):
        response.delete_cookie(name, httponly=True, samesite="Lax", secure=secure)
    g.reader = None


def _set(response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="Lax",
                        secure=current_app.config["SECURE_COOKIES"])
