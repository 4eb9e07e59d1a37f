"""A subscriber's next digest, built by the real digest mail: for the studio to show, and to send to staff as a test."""
from __future__ import annotations

import email
import email.policy
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from typing import cast

from sqlalchemy import select

from ..errors import NotFound
from ..extensions import db
from ..mail import mailer, transports
from ..models import Post, Subscriber, utcnow
from ..publishing import publication
from ..readers.addresses import normalise_email
from .message import DigestMail, PostItem, Reader
from .runs import watermark

SAMPLE_POSTS = 3  # without a chosen subscriber: the latest posts, as a sample
NOBODY = 0  # the subscriber id the preview's links carry: they open nothing and unsubscribe nobody


@dataclass(frozen=True)
class NextDigest:
    subscriber: Subscriber | None  # None: a sample of the latest posts
    posts: list[PostItem]

    @property
    def empty(self) -> bool:
        return not self.posts

    def message(self, to_email: str, to_name: str = "") -> bytes:
        """The digest exactly as a batch builds it, addressed to `to_email`, its signed links for nobody."""
        mail = DigestMail(NOBODY, time.time_ns() // 1000, self.posts, publication.name())
        return mail.message(NOBODY, Reader(NOBODY, to_email, to_name, token_key=secrets.token_hex(8)))  # a key no row has

    def parsed(self, to_email: str, to_name: str = "") -> EmailMessage:
        """The message read back, for showing its headers and parts."""
        return email.message_from_bytes(self.message(to_email, to_name), policy=email.policy.default)


def next_digest(address: str | None, now: datetime | None = None) -> NextDigest:
    """The posts `address` would get in their next digest (published since their watermark), newest first."""
    now = now or utcnow()
    if not address:
        return NextDigest(None, _posts(select(Post.id).where(Post.published_at <= now), limit=SAMPLE_POSTS))
    subscriber = db.session.scalar(select(Subscriber).where(Subscriber.email == normalise_email(address)))
    if subscriber is None:
        raise NotFound("No subscriber has that address.", field="email")
    since = select(watermark()).where(Subscriber.id == subscriber.id).scalar_subquery()
    return NextDigest(subscriber, _posts(select(Post.id).where(Post.published_at > since, Post.published_at <= now)))


def send_test(digest: NextDigest, to_email: str, to_name: str = "") -> None:
    """Through the configured transport (SMTP, or .eml files in development), at once."""
    transport = transports.open_transport()
    try:
        transport.send(mailer.sender()[1], [to_email], digest.message(to_email, to_name))
    finally:
        transport.close()


def _posts(ids, limit: int | None = None) -> list[PostItem]:
    query = (select(Post.id, Post.slug, Post.title, Post.published_at, Post.teaser_html)
             .where(Post.published.is_(True), Post.id.in_(ids))
             .order_by(Post.published_at.desc(), Post.id.desc()).limit(limit))
    # published posts always have published_at (posts.create and posts.update set it), though the column may be NULL
    return [PostItem(*cast("tuple[int, str, str, datetime, str]", row)) for row in db.session.execute(query)]
