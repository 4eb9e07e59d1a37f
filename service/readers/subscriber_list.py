"""The publisher's view of the list: search and filter in keyset pages, and one subscriber's whole record."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Row, TextClause, func, select, text

from ..errors import NotFound, ValidationError
from ..extensions import db
from ..models import STATUSES, Delivery, Digest, Event, OutboxEmail, Subscriber

LISTED = tuple(status for status in STATUSES if status != "deleted")  # an erased subscriber's row is gone
PAGE_SIZE = 50
TIMELINE = 50  # events shown on a subscriber's page, newest first
RECENT = 20  # digests and other emails shown there (the digests are counted by outcome besides)
SEARCH_LIMIT = 320


@dataclass(frozen=True)
class Page:
    """One page of subscribers and the ids that open its neighbours (?before=, ?after=)."""

    subscribers: list[Subscriber]
    newer: int | None  # ?before=<id>: the page before this one, when there is one
    older: int | None  # ?after=<id>: the page after this one, when there is one


@dataclass(frozen=True)
class Order:
    """How a list is sorted, and the keyset conditions that continue it after (or before) a subscriber's id."""

    forwards: ColumnElement[Any] | TextClause
    backwards: ColumnElement[Any] | TextClause
    after: Callable[[int], ColumnElement[Any]]
    before: Callable[[int], ColumnElement[Any]]


def _address_of(subscriber_id: int):
    return select(Subscriber.email).where(Subscriber.id == subscriber_id).scalar_subquery()


NEWEST_FIRST = Order(Subscriber.id.desc(), Subscriber.id.asc(), lambda id_: Subscriber.id < id_,
                     lambda id_: Subscriber.id > id_)
# A search reads the address index from where the typed start begins: the cursor stays an id (no address in a URL).
BY_ADDRESS = Order(Subscriber.email.asc(), Subscriber.email.desc(), lambda id_: Subscriber.email > _address_of(id_),
                   lambda id_: Subscriber.email < _address_of(id_))
# PostgreSQL compares in byte order with its pattern operators whatever the database's collation, so the
# varchar_pattern_ops indexes serve the LIKE range, the order and the cursor at once (a collation's ORDER BY
# could not use them: it read 445,000 rows to find 51 at 1,000,000 subscribers). SQLite compares bytes anyway.
BY_ADDRESS_BYTES = Order(text("subscribers.email USING ~<~"), text("subscribers.email USING ~>~"),
                         lambda id_: Subscriber.email.op("~>~")(_address_of(id_)),
                         lambda id_: Subscriber.email.op("~<~")(_address_of(id_)))


def page(search: str = "", status: str | None = None, after: int | None = None, before: int | None = None,
         size: int = PAGE_SIZE) -> Page:
    """Subscribers newest first, or those whose address starts with `search` from A to Z; of one status if given.

    Keyset pages: one index range whatever the depth, so page 10,000 costs what page 1 does."""
    order = _by_address() if search.strip() else NEWEST_FIRST
    matching = select(Subscriber).where(*conditions(search, status))
    if before is not None:
        rows = _rows(matching.where(order.before(before)).order_by(order.backwards), size + 1)
        newer_exist, rows = len(rows) > size, rows[:size][::-1]
        if not rows:  # nothing before it any more: the first page
            return page(search, status, size=size)
        return Page(rows, rows[0].id if newer_exist else None, rows[-1].id)
    if after is not None:
        matching = matching.where(order.after(after))
    rows = _rows(matching.order_by(order.forwards), size + 1)
    older_exist, rows = len(rows) > size, rows[:size]
    newer = (rows[0].id if rows else after) if after is not None else None
    return Page(rows, newer, rows[-1].id if older_exist else None)


def _by_address() -> Order:
    return BY_ADDRESS_BYTES if db.session.get_bind().dialect.name == "postgresql" else BY_ADDRESS


def conditions(search: str = "", status: str | None = None) -> list:
    """The WHERE of a search by the start of the address and a status filter (the API's numbered pages use it too)."""
    found = []
    if status:
        if status not in STATUSES:
            raise ValidationError(f"status must be one of {', '.join(LISTED)}", field="status")
        found.append(Subscriber.status == status)
    search = (search or "").strip().lower()[:SEARCH_LIMIT]
    if search:  # addresses are stored lower-case
        found.append(Subscriber.email.startswith(search, autoescape=True))
    return found


def _rows(query, limit: int) -> list[Subscriber]:
    return list(db.session.scalars(query.limit(limit)))


@dataclass(frozen=True)
class Record:
    """What the publisher may see about one subscriber: the row (with its consent data) and its history."""

    subscriber: Subscriber
    events: list[Event]
    deliveries: Sequence[Row]  # the latest, as rows: run (the digest id), frequency, status, sent_at, attempts, error
    delivery_counts: dict[str, int]  # every digest to this subscriber, by outcome
    emails: list[OutboxEmail]


def get(subscriber_id: int) -> Subscriber:
    subscriber = db.session.get(Subscriber, subscriber_id)
    if subscriber is None:
        raise NotFound("No such subscriber: erased, or never here.")
    return subscriber


def record(subscriber_id: int) -> Record:
    """The subscriber, their latest events, digests (and how many of each outcome) and other emails: five statements."""
    subscriber = get(subscriber_id)
    events = db.session.scalars(select(Event).where(Event.subscriber_id == subscriber_id)
                                .order_by(Event.id.desc()).limit(TIMELINE))
    deliveries = db.session.execute(  # plain rows: read-only
        select(Delivery.digest_id.label("run"), Digest.frequency, Delivery.status, Delivery.sent_at, Delivery.attempts,
               Delivery.error).join(Digest, Digest.id == Delivery.digest_id)
        .where(Delivery.subscriber_id == subscriber_id).order_by(Delivery.digest_id.desc()).limit(RECENT))
    counts = db.session.execute(select(Delivery.status, func.count()).where(Delivery.subscriber_id == subscriber_id)
                                .group_by(Delivery.status))
    emails = db.session.scalars(select(OutboxEmail).where(OutboxEmail.subscriber_id == subscriber_id)
                                .order_by(OutboxEmail.id.desc()).limit(RECENT))
    return Record(subscriber, list(events), deliveries.all(), {status: number for status, number in counts}, list(emails))
