"""Metrics read from the database at scrape time: exact whichever process (web, worker, CLI) did the work.

Mail outcomes, subscriber events and digest runs only ever grow, so each tally reads a row once it is final
and keeps its count in the process; a scrape reads only the rows still moving (a day's at most), never the
whole table again. A count kept this way also outlives the row (a reader's data erased, old deliveries
pruned): a mail that was sent stays counted as sent.
"""
from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import Counter
from datetime import timedelta

from flask import Flask
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import and_, case, false, func, or_, select

from ..extensions import db
from ..mail import outbox
from ..models import Delivery, Digest, Event, OutboxEmail, Post, Subscriber, utcnow

log = logging.getLogger(__name__)
# Ids are handed out before their transaction commits, so a row newer than this may still appear below
# one already seen; rows this old are all visible, and only they are counted for good.
SETTLE_AFTER = timedelta(hours=1)
SUBSCRIBER_EVENTS = ("signup", "confirmed", "unsubscribed", "bounced", "deleted", "import")
RUN_SECONDS_BUCKETS = (10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 12 * 3600)


def refused_for_good(error_column):
    """A 5xx answer from the mail server (the transports record it as '<code> <text>')."""
    return error_column.like("5%")


class Tally:
    """Rows of one table counted by labels: settled rows (final and older than SETTLE_AFTER) are read once
    and kept; the others are counted again at every scrape."""

    def __init__(self, column_id, column_created, labels, still_open, where=()):
        self.id, self.created, self.labels, self.still_open, self.where = column_id, column_created, labels, still_open, where
        self.kept: Counter = Counter()
        self.settled_up_to = 0  # every row with an id up to this one is counted in `kept`

    def counts(self, now) -> tuple[Counter, Counter]:
        """(settled counts, counts of the rows still moving), both by tuples of labels."""
        unsettled = or_(self.created >= now - SETTLE_AFTER, self.still_open(now))
        newer = and_(self.id > self.settled_up_to, *self.where)
        # One statement, so the boundary and the counts come from the same snapshot.
        boundary = select(func.min(self.id)).where(newer, unsettled).scalar_subquery()
        settled = self.id < func.coalesce(boundary, self.id + 1)
        labels = self.labels(now)
        rows = db.session.execute(select(*labels, settled, func.count(), func.max(self.id))
                                  .where(newer).group_by(*labels, settled))
        moving: Counter = Counter()
        for *names, is_settled, number, highest in rows:
            if is_settled:
                self.kept[tuple(names)] += number
                self.settled_up_to = max(self.settled_up_to, highest)
            else:
                moving[tuple(names)] += number
        return self.kept, moving


def outbox_labels(now) -> list:
    """kind, and sent, bounced (refused for good), failed (given up, or too old to send) or pending."""
    given_up = OutboxEmail.attempts >= outbox.MAX_ATTEMPTS
    state = case(
        (OutboxEmail.sent_at.is_not(None), "sent"),
        (and_(given_up, refused_for_good(OutboxEmail.error)), "bounced"),
        (or_(given_up, OutboxEmail.created_at <= now - outbox.STALE_AFTER), "failed"),
        else_="pending",
    )
    return [OutboxEmail.kind, state]


def outbox_open(now):
    return and_(OutboxEmail.sent_at.is_(None), OutboxEmail.attempts < outbox.MAX_ATTEMPTS,
                OutboxEmail.created_at > now - outbox.STALE_AFTER)


DELIVERY_STATE = case((and_(Delivery.status == "failed", refused_for_good(Delivery.error)), "bounced"),
                      else_=Delivery.status)


def deliveries_by_run(run_ids: list[int]) -> dict[int, Counter]:
    found: dict[int, Counter] = {run_id: Counter() for run_id in run_ids}
    if run_ids:
        for run_id, state, number in db.session.execute(
                select(Delivery.digest_id, DELIVERY_STATE, func.count())
                .where(Delivery.digest_id.in_(run_ids)).group_by(Delivery.digest_id, DELIVERY_STATE)):
            found[run_id][state] += number
    return found


class Runs:
    """Digest runs: a finished run's deliveries and duration are read once; a running run's at every scrape."""

    def __init__(self):
        self.finished: dict[int, tuple[float, Counter]] = {}  # run id -> (seconds, deliveries by state)
        self.last_finished: tuple[float, float] | None = None  # (finished at, seconds) of the latest run
        self.all_read_up_to = 0  # every run up to this id is finished and in `finished`
        self.running_count = 0

    def running(self) -> dict[int, Counter]:
        """The running runs' deliveries by state; `finished` brought up to date first."""
        found = db.session.execute(select(Digest.id, Digest.created_at, Digest.finished_at)
                                   .where(Digest.id > self.all_read_up_to)).all()
        new = [run for run in found if run.finished_at is not None and run.id not in self.finished]
        deliveries = deliveries_by_run([run.id for run in new])
        for run in new:
            seconds = (run.finished_at - run.created_at).total_seconds()
            self.finished[run.id] = (seconds, deliveries[run.id])
            if self.last_finished is None or run.finished_at.timestamp() >= self.last_finished[0]:
                self.last_finished = (run.finished_at.timestamp(), seconds)
        running = [run.id for run in found if run.finished_at is None]
        self.running_count = len(running)
        self.all_read_up_to = min(running) - 1 if running else max((run.id for run in found), default=self.all_read_up_to)
        return deliveries_by_run(running)

    def delivered(self) -> Counter:
        total: Counter = Counter()
        for _, by_state in self.finished.values():
            total.update(by_state)
        return total


class DatabaseCollector:
    """Everything the database says, read with a handful of indexed queries per scrape."""

    def __init__(self, app: Flask):
        self.app = app
        self.lock = threading.Lock()  # two scrapes at once in one worker share the kept counts
        self.outbox = Tally(OutboxEmail.id, OutboxEmail.created_at, outbox_labels, outbox_open)
        self.events = Tally(Event.id, Event.created_at, lambda now: [Event.kind], lambda now: false(),
                            where=(Event.kind.in_(SUBSCRIBER_EVENTS),))
        self.runs = Runs()

    def collect(self):
        with self.app.app_context(), self.lock:
            try:
                families = self.families(utcnow())
            except Exception:  # a scrape still answers (and says so) when the database does not
                db.session.rollback()
                log.exception("metrics: the database could not be read")
                families = []
            finally:
                db.session.remove()
        up = GaugeMetricFamily("keepreading_metrics_database_up", "1 when the database could be read for this scrape")
        up.add_metric([], 1 if families else 0)
        return [up, *families]

    def families(self, now) -> list:
        running = sum(self.runs.running().values(), Counter())  # the running runs' deliveries by state
        return [posts(), subscribers(), *self.mail(now, running), *self.digest_runs(running), self.subscriber_events(now)]

    def mail(self, now, running: Counter) -> list:
        mails = CounterMetricFamily("keepreading_mails", "Emails by kind and outcome (bounced: refused with a 5xx answer)",
                                    labels=["kind", "outcome"])
        backlog = GaugeMetricFamily("keepreading_outbox_backlog", "Transactional emails waiting to be sent", labels=["kind"])
        kept, moving = self.outbox.counts(now)
        for kind in outbox.SUBJECTS:
            for outcome in ("sent", "failed", "bounced"):
                mails.add_metric([kind, outcome], kept[(kind, outcome)] + moving[(kind, outcome)])
            backlog.add_metric([kind], moving[(kind, "pending")])
        digests = self.runs.delivered() + running
        for outcome in ("sent", "failed", "bounced", "skipped"):
            mails.add_metric(["digest", outcome], digests[outcome])
        return [mails, backlog]

    def digest_runs(self, running: Counter) -> list:
        waiting = GaugeMetricFamily("keepreading_digest_deliveries", "Digest deliveries not settled yet", labels=["status"])
        for status in ("pending", "sending"):
            waiting.add_metric([status], running[status])
        runs = GaugeMetricFamily("keepreading_digest_runs", "Digest runs by state", labels=["state"])
        runs.add_metric(["running"], self.runs.running_count)
        runs.add_metric(["finished"], len(self.runs.finished))
        return [waiting, runs, self.run_seconds(), *self.last_run()]

    def run_seconds(self):
        per_bucket = [0] * (len(RUN_SECONDS_BUCKETS) + 1)
        for seconds, _ in self.runs.finished.values():
            per_bucket[bisect.bisect_left(RUN_SECONDS_BUCKETS, seconds)] += 1
        bounds = [*(str(float(bound)) for bound in RUN_SECONDS_BUCKETS), "+Inf"]
        cumulative = [(bound, sum(per_bucket[: index + 1])) for index, bound in enumerate(bounds)]
        total = sum(seconds for seconds, _ in self.runs.finished.values())
        return HistogramMetricFamily("keepreading_digest_run_seconds", "Digest runs by time from creation to finish",
                                     buckets=cumulative, sum_value=total)

    def last_run(self) -> list:
        if self.runs.last_finished is None:
            return []
        finished_at, seconds = self.runs.last_finished
        age = GaugeMetricFamily("keepreading_digest_last_finished_age_seconds", "Seconds since the last digest run finished")
        age.add_metric([], max(0.0, time.time() - finished_at))
        took = GaugeMetricFamily("keepreading_digest_last_run_seconds", "How long the last finished digest run took")
        took.add_metric([], seconds)
        return [age, took]

    def subscriber_events(self, now):
        family = CounterMetricFamily("keepreading_subscriber_events", "Subscriber changes by kind (signup, confirmed, ...)",
                                     labels=["kind"])
        kept, moving = self.events.counts(now)
        for kind in SUBSCRIBER_EVENTS:
            family.add_metric([kind], kept[(kind,)] + moving[(kind,)])
        return family


def posts():
    family = GaugeMetricFamily("keepreading_posts", "Posts by visibility and state", labels=["visibility", "published"])
    for visibility, published, count in db.session.execute(
            select(Post.visibility, Post.published, func.count()).group_by(Post.visibility, Post.published)):
        family.add_metric([visibility, str(bool(published)).lower()], count)
    return family


def subscribers():
    family = GaugeMetricFamily("keepreading_subscribers", "Subscribers by status", labels=["status"])
    for status, count in db.session.execute(select(Subscriber.status, func.count()).group_by(Subscriber.status)):
        family.add_metric([status], count)
    return family
