"""Who may read what: the reader's session, the reading pass of an article link, and the one gating rule.

A session (cookie kr_reader) comes only from an explicit sign-in: a confirmation or sign-in link, pressed.
It reads gated posts and opens the account. A reading pass (cookie kr_pass) comes from a digest's article
link followed without a session: it reads gated posts for READING_PASS_MAX_AGE and opens nothing else.
Both carry the subscriber's session epoch; moving it on (sign-out, leaving) ends every copy of both.
A meter (cookie kr_meter) is a browser's own count of the metered articles it read in the last 30 days,
signed so that it cannot be reset by editing; it names nobody and the server keeps no record of it."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Protocol

from flask import current_app, g, request
from werkzeug.wrappers import Response  # flask.Response's base: what redirect() returns

from .. import tokens
from ..errors import InvalidToken, TokenExpired
from ..extensions import db
from ..models import Subscriber
from ..publishing import memory, publication

COOKIE = "kr_reader"
PASS_COOKIE = "kr_pass"
METER_COOKIE = "kr_meter"
READING_STATUSES = ("confirmed", "bounced")


class Readable(Protocol):
    """What the gating rule needs of a post: a Post row, or the page memory's note of one."""

    @property
    def id(self) -> int: ...

    @property
    def visibility(self) -> str: ...

    @property
    def is_gated(self) -> bool: ...


def can_read(status: str | None, post: Readable, meter: Meter | None = None) -> bool:
    """The one gating rule. Public and popup posts are for everyone; the rest for confirmed subscribers (status
    None: nobody signed in), and a metered post also for a browser whose meter counted it or has room for it."""
    if not post.is_gated or status in READING_STATUSES:
        return True
    return post.visibility == "metered" and meter is not None and meter.allows(post.id)


def subscribed(status: str | None) -> bool:
    """A reader who reads everything: never metered, never invited to subscribe."""
    return status in READING_STATUSES


@dataclass(frozen=True)
class Meter:
    """A browser's metered articles of the last 30 days, (post id, unix time first read), from its signed cookie.
    A cookie that does not verify (edited, forged, another cookie's value) leaves no free article."""

    limit: int
    reads: tuple[tuple[int, int], ...] = ()
    spent: bool = False

    def has_read(self, post_id: int) -> bool:
        return any(read[0] == post_id for read in self.reads)

    def allows(self, post_id: int) -> bool:
        """Reading it again is free; a new one needs room."""
        return not self.spent and (self.has_read(post_id) or len(self.reads) < self.limit)

    @property
    def left(self) -> int:
        return 0 if self.spent else max(0, self.limit - len(self.reads))

    def counting(self, post_id: int, now: int) -> Meter:
        """The meter once this article is read: counted, unless it was already or may not be read."""
        if self.has_read(post_id) or not self.allows(post_id):
            return self
        return replace(self, reads=(*self.reads, (post_id, now)))


def browser_meter(now: int | None = None) -> Meter:
    """This browser's meter: reads older than the window have aged out; an unreadable cookie is spent."""
    limit, now = publication.reading().free_articles, int(time.time()) if now is None else now
    value = request.cookies.get(METER_COOKIE)
    if not value:
        return Meter(limit)
    try:
        payload = tokens.unseal("meter", value)
    except TokenExpired:  # not rewritten for a whole window: every read in it has aged out
        return Meter(limit)
    except InvalidToken:
        return Meter(limit, spent=True)
    reads = _reads(payload)
    if reads is None:
        return Meter(limit, spent=True)
    window = current_app.config["METER_WINDOW"]
    return Meter(limit, tuple(read for read in reads if now - read[1] < window))


def _reads(payload) -> tuple[tuple[int, int], ...] | None:
    if not isinstance(payload, list) or len(payload) > 1000:
        return None
    if not all(isinstance(read, list) and len(read) == 2 and all(type(n) is int for n in read) for read in payload):
        return None
    return tuple((read[0], read[1]) for read in payload)


@dataclass(frozen=True)
class ArticleAccess:
    """What one view of an article gives this reader: the text or the gate, and the meter it leaves."""

    allowed: bool
    meter: Meter | None = None  # None: the post is not metered for this reader
    counted: bool = False  # this view spent a free article: the browser's cookie is rewritten


def article_access(status: str | None, post: Readable) -> ArticleAccess:
    """Whether this reader reads the post in full here, counting a metered one against the browser's meter."""
    if post.visibility != "metered" or subscribed(status):
        return ArticleAccess(can_read(status, post))
    before = browser_meter()
    after = before.counting(post.id, int(time.time()))
    return ArticleAccess(can_read(status, post, before), after, after is not before)


def keep_meter(response: Response, meter: Meter) -> None:
    value = tokens.seal("meter", [list(read) for read in meter.reads])
    _set(response, METER_COOKIE, value, current_app.config["METER_WINDOW"])


def session_status() -> str | None:
    """The signed-in reader's status, from a moment's memory: all the hot reading path asks."""
    return _session_view()[0]


def session_email() -> str | None:
    """The signed-in reader's address, for "Signed in as …" (never part of a page kept in memory)."""
    return _session_view()[1]


def _session_view() -> tuple[str | None, str | None]:
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        return None, None
    return memory.remember(("reader", cookie), lambda: _view(reader_from_session(cookie)))


def _view(reader: Subscriber | None) -> tuple[str | None, str | None]:
    return (reader.status, reader.email) if reader else (None, None)


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


def article_link(token: str | None, post: Readable) -> ArticleLink:
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
