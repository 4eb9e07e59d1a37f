"""Who may read what: the reader session cookie and the one gating rule."""
from __future__ import annotations

from dataclasses import dataclass

from flask import Response, current_app, g, request

from .. import tokens
from ..errors import InvalidToken, TokenExpired
from ..extensions import db
from ..models import Post, Subscriber
from ..publishing import memory

COOKIE = "kr_reader"
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


def status_of(reader: Subscriber | None) -> str | None:
    return reader.status if reader else None


def reader_from_session(cookie: str | None) -> Subscriber | None:
    """The subscriber a signed session cookie names, if it is still valid for them."""
    if not cookie:
        return None
    try:
        payload = tokens.verify("reader", cookie)
    except InvalidToken:
        return None
    reader = db.session.get(Subscriber, payload[0])
    if reader is None or not tokens.matches(payload, reader.email):
        return None
    return reader


@dataclass(frozen=True)
class ArticleLink:
    """What a digest's signed article link says: the reader it opens the post for, or that it expired."""

    reader: Subscriber | None = None
    expired: bool = False


def article_link(token: str | None, post: Post) -> ArticleLink:
    """A digest link (purpose "article", payload [subscriber, fingerprint, post]) for this post.

    Valid: the reader may read the post in full. Expired: they are asked to sign in. Anything else
    (tampered, another post, an address that changed) is no link at all: the teaser."""
    if not token:
        return ArticleLink()
    try:
        payload = tokens.verify("article", token)
    except TokenExpired:
        return ArticleLink(expired=True)
    except InvalidToken:
        return ArticleLink()
    reader = db.session.get(Subscriber, payload[0])
    if len(payload) != 3 or payload[2] != post.id or reader is None or not tokens.matches(payload, reader.email):
        return ArticleLink()
    return ArticleLink(reader) if reader.status in READING_STATUSES else ArticleLink()


def current_reader() -> Subscriber | None:
    if "reader" not in g:
        g.reader = reader_from_session(request.cookies.get(COOKIE))
    return g.reader


def sign_in(response: Response, reader: Subscriber) -> None:
    config = current_app.config
    response.set_cookie(
        COOKIE,
        tokens.make("reader", reader.id, reader.email),
        max_age=config["READER_SESSION_MAX_AGE"],
        httponly=True,
        samesite="Lax",
        secure=config["SECURE_COOKIES"],
    )
    g.reader = reader


def sign_out(response: Response) -> None:
    response.delete_cookie(COOKIE, httponly=True, samesite="Lax", secure=current_app.config["SECURE_COOKIES"])
    g.reader = None
