"""The dashboard's daily counts: rolled up from the event log, the outbox and finished runs, on both backends."""
from __future__ import annotations

import threading
from datetime import date, datetime, timedelta, timezone

import pytest
import time_machine
from sqlalchemy import func, insert, select

from service import tasks, tokens
from service.extensions import db
from service.models import DailyCount, Delivery, Digest, Event, Subscriber
from service.publishing import posts
from service.readers import subscriber_csv, subscriptions
from service.readers.subscriptions import Signup
from service.studio import stats

from .conftest import BASE_URL
from .test_query_budget import (
    counting,
)

UTC = timezone.utc
MONDAY = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def sign_up(email: str, source: str | None = None) -> int:
    subscriptions.subscribe(Signup(email=email, source=source, ip="192.0.2.1"))
    return subscriptions.find(email).id


def confirm(email: str) -> None:
    reader = subscriptions.find(email)
    subscriptions.confirm(tokens.make("confirm", reader, "/", reader.link_epoch))


def counts(metric: str) -> dict[tuple[date, str], int]:
    rows = db.session.execute(select(DailyCount.day, DailyCount.source, DailyCount.count)
                              .where(DailyCount.metric == metric))
    return {(day, source): number for day, source, number in rows}


def confirmed_in_database() -> int:
    return db.session.scalar(select(func.count()).select_from(Subscriber).where(Subscriber.status == "confirmed"))


@pytest.mark.parametrize("raw, expected", [
    (None, ""),
    ("", ""),
    ("import", "import"),
    (f"{BASE_URL}/p/harbour-notes", "post:harbour-notes"),
    (f"{BASE_URL}/p/harbour-notes/?utm_source=x#more", "post:harbour-notes"),
    (f"{BASE_URL}/p/caf%C3%A9", "post:café"),
    (f"{BASE_URL}/", "archive"),
    (f"{BASE_URL}", "archive"),
    (f"{BASE_URL}/signin?next=/", "site"),
    ("HTTPS://Blog.Example/2026/03/a-post?ref=1", "web:https://blog.example"),
    ("https://blog.example:8443/x", "web:https://blog.example:8443"),
    ("javascript:alert(1)", ""),
    ("not a url", ""),
])
def test_a_signup_source_is_normalised_to_a_post_a_page_or_an_origin(raw, expected):
    assert stats.normalise_source(raw, BASE_URL) == expected


def test_signups_and_confirmations_are_attributed_to_the_post_or_origin(app):
    with app.app_context():
        slug = posts.create("Harbour notes", "Words.", "subscribers", True).slug
        article = f"{BASE_URL}/p/{slug}"
        sign_up("ada@example.org", article)
        sign_up("bob@example.org", article + "?utm_source=mastodon")
        sign_up("cy@example.org", "https://blog.example/2026/a-post")
        sign_up("dee@example.org")
        confirm("ada@example.org")
        confirm("cy@example.org")
        stats.roll_up()
        board = stats.dashboard()

    today = board.days[-1]
    assert board.series["signups"][-1] == 4 and board.series["confirmations"][-1] == 2
    assert board.confirmed == 2 and board.change(7) == 2 and board.confirmation_rate == 0.5
    by_key = {source.key: source for source in board.sources}
    assert (by_key[f"post:{slug}"].signups, by_key[f"post:{slug}"].confirmations) == (2, 1)
    assert by_key[f"post:{slug}"].label == "Harbour notes" and by_key[f"post:{slug}"].url == f"/p/{slug}"
    assert (by_key["web:https://blog.example"].signups, by_key["web:https://blog.example"].confirmations) == (1, 1)
    assert (by_key[""].signups, by_key[""].confirmations) == (1, 0)
    assert board.sources[0].confirmations == 1 and board.sources[-1].key == ""
    with app.app_context():
        assert counts("signups") == {(today, f"post:{slug}"): 2, (today, "web:https://blog.example"): 1,
                                     (today, ""): 1}


def test_the_confirmed_total_follows_every_status_change_over_several_days(app):
    with app.app_context():
        with time_machine.travel(MONDAY, tick=False):
            for name in ("ada", "bob", "cy", "dee", "eve"):
                sign_up(f"{name}@example.org")
                confirm(f"{name}@example.org")
            subscriber_csv.import_text("email,status\nimp1@example.org,confirmed\nimp2@example.org,pending\n")
        with time_machine.travel(MONDAY + timedelta(days=1), tick=False):
            subscriptions.unsubscribe(tokens.make("unsubscribe", subscriptions.find("bob@example.org")))
            subscriptions.mark_bounced(subscriptions.find("cy@example.org").id, "550 no such user")
        with time_machine.travel(MONDAY + timedelta(days=2), tick=False):
            subscriptions.erase(subscriptions.find("dee@example.org"))
            sign_up("bob@example.org")  # came back: a new signup (fresh consent), then its confirmation
            confirm("bob@example.org")
            subscriptions.erase(subscriptions.find("imp2@example.org"))  # a pending one leaving changes nothing
        stats.roll_up(MONDAY + timedelta(days=2, hours=1))
        board = stats.dashboard(today=(MONDAY + timedelta(days=2)).date())
        assert board.confirmed == confirmed_in_database() == 4
        assert board.subscribers[-3:] == [6, 4, 4]
        assert board.series["unsubscribes"][-2] == 1 and board.series["bounces"][-2] == 1
        assert board.series["erasures"][-1] == 2 and board.series["imports"][-3] == 2
        assert board.change(1) == 0 and board.change(7) == 4
        assert board.totals["confirmations"] == 6 and board.totals["signups"] == 5


def test_rolling_up_again_changes_nothing_and_a_run_is_counted_once(app):
    finished = MONDAY + timedelta(hours=2)
    with app.app_context():
        reader_ids = [sign_up(f"r{n}@example.org") for n in range(5)]
        digest = Digest(slot="manual:test", cutoff=MONDAY, created_at=MONDAY, finished_at=finished)
        db.session.add(digest)
        db.session.flush()
        db.session.execute(insert(Delivery), [
            {"digest_id": digest.id, "subscriber_id": reader_id, "status": "sent" if n < 4 else "failed",
             "attempts": 1, "sent_at": MONDAY + timedelta(hours=1) if n < 4 else None}
            for n, reader_id in enumerate(reader_ids)])
        db.session.commit()
        stats.roll_up(finished + timedelta(minutes=5))  # within RUN_GRACE: not yet
        assert counts("digests_sent") == {}
        for _ in range(3):
            stats.roll_up(finished + timedelta(minutes=11))
        assert counts("digests_sent") == {(MONDAY.date(), ""): 4}
        assert counts("digests_failed") == {(MONDAY.date(), ""): 1}
        assert sum(counts("signups").values()) == 5


def test_a_late_commit_is_counted_while_its_day_is_open_and_a_closed_day_stays_frozen(app):
    def late_event(at: datetime) -> None:  # as a long transaction (a big import) commits it: stamped earlier
        db.session.add(Event(kind="signup", created_at=at, data={}))
        db.session.commit()

    with app.app_context():
        late_event(MONDAY)
        stats.roll_up(MONDAY + timedelta(hours=2))
        late_event(MONDAY + timedelta(hours=1))
        stats.roll_up(MONDAY + timedelta(hours=3))
        assert counts("signups") == {(MONDAY.date(), ""): 2}
        stats.roll_up(MONDAY + timedelta(days=1, hours=3))  # Monday ended more than GRACE ago: closed
        late_event(MONDAY + timedelta(hours=4))
        stats.roll_up(MONDAY + timedelta(days=1, hours=4))
        assert counts("signups") == {(MONDAY.date(), ""): 2}


def test_two_roll_ups_at_once_count_a_run_once(app, backend):
    finished = MONDAY + timedelta(hours=2)
    with app.app_context():
        reader_id = sign_up("ada@example.org")
        digest = Digest(slot="manual:race", cutoff=MONDAY, created_at=MONDAY, finished_at=finished)
        db.session.add(digest)
        db.session.flush()
        db.session.add(Delivery(digest_id=digest.id, subscriber_id=reader_id, status="sent", attempts=1,
                                sent_at=MONDAY + timedelta(hours=1)))
        db.session.commit()
    start, failures = threading.Barrier(2), []

    def roll_up():
        with app.app_context():
            start.wait()
            try:
                stats.roll_up(finished + timedelta(hours=1))
            except Exception as error:  # reported below, on the test's thread
                failures.append(error)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=roll_up) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    with app.app_context():
        assert counts("digests_sent") == {(MONDAY.date(), ""): 1}


def test_transactional_mail_is_counted_by_kind_when_sent(app, own_queue):
    with app.app_context():
        sign_up("ada@example.org")
        from service.mail import outbox
        from service.models import OutboxEmail

        [row] = db.session.scalars(select(OutboxEmail)).all()
        assert outbox.send(row.id)
        stats.roll_up()
        board = stats.dashboard()
    assert board.series["emails_sent"][-1] == 1 and board.mails_sent[-1] == 1
    with app.app_context():
        assert list(counts("emails_sent").values()) == [1] and list(counts("emails_sent"))[0][1] == "confirm"


def test_the_beat_task_rolls_up(app, own_queue):
    with app.app_context():
        sign_up("ada@example.org")
    result = tasks.roll_up_stats.apply().get()
    assert result["rows"] == 1
    with app.app_context():
        assert sum(counts("signups").values()) == 1


def seed_history(readers: int, days: int = 60, end: datetime = MONDAY) -> None:
    """`readers` confirmed subscribers, each with a signup and a confirmation event spread over the `days` days
    before `end`."""
    start = end - timedelta(days=days)
    rows = [{"email": f"h{n}@example.com", "name": "", "status": "confirmed", "frequency": "default",
             "created_at": start + timedelta(days=n % days), "confirmed_at": start + timedelta(days=n % days),
             "consent_source": f"https://site{n % 7}.example/page{n}"} for n in range(readers)]
    db.session.execute(insert(Subscriber), rows)
    ids = db.session.scalars(select(Subscriber.id).order_by(Subscriber.id)).all()
    events = [{"kind": kind, "subscriber_id": reader_id, "created_at": start + timedelta(days=n % days), "data": {}}
              for n, reader_id in enumerate(ids) for kind in ("signup", "confirmed")]
    db.session.execute(insert(Event), events)
    db.session.commit()


def test_the_dashboard_costs_the_same_few_statements_whatever_the_history(app, backend):
    statements = {}
    for readers in (20, 2000):
        with app.app_context():
            backend.clean()
            seed_history(readers)
            stats.roll_up(MONDAY)
            with counting() as tally:
                board = stats.dashboard(today=MONDAY.date())
            assert board.confirmed == readers
            statements[readers] = len(tally.statements)
    assert statements[20] == statements[2000] <= 4, statements
