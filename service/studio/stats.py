"""Dashboard figures: daily counts rolled up from the event log, the outbox and finished digest runs, and read back.

The `roll_up_stats` beat task keeps `daily_counts` current; pages only read it, so the dashboard costs the
same few statements whatever the number of subscribers. Days are UTC days.

- Events and transactional mail: each day still open (today, and yesterday until GRACE after midnight) is
  counted again from its rows on every roll-up and replaces what was there, so a transaction that commits
  late (a long CSV import) is still counted. A day is frozen once it has been closed for GRACE.
- Digest runs: a run is added once, in the transaction that moves the mark past its finished_at.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from urllib.parse import unquote, urlsplit

from flask import current_app
from sqlalchemy import Date, and_, case, cast, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from ..extensions import db
from ..models import DailyCount, Delivery, Digest, Event, OutboxEmail, Post, RollupMark, Subscriber, utcnow

GRACE = timedelta(hours=2)  # how long after its end a day is still counted again
RUN_GRACE = timedelta(minutes=10)  # a run's finished_at is stamped a little before its commit
DAYS, RUNS = "days", "runs"  # the marks: start of the first open day; finished_at of the last run added
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# event kind -> metric
EVENT_METRICS = {"signup": "signups", "confirmed": "confirmations", "unsubscribed": "unsubscribes",
                 "bounced": "bounces", "deleted": "erasures", "import": "imports"}
NET = "subscribers"  # the day's change in confirmed subscribers
EMAILS = "emails_sent"  # transactional mail (confirm, sign-in, welcome), source = its kind
DIGESTS_SENT, DIGESTS_FAILED = "digests_sent", "digests_failed"
SOURCED = ("signups", "confirmations")  # counted per source: where the signup came from
RECOUNTED = (*EVENT_METRICS.values(), NET, EMAILS)
_POST_PATH = re.compile(r"/p/([^/]+)/?")
_UPSERT_CHUNK = 500


# --- where a signup came from ---

def normalise_source(raw: str | None, base_url: str) -> str:
    """A signup's consent source as the dashboard groups it.

    "post:<slug>" for an article page of this site, "archive" for its front page, "site" for another of
    its pages, "web:<origin>" for another site (an embedded form or a plain form there), "import", or ""
    when nothing was recorded. Query strings and paths elsewhere are dropped: one row per origin."""
    if not raw:
        return ""
    if raw == "import":
        return "import"
    parts = urlsplit(raw.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return ""
    origin = _origin(parts)
    if origin != _origin(urlsplit(base_url)):
        return f"web:{origin}"
    path = parts.path or "/"
    post = _POST_PATH.fullmatch(path)
    if post:
        return f"post:{unquote(post.group(1))}"
    return "archive" if path == "/" else "site"


def _origin(parts) -> str:
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}{port}"


# --- rolling up ---

def roll_up(now: datetime | None = None) -> dict:
    """Count the open days again and add the newly finished digest runs; one transaction, safe to repeat."""
    now = now or utcnow()
    marks = _locked_marks(now)
    first_open = marks[DAYS].position.date()
    counted = _recount_days(first_open)
    runs = _add_finished_runs(marks[RUNS], now - RUN_GRACE)
    closed = _midnight((now - GRACE).date())
    marks[DAYS].position = max(marks[DAYS].position, closed)
    for mark in marks.values():
        mark.rolled_up_at = now
    db.session.commit()
    return {"recounted_from": first_open.isoformat(), "rows": counted, "runs": runs}


def _locked_marks(now: datetime) -> dict[str, RollupMark]:
    """Both marks, written first so that a second roll-up waits (row locks on PostgreSQL, the write lock on SQLite)."""
    db.session.commit()
    if db.session.execute(select(func.count()).select_from(RollupMark)).scalar_one() < 2:
        _start_marks(now)
    # The transaction's first statement is a write: SQLite takes its lock before anything is read.
    db.session.execute(update(RollupMark).values(rolled_up_at=now).execution_options(synchronize_session=False))
    rows = db.session.scalars(select(RollupMark).execution_options(populate_existing=True)).all()
    return {mark.stream: mark for mark in rows}


def _start_marks(now: datetime) -> None:
    """The first roll-up counts every day since the first event, and every finished run."""
    starts = {DAYS: _midnight(_first_event_day() or now.date()), RUNS: EPOCH}
    for stream, position in starts.items():
        db.session.execute(_insert(RollupMark).values(stream=stream, position=position)
                           .on_conflict_do_nothing(index_elements=["stream"]))
    db.session.commit()


def _first_event_day() -> date | None:
    first = db.session.scalar(select(func.min(Event.created_at)))
    return _as_datetime(first).date() if first else None


def _recount_days(first_open: date) -> int:
    """Replace every recounted metric from `first_open` on with what the event log and the outbox say now."""
    counts = _event_counts(first_open)
    counts.update(_email_counts(first_open))  # not `+`: a Counter sum drops the negative changes
    db.session.execute(delete(DailyCount).where(DailyCount.metric.in_(RECOUNTED), DailyCount.day >= first_open))
    _upsert(counts, add=False)
    return len(counts)


def _event_counts(first_open: date) -> Counter:
    day = _day(Event.created_at)
    source = case((Event.kind.in_(("signup", "confirmed")), Subscriber.consent_source), else_=None)
    moved_from, imported_as = Event.data["from"].as_string(), Event.data["status"].as_string()
    rows = db.session.execute(
        select(day, Event.kind, moved_from, imported_as, source, func.count())
        .outerjoin(Subscriber, Subscriber.id == Event.subscriber_id)
        .where(Event.created_at >= _midnight(first_open), Event.kind.in_(EVENT_METRICS))
        .group_by(day, Event.kind, moved_from, imported_as, source))
    base_url, counts = current_app.config["BASE_URL"], Counter[tuple[str, date, str]]()
    for on, kind, was, imported, raw_source, number in rows:
        on, metric = _as_date(on), EVENT_METRICS[kind]
        counts[(metric, on, normalise_source(raw_source, base_url) if metric in SOURCED else "")] += number
        change = (kind == "confirmed") + (kind == "import" and imported == "confirmed") - (was == "confirmed")
        if change:
            counts[(NET, on, "")] += change * number
    return counts


def _email_counts(first_open: date) -> Counter:
    day = _day(OutboxEmail.sent_at)
    rows = db.session.execute(select(day, OutboxEmail.kind, func.count())
                              .where(OutboxEmail.sent_at >= _midnight(first_open)).group_by(day, OutboxEmail.kind))
    return Counter({(EMAILS, _as_date(on), kind): number for on, kind, number in rows})


def _add_finished_runs(mark: RollupMark, until: datetime) -> int:
    """Add the deliveries of runs that finished after the mark (and before `until`), by the day each was sent."""
    finished = and_(Digest.finished_at > mark.position, Digest.finished_at <= until)
    runs = db.session.execute(select(func.count(), func.max(Digest.finished_at)).where(finished)).one()
    if not runs[0]:
        return 0
    day = _day(func.coalesce(Delivery.sent_at, Digest.finished_at))
    rows = db.session.execute(select(day, Delivery.status, func.count()).join(Digest, Digest.id == Delivery.digest_id)
                              .where(finished, Delivery.status.in_(("sent", "failed"))).group_by(day, Delivery.status))
    metric = {"sent": DIGESTS_SENT, "failed": DIGESTS_FAILED}
    _upsert(Counter({(metric[status], _as_date(on), ""): number for on, status, number in rows}), add=True)
    mark.position = _as_datetime(runs[1])
    return runs[0]


def _upsert(counts: Counter, add: bool) -> None:
    """INSERT ... ON CONFLICT on (metric, day, source): set the count, or add to it (both backends)."""
    rows = [{"metric": metric, "day": on, "source": source, "count": number}
            for (metric, on, source), number in counts.items() if number]
    for start in range(0, len(rows), _UPSERT_CHUNK):
        statement = _insert(DailyCount).values(rows[start:start + _UPSERT_CHUNK])
        value = DailyCount.count + statement.excluded["count"] if add else statement.excluded["count"]
        db.session.execute(statement.on_conflict_do_update(index_elements=["metric", "day", "source"],
                                                           set_={"count": value}))


def _insert(model):
    dialect = postgresql if _dialect() == "postgresql" else sqlite
    return dialect.insert(model)


def _day(column):
    """The UTC calendar day of a timestamp column (PostgreSQL would use the session's time zone)."""
    if _dialect() == "postgresql":
        return cast(func.timezone("UTC", column), Date)
    return func.date(column)


def _dialect() -> str:
    return db.session.get_bind().dialect.name


def _as_date(value) -> date:
    return date.fromisoformat(value) if isinstance(value, str) else value


def _as_datetime(value) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=timezone.utc)


# --- reading: the dashboard ---

@dataclass(frozen=True)
class Source:
    """Signups and confirmations attributed to one place a signup came from."""

    key: str
    label: str
    url: str | None
    signups: int
    confirmations: int

    @property
    def rate(self) -> float | None:
        return self.confirmations / self.signups if self.signups else None


@dataclass(frozen=True)
class Dashboard:
    days: list[date]
    series: dict[str, list[int]]  # metric -> one number per day
    subscribers: list[int]  # confirmed subscribers at the end of each day
    sources: list[Source]
    as_of: datetime | None
    totals: dict[str, int] = field(default_factory=dict)  # metric -> sum over the last 30 days

    @property
    def confirmed(self) -> int:
        return self.subscribers[-1]

    def change(self, days: int) -> int:
        """Net change in confirmed subscribers over the last `days` days (today included)."""
        return self.confirmed - self.subscribers[-days - 1] if days < len(self.subscribers) else self.confirmed

    @property
    def confirmation_rate(self) -> float | None:
        signups = self.totals.get("signups", 0)
        return self.totals.get("confirmations", 0) / signups if signups else None

    @property
    def mails_sent(self) -> list[int]:
        return [a + b for a, b in zip(self.series[DIGESTS_SENT], self.series[EMAILS], strict=True)]


SERIES = (*RECOUNTED, DIGESTS_SENT, DIGESTS_FAILED)
SOURCES_SHOWN = 20
MAX_DAYS = 366


def dashboard(days: int = 90, today: date | None = None) -> Dashboard:
    """The figures for the last `days` days (at least 31, for the 30-day change): four statements, whatever the size."""
    today = today or utcnow().date()
    days = min(max(days, 31), MAX_DAYS)
    first = today - timedelta(days=days - 1)
    span = [first + timedelta(days=n) for n in range(days)]
    series = {metric: [0] * days for metric in SERIES}
    rows = db.session.execute(select(DailyCount.metric, DailyCount.day, func.sum(DailyCount.count))
                              .where(DailyCount.day >= first, DailyCount.day <= today).group_by(DailyCount.metric, DailyCount.day))
    for metric, on, number in rows:
        if metric in series:
            series[metric][(_as_date(on) - first).days] = int(number)
    before = db.session.execute(select(func.coalesce(func.sum(DailyCount.count), 0))
                                .where(DailyCount.metric == NET, DailyCount.day < first)).scalar_one()
    month = slice(days - 30, days)
    return Dashboard(days=span, series=series, subscribers=_running_total(int(before), series[NET]),
                     sources=sources(first, today), as_of=rolled_up_at(),
                     totals={metric: sum(values[month]) for metric, values in series.items()})


def as_dict(board: Dashboard) -> dict:
    """The dashboard as the admin API answers it."""
    rate = board.confirmation_rate
    return {
        "as_of": board.as_of.isoformat() if board.as_of else None,
        "confirmed": board.confirmed,
        "change": {"7_days": board.change(7), "30_days": board.change(30)},
        "confirmation_rate_30_days": round(rate, 4) if rate is not None else None,
        "last_30_days": board.totals,
        "days": [{"day": day.isoformat(), "confirmed": board.subscribers[n],
                  **{metric: values[n] for metric, values in board.series.items()}} for n, day in enumerate(board.days)],
        "sources": [{"source": source.key, "label": source.label, "signups": source.signups,
                     "confirmations": source.confirmations} for source in board.sources],
    }


def _running_total(start: int, changes: Iterable[int]) -> list[int]:
    totals, running = [], start
    for change in changes:
        running += change
        totals.append(running)
    return totals


def sources(first: date, last: date, limit: int = SOURCES_SHOWN) -> list[Source]:
    """The places that brought the most confirmations (then signups) between two days, with post titles."""
    confirmations = func.sum(case((DailyCount.metric == "confirmations", DailyCount.count), else_=0))
    signups = func.sum(case((DailyCount.metric == "signups", DailyCount.count), else_=0))
    rows = db.session.execute(select(DailyCount.source, signups, confirmations)
                              .where(DailyCount.metric.in_(SOURCED), DailyCount.day >= first, DailyCount.day <= last)
                              .group_by(DailyCount.source).order_by(confirmations.desc(), signups.desc(), DailyCount.source)
                              .limit(limit)).all()
    slugs = [key[5:] for key, _, _ in rows if key.startswith("post:")]
    titles = {slug: title for slug, title in db.session.execute(select(Post.slug, Post.title).where(Post.slug.in_(slugs)))} if slugs else {}
    return [Source(key, *_describe(key, titles), int(signed), int(confirmed)) for key, signed, confirmed in rows]


def describe_source(key: str) -> tuple[str, str | None]:
    """One source key as a person reads it (a post's title, looked up), and where it links to."""
    slug = key[5:] if key.startswith("post:") else None
    titles = {slug: db.session.scalar(select(Post.title).where(Post.slug == slug)) or slug} if slug else {}
    return _describe(key, titles)


def _describe(key: str, titles: dict[str, str]) -> tuple[str, str | None]:
    """A source key as a person reads it, and where it links to."""
    kind, _, rest = key.partition(":")
    if kind == "post":
        return titles.get(rest, rest), f"/p/{rest}"
    if kind == "web":
        return f"{rest} (a form on another site)", rest
    return {"archive": ("Front page", "/"), "site": ("Other pages of this site", None),
            "import": ("CSV import", None)}.get(key, ("Not recorded", None))


def rolled_up_at() -> datetime | None:
    """When the daily counts were last brought up to date (None before the first roll-up)."""
    moment = db.session.scalar(select(RollupMark.rolled_up_at).where(RollupMark.stream == DAYS))
    return _as_datetime(moment) if moment is not None else None
