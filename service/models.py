"""Database models: publication settings, posts, subscribers, digests, deliveries, outbox, events, studio staff, daily counts."""
from __future__ import annotations

import secrets
from datetime import date, datetime, timezone
from typing import Optional

from sqlalchemy import JSON, CheckConstraint, Date, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.types import DateTime, TypeDecorator

from .extensions import Model

# public: everyone reads it all; subscribers: others get the teaser and the subscribe block; popup: everyone reads
# it all, and readers who are not subscribed are invited in a dismissable dialog; metered: free in full for a
# browser's first few metered articles a month, then as subscribers.
VISIBILITIES = ("public", "subscribers", "popup", "metered")
DIGEST_CONTENTS = ("full", "teaser")
GATED_VISIBILITIES = ("subscribers", "metered")
STATUSES = ("pending", "confirmed", "unsubscribed", "bounced", "deleted")
FREQUENCIES = ("default", "daily", "weekly", "off")
DELIVERY_STATUSES = ("pending", "sending", "sent", "failed", "skipped")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_token_key() -> str:
    return secrets.token_urlsafe(16)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime given to a UTC column")
            value = value.astimezone(timezone.utc)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class PublicationSettings(Model):
    """The publisher's settings: one row, id 1."""

    __tablename__ = "publication_settings"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[Optional[str]] = mapped_column(String(200))
    default_frequency: Mapped[str] = mapped_column(String(10), default="weekly")
    send_hour: Mapped[int] = mapped_column(default=8)
    send_weekday: Mapped[int] = mapped_column(default=0)  # Monday, as datetime.weekday()
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    teaser_words: Mapped[int] = mapped_column(default=120)
    blocked_domains: Mapped[str] = mapped_column(Text, default="")
    # Origins allowed to frame the signup form; None: not set in the studio yet, KEEPREADING_EMBED_ORIGINS applies.
    embed_origins: Mapped[Optional[str]] = mapped_column(Text)
    # Access modes (README "Access modes"): new posts' visibility, the pop-up's triggers and snooze, the meter.
    default_visibility: Mapped[str] = mapped_column(String(16), default="subscribers", server_default="subscribers")
    popup_scroll_percent: Mapped[int] = mapped_column(default=50, server_default="50")
    popup_delay_seconds: Mapped[int] = mapped_column(default=45, server_default="45")  # 0: only scrolling opens it
    popup_snooze_days: Mapped[int] = mapped_column(default=7, server_default="7")
    free_articles: Mapped[int] = mapped_column(default=3, server_default="3")  # metered articles a browser reads a month
    digest_content: Mapped[str] = mapped_column(String(10), default="full", server_default="full")
    __table_args__ = (
        CheckConstraint("default_frequency IN ('daily', 'weekly')", name="ck_settings_frequency"),
        CheckConstraint(_in("default_visibility", VISIBILITIES), name="ck_settings_default_visibility"),
        CheckConstraint("popup_scroll_percent BETWEEN 1 AND 100", name="ck_settings_popup_scroll"),
        CheckConstraint("popup_delay_seconds BETWEEN 0 AND 3600", name="ck_settings_popup_delay"),
        CheckConstraint("popup_snooze_days BETWEEN 1 AND 365", name="ck_settings_popup_snooze"),
        CheckConstraint("free_articles BETWEEN 0 AND 100", name="ck_settings_free_articles"),
        CheckConstraint(_in("digest_content", DIGEST_CONTENTS), name="ck_settings_digest_content"),
        CheckConstraint("send_hour BETWEEN 0 AND 23", name="ck_settings_hour"),
        CheckConstraint("send_weekday BETWEEN 0 AND 6", name="ck_settings_weekday"),
        CheckConstraint("teaser_words BETWEEN 10 AND 2000", name="ck_settings_teaser_words"),
    )


class Post(Model):
    __tablename__ = "posts"
    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(200), unique=True)
    title: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text)  # Markdown as the publisher wrote it
    body_html: Mapped[str] = mapped_column(Text)  # sanitised, rendered once on save
    teaser_html: Mapped[str] = mapped_column(Text)
    visibility: Mapped[str] = mapped_column(String(16), default="subscribers")
    published: Mapped[bool] = mapped_column(default=False)
    published_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, index=True)
    scheduled_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, index=True)  # a draft beat publishes then
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    __table_args__ = (CheckConstraint(_in("visibility", VISIBILITIES), name="ck_posts_visibility"),)

    @property
    def is_gated(self) -> bool:
        """Some readers may not read all of it (subscribers-only, or metered once a browser's free articles are
        spent): its teaser holds part back, and no channel but the article page for an allowed reader carries the rest."""
        return self.visibility in GATED_VISIBILITIES

    @property
    def for_subscribers_only(self) -> bool:
        return self.visibility == "subscribers"

    @property
    def state(self) -> str:
        """draft, scheduled or published: how the studio lists it."""
        if self.published:
            return "published"
        return "scheduled" if self.scheduled_at else "draft"


class Subscriber(Model):
    __tablename__ = "subscribers"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    frequency: Mapped[str] = mapped_column(String(10), default="default")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    confirmed_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    unsubscribed_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    bounced_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    # Posts published after this instant have not been in one of this reader's digests.
    digest_watermark: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    last_confirmation_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    consent_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    consent_ip: Mapped[Optional[str]] = mapped_column(String(64))
    consent_user_agent: Mapped[Optional[str]] = mapped_column(String(400))
    consent_source: Mapped[Optional[str]] = mapped_column(String(500))
    # Random, never reused (ids are, on SQLite): every token's fingerprint mixes it with the address, so a
    # token dies with its row. "" (rows from before it, or written without the ORM) fingerprints the
    # address alone, as tokens were made before: the links already mailed to those rows keep working.
    token_key: Mapped[str] = mapped_column(String(32), default=new_token_key, server_default="")
    # Moved on to end every session and reading pass at once: the signed cookies carry the epoch they began in.
    session_epoch: Mapped[int] = mapped_column(default=0, server_default="0")
    # Moved on when a confirmation or sign-in link is used, or the reader leaves: each link carries the
    # epoch it was mailed in, so it works once and never after unsubscribing.
    link_epoch: Mapped[int] = mapped_column(default=0, server_default="0")
    __table_args__ = (
        CheckConstraint(_in("status", STATUSES), name="ck_subscribers_status"),
        CheckConstraint(_in("frequency", FREQUENCIES), name="ck_subscribers_frequency"),
        # The studio's list: a status filter in id order, a search by the start of the address (with or without
        # a status) in address order. pattern_ops: LIKE 'start%' uses the index whatever the collation.
        Index("ix_subscribers_status_id", "status", "id"),
        Index("ix_subscribers_status_email", "status", "email", postgresql_ops={"email": "varchar_pattern_ops"}),
        Index("ix_subscribers_email_prefix", "email", postgresql_ops={"email": "varchar_pattern_ops"}),
    )


class Digest(Model):
    """One digest run: the posts up to `cutoff` for every due subscriber."""

    __tablename__ = "digests"
    id: Mapped[int] = mapped_column(primary_key=True)
    slot: Mapped[str] = mapped_column(String(64), unique=True)  # e.g. daily:2026-11-25, or manual:<uuid>
    frequency: Mapped[Optional[str]] = mapped_column(String(10))
    cutoff: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    # the run's counts by status (and "bounced"), kept when its per-recipient rows are pruned (runs.prune)
    kept_counts: Mapped[Optional[dict]] = mapped_column(JSON)
    deliveries: Mapped[list["Delivery"]] = relationship(back_populates="digest", passive_deletes=True)


class Delivery(Model):
    """One digest email to one subscriber; claimed before the SMTP send, never sent twice."""

    __tablename__ = "deliveries"
    id: Mapped[int] = mapped_column(primary_key=True)
    digest_id: Mapped[int] = mapped_column(ForeignKey("digests.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    since: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)  # the reader's watermark before this run
    status: Mapped[str] = mapped_column(String(10), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    lease_until: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    sent_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    error: Mapped[Optional[str]] = mapped_column(String(500))
    digest: Mapped[Digest] = relationship(back_populates="deliveries")
    __table_args__ = (
        UniqueConstraint("subscriber_id", "digest_id", name="uq_delivery_subscriber_digest"),
        CheckConstraint(_in("status", DELIVERY_STATUSES), name="ck_deliveries_status"),
        Index("ix_deliveries_digest_status", "digest_id", "status"),
    )


class OutboxEmail(Model):
    """A transactional email to send (confirm, sign-in, welcome): kept here so a broker outage loses nothing."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    subscriber_id: Mapped[Optional[int]] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"), index=True)
    data: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_until: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    sent_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime, index=True)
    attempts: Mapped[int] = mapped_column(default=0)
    error: Mapped[Optional[str]] = mapped_column(String(500))


class Event(Model):
    """An audit trail of what happened to subscribers (signup, confirm, unsubscribe, bounce)."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    subscriber_id: Mapped[Optional[int]] = mapped_column(ForeignKey("subscribers.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    data: Mapped[dict] = mapped_column(JSON, default=dict)
    # A subscriber's timeline and the erase cascade look events up by subscriber; the daily counts by day.
    __table_args__ = (
        Index("ix_events_subscriber_id", "subscriber_id"),
        Index("ix_events_created_at", "created_at"),
    )


class Staff(Model):
    """A studio account: someone who writes, schedules and sends for the publication."""

    __tablename__ = "staff"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[Optional[str]] = mapped_column(String(200))  # argon2; None until the invitation is used
    # Moves each time an emailed link (invitation, sign-in) is used: every link made before dies with it.
    link_generation: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_signin_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)


class StudioSession(Model):
    """One signed-in studio browser: the cookie holds a random token, this row its hash (deleting it signs out)."""

    __tablename__ = "studio_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex of the cookie's token
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ip: Mapped[Optional[str]] = mapped_column(String(64))
    user_agent: Mapped[Optional[str]] = mapped_column(String(400))


class DailyCount(Model):
    """A dashboard figure: how many of one thing (signups, confirmations, mails sent...) on one UTC day, per source."""

    __tablename__ = "daily_counts"
    metric: Mapped[str] = mapped_column(String(32), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    source: Mapped[str] = mapped_column(String(300), primary_key=True, default="")  # "" where a metric has none
    count: Mapped[int] = mapped_column(default=0)


class RollupMark(Model):
    """How far the daily counts have read one stream (the event log by day, finished digest runs)."""

    __tablename__ = "rollup_marks"
    stream: Mapped[str] = mapped_column(String(32), primary_key=True)
    position: Mapped[datetime] = mapped_column(UTCDateTime)
    rolled_up_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)


class MailboxSpend(Model):
    """One mail a mailbox got on a request, kept while it counts against that mailbox's budget.

    In the database, not the rate limiter's storage: the web and every worker process (and the embedded
    default's in-memory limiter has one store per process) must see the same budget. The mailbox is kept
    as a keyed digest, never as an address."""

    __tablename__ = "mailbox_spends"
    id: Mapped[int] = mapped_column(primary_key=True)
    mailbox: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(10))  # "mail": anyone's request; "renew": a proven owner's
    spent_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    __table_args__ = (Index("ix_mailbox_spends_mailbox_scope", "mailbox", "scope", "spent_at"),
                      Index("ix_mailbox_spends_spent_at", "spent_at"))
