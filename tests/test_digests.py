"""Digests: cadence on a frozen clock, idempotence, the email as received, signed article links, spam score."""
from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from email.utils import parseaddr, parsedate_to_datetime

import pytest
import time_machine
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select, update

from service import tasks, tokens
from service.digests import journal as send_journal
from service.digests import runs, sending
from service.digests.message import Body, quoted_printable
from service.extensions import db
from service.mail import transports
from service.models import Delivery, Digest, Post, Subscriber, utcnow
from service.publishing import posts, publication

from .conftest import BASE_URL, need_server, wait_until

UTC = timezone.utc


# --- helpers ---

def seed(count: int, prefix: str = "reader", since: datetime | None = None, **fields) -> list[int]:
    """Confirmed subscribers inserted in bulk, their watermark in the past; their ids."""
    since = since or utcnow() - timedelta(days=30)
    rows = [{"email": f"{prefix}{index}@example.com", "name": "", "status": "confirmed", "frequency": "default",
             "created_at": since, "confirmed_at": since, "digest_watermark": since, **fields}
            for index in range(count)]
    for start in range(0, count, 1000):
        db.session.execute(insert(Subscriber), rows[start:start + 1000])
    db.session.commit()
    return list(db.session.scalars(select(Subscriber.id).where(Subscriber.email.like(f"{prefix}%"))
                                   .order_by(Subscriber.id)))


def publish_at(moment: datetime, title: str, visibility: str = "subscribers"):
    with time_machine.travel(moment, tick=False):
        return posts.create(title, f"{title}: words for the teaser.\n\n<!--more-->\n\nThe rest, for subscribers.", visibility, True)


def configure(**settings) -> None:
    row = publication.settings()
    for name, value in settings.items():
        setattr(row, name, value)
    db.session.commit()


def delivered(digest_id: int) -> dict[str, list[str]]:
    """email -> titles of the posts in that reader's delivery of this run."""
    digest = db.session.get(Digest, digest_id)
    rows = db.session.execute(select(Subscriber.email, Delivery.since).join_from(Delivery, Subscriber)
                              .where(Delivery.digest_id == digest_id))
    return {email: [post.title for post in posts_in(since, digest.cutoff)] for email, since in rows}


def posts_in(since, cutoff) -> list[Post]:
    """The rule, stated on its own: a delivery carries the posts published in (since, cutoff], newest first."""
    query = select(Post).where(Post.published.is_(True), Post.published_at <= cutoff)
    if since is not None:
        query = query.where(Post.published_at > since)
    return list(db.session.scalars(query.order_by(Post.published_at.desc(), Post.id.desc())))


def wait_settled(digest_id: int, timeout: float = 60) -> dict:
    return wait_until(lambda: (s := runs.settle(digest_id))["finished_at"] and s, timeout,
                      f"digest {digest_id} not settled")


def per_recipient(mailbox) -> Counter:
    with mailbox.lock:
        return Counter(message.to for message in mailbox.messages)


# --- cadence ---

def test_cadence_across_days_and_a_dst_change(app):
    """New York, 08:00 local, weekly on Mondays; DST starts Sunday 8 March 2026 (08:00 EST = 13:00 UTC,
    then 08:00 EDT = 12:00 UTC). Each reader gets exactly the posts since their last digest."""
    with app.app_context():
        configure(timezone="America/New_York", send_hour=8, send_weekday=0, default_frequency="weekly")
        confirmed = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
        for frequency in ("daily", "weekly", "default", "off"):
            seed(1, prefix=frequency, since=confirmed, frequency=frequency)
        late = seed(1, prefix="late", since=datetime(2026, 3, 5, 23, 0, tzinfo=UTC), frequency="daily")
        publish_at(datetime(2026, 3, 1, 12, 0, tzinfo=UTC), "P0 before anyone confirmed")
        plan = {
            datetime(2026, 3, 2, 15, 0, tzinfo=UTC): "P1",
            datetime(2026, 3, 4, 20, 0, tzinfo=UTC): "P2",
            datetime(2026, 3, 7, 14, 0, tzinfo=UTC): "P3",
            datetime(2026, 3, 8, 12, 30, tzinfo=UTC): "P4",  # 08:30 EDT: just after that day's digest
            datetime(2026, 3, 9, 11, 50, tzinfo=UTC): "P5",  # 07:50 EDT: just before
        }
        ticks = [datetime(2026, 3, 2, tzinfo=UTC) + timedelta(minutes=30 * step) for step in range(9 * 48)]
        created_runs = []
        for moment in sorted({*ticks, *plan}):
            if moment in plan:
                publish_at(moment, plan[moment], visibility="public" if plan[moment] == "P2" else "subscribers")
            created_runs += [(moment, digest_id) for digest_id in runs.schedule(moment)]

        created = {db.session.get(Digest, digest_id).slot: moment for moment, digest_id in created_runs}
        assert created["daily:2026-03-07"] == datetime(2026, 3, 7, 13, 0, tzinfo=UTC)  # EST
        assert created["daily:2026-03-08"] == datetime(2026, 3, 8, 12, 0, tzinfo=UTC)  # EDT
        assert created["weekly:2026-03-09"] == datetime(2026, 3, 9, 12, 0, tzinfo=UTC)
        assert sorted(created) == sorted([f"daily:2026-03-{day:02d}" for day in range(1, 11)]
                                         + ["weekly:2026-03-02", "weekly:2026-03-09"])

        received: dict[str, list[list[str]]] = {}
        for _moment, digest_id in created_runs:
            for email, titles in delivered(digest_id).items():
                received.setdefault(email.split("0@")[0], []).append(titles)
        assert received["daily"] == [["P1"], ["P2"], ["P3"], ["P5", "P4"]]
        assert received["weekly"] == [["P5", "P4", "P3", "P2", "P1"]]
        assert received["default"] == [["P5", "P4", "P3", "P2", "P1"]]  # follows the publisher: weekly
        assert received["late"] == [["P3"], ["P5", "P4"]]  # the first digest starts after confirmation
        assert "off" not in received
        assert db.session.get(Subscriber, late[0]).digest_watermark == datetime(2026, 3, 9, 12, 0, tzinfo=UTC)


def test_cadence_in_a_zone_ahead_of_utc(app):
    """Tokyo, 07:00 local = 22:00 UTC the day before; the publisher's default is daily."""
    with app.app_context():
        configure(timezone="Asia/Tokyo", send_hour=7, send_weekday=2, default_frequency="daily")
        seed(1, prefix="default", since=datetime(2026, 6, 1, tzinfo=UTC))
        publish_at(datetime(2026, 6, 2, 21, 0, tzinfo=UTC), "Q1")
        assert runs.schedule(datetime(2026, 6, 2, 21, 59, tzinfo=UTC)) == []
        first = runs.schedule(datetime(2026, 6, 2, 22, 0, tzinfo=UTC))
        assert [db.session.get(Digest, digest_id).slot for digest_id in first] == ["daily:2026-06-03", "weekly:2026-06-03"]
        assert delivered(first[0]) == {"default0@example.com": ["Q1"]}
        assert delivered(first[1]) == {}  # weekly readers only; nobody left with new posts either way
        assert runs.schedule(datetime(2026, 6, 3, 12, 0, tzinfo=UTC)) == []  # same local day
        publish_at(datetime(2026, 6, 3, 12, 0, tzinfo=UTC), "Q2")
        second = runs.schedule(datetime(2026, 6, 3, 22, 5, tzinfo=UTC))
        assert delivered(second[0]) == {"default0@example.com": ["Q2"]}


def test_an_hour_that_does_not_exist_or_comes_twice_sends_once(app):
    with app.app_context():
        configure(timezone="Europe/Berlin", send_hour=2, default_frequency="daily")
        row = publication.settings()
        # 29 March 2026: 02:00 local does not exist; the first later hour sends.
        assert runs.due_slots(row, datetime(2026, 3, 29, 0, 59, tzinfo=UTC)) == []
        assert runs.due_slots(row, datetime(2026, 3, 29, 1, 0, tzinfo=UTC)) == [("daily", "daily:2026-03-29")]
        # 25 October 2026: 02:00-03:00 local happens twice; the slot is the same, so one run.
        seed(1, prefix="night", since=datetime(2026, 10, 20, tzinfo=UTC))
        publish_at(datetime(2026, 10, 24, tzinfo=UTC), "R1")
        first = runs.schedule(datetime(2026, 10, 25, 0, 0, tzinfo=UTC))   # 02:00 CEST
        again = runs.schedule(datetime(2026, 10, 25, 1, 0, tzinfo=UTC))   # 02:00 CET
        assert len(first) == 1 and again == []


# --- idempotence ---

def test_digest_send_twice_mails_each_subscriber_once(app, runner, worker, mailbox):
    with app.app_context():
        ids = seed(30)
        posts.create("Tide tables", "Words.", "subscribers", True)
    first = runner.invoke(args=["digest", "send", "--wait", "--timeout", "60"])
    second = runner.invoke(args=["digest", "send", "--wait", "--timeout", "60"])
    print(first.output, second.output)
    assert first.exit_code == 0 and "sent 30, failed 0, skipped 0" in first.output
    assert second.exit_code == 0 and "0 recipients" in second.output
    counts = per_recipient(mailbox)
    assert len(counts) == len(ids) and set(counts.values()) == {1}


def test_two_dispatchers_at_once_create_one_run(app, worker, mailbox):
    with app.app_context():
        configure(timezone="UTC", send_hour=0, default_frequency="daily")
        ids = seed(200)
        posts.create("Two at once", "Words.", "subscribers", True)
    now, barrier, results, errors = utcnow(), threading.Barrier(4), [], []

    def dispatcher(manual: bool) -> None:
        try:
            with app.app_context():
                barrier.wait()
                results.append(runs.send_now().id if manual else runs.dispatch(now)["created"])
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=dispatcher, args=(manual,)) for manual in (False, False, True, True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with app.app_context():
        per_reader = Counter(db.session.scalars(select(Delivery.subscriber_id)))
        assert len(per_reader) == len(ids) and set(per_reader.values()) == {1}
        assert db.session.scalar(select(Digest.id).where(Digest.slot == f"daily:{now.date()}")) is not None
        for digest_id in db.session.scalars(select(Digest.id)).all():
            wait_settled(digest_id)
    mailbox.wait_for(len(ids))
    counts = per_recipient(mailbox)
    assert len(counts) == len(ids) and set(counts.values()) == {1}


def test_a_task_executed_twice_sends_nothing_twice(app, mailbox):
    with app.app_context():
        seed(20)
        posts.create("Twice", "Words.", "subscribers", True)
        digest = runs.create_run("manual:twice", None, utcnow())
        (first, last), = runs.id_ranges(Delivery.digest_id == digest.id)
        for _ in range(3):  # the real task body, run here three times: a redelivered or duplicated message
            tasks.send_digest_batch.apply(args=[digest.id, first, last]).get()
        assert runs.settle(digest.id)["counts"]["sent"] == 20
        assert set(db.session.scalars(select(Delivery.attempts))) == {1}
    counts = per_recipient(mailbox)
    assert len(counts) == 20 and set(counts.values()) == {1}


def test_the_redis_journal_keeps_only_hand_overs_in_flight(app, mailbox):
    """Once a batch has written its outcomes, its journal entries go: Redis does not grow with the list."""
    if not app.config["REDIS_URL"]:
        pytest.skip("the file journal (no Redis) is dropped with its run, not entry by entry")
    with app.app_context():
        seed(30)
        posts.create("Journal", "Words.", "subscribers", True)
        digest = runs.create_run("manual:journal", None, utcnow())
        (first, last), = runs.id_ranges(Delivery.digest_id == digest.id)
        journal = send_journal.for_run(digest)
        assert sending.send_batch(digest.id, first, last) is None
        assert journal.client.scard(journal.key) == 0
        assert runs.settle(digest.id)["counts"]["sent"] == 30


def test_unsubscribe_between_dispatch_and_send_gets_no_mail(app, worker, mailbox):
    with app.app_context():
        ids = seed(10)
        posts.create("Leaving", "Words.", "subscribers", True)
        digest = runs.create_run("manual:leaving", None, utcnow())
        db.session.execute(update(Subscriber).where(Subscriber.id == ids[3]).values(status="unsubscribed"))
        db.session.commit()
        runs.enqueue(digest.id)
        summary = wait_settled(digest.id)
        assert summary["counts"] == {"pending": 0, "sending": 0, "sent": 9, "failed": 0, "skipped": 1}
    counts = per_recipient(mailbox)
    assert "reader3@example.com" not in counts and len(counts) == 9


# --- the email as received ---

def _send_in_process(app, mailbox, subscribers: int = 1) -> list:
    digest = runs.create_run("manual:look", None, utcnow())
    for first, last in runs.id_ranges(Delivery.digest_id == digest.id):
        assert sending.send_batch(digest.id, first, last) is None
    return mailbox.wait_for(subscribers)


def test_headers_and_parts_as_received(app, mailbox, client):
    app.config["UNSUBSCRIBE_MAILTO"] = "leave@news.example.org"
    app.config["MAIL_FROM"] = "Café Harbour <digest@news.example.org>"
    with app.app_context():
        configure(name="Café Harbour")
        seed(1, name="Zoë \"Z\"\r\nBcc: victim@example.com")
        lead = publish_at(utcnow() - timedelta(minutes=5), "Knots & <b>ropes</b>")
        older = publish_at(utcnow() - timedelta(hours=2), "Lighthouses")
        subscriber = db.session.scalar(select(Subscriber))
        reader_id, reader_email, fingerprint = subscriber.id, subscriber.email, tokens.email_fingerprint(
            subscriber.email, subscriber.token_key)
        post_ids, slugs = [lead.id, older.id], [lead.slug, older.slug]
        received, = _send_in_process(app, mailbox)
    message = received.message
    assert received.to == reader_email
    assert message["From"].addresses[0].display_name == "Café Harbour"
    assert message["From"].addresses[0].domain == "news.example.org"
    assert message["To"].addresses[0].display_name == 'Zoë "Z" Bcc: victim@example.com'
    assert "Bcc" not in message and all("\r" not in v and "\n" not in v for v in message.values())
    assert message["Subject"] == "Café Harbour: Knots & <b>ropes</b> and 1 more new post"
    assert b"=?utf-8?" in received.raw.split(b"\r\n\r\n", 1)[0]  # RFC 2047 for the non-ASCII names
    assert abs(parsedate_to_datetime(message["Date"]) - utcnow()) < timedelta(minutes=5)
    assert parseaddr(message["Message-ID"])[1].endswith("@news.example.org")
    assert message["Precedence"] == "bulk" and message["Auto-Submitted"] == "auto-generated"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["List-Id"].endswith("<keepreading.localhost>")
    unsubscribe, mailto = [part.strip(" <>") for part in message["List-Unsubscribe"].split(",")]
    assert unsubscribe.startswith(f"{BASE_URL}/unsubscribe/") and mailto.startswith("mailto:leave@news.example.org")
    assert message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
    assert max(len(line) for line in received.raw.split(b"\r\n")) <= 998
    text, html = received.text, received.html
    assert "Knots &amp; &lt;b&gt;ropes&lt;/b&gt;</a></h2>" in html and "<b>ropes</b></a>" not in html  # autoescaped
    assert "<style" not in html and 'style="' in html  # CSS inlined
    assert "Zoë &quot;Z&quot; Bcc: victim@example.com" in html and "Hello Zoë" in text
    for body in (text, html):
        assert unsubscribe in body and f"{BASE_URL}/account" in body and "Read it on the web" in body
        assert "The rest, for subscribers." in body  # full text by default (issue 12)
    with app.app_context():
        links = re.findall(re.escape(BASE_URL) + r"/p/([a-z0-9-]+)\?t=([A-Za-z0-9_.-]+)", text)
        assert [slug for slug, _ in links] == slugs
        for (_slug, token), post_id in zip(links, post_ids, strict=True):
            assert tokens.verify("article", token) == [reader_id, fingerprint, post_id]
        assert tokens.verify("unsubscribe", unsubscribe.rsplit("/", 1)[1])[0] == reader_id
    page = client.get(f"/p/{links[0][0]}?t={links[0][1]}")
    assert b"The rest, for subscribers." in page.data


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lock-step"])
def test_refusals_in_the_envelope_pipelined_or_not(app, mailbox, pipelining):
    """MAIL/RCPT/DATA in one write when the server offers PIPELINING, one by one otherwise: either way a
    5xx fails its delivery, a 4xx leaves it for a retry, and the connection goes on for the others."""
    mailbox.pipelining = pipelining
    mailbox.faults.by_recipient["reader1@example.com"] = "550 5.1.1 no such user"
    mailbox.faults.refuse_first_attempt.add("reader3@example.com")
    with app.app_context():
        seed(6)
        posts.create("Envelope", "Words.", "subscribers", True)
        digest = runs.create_run("manual:envelope", None, utcnow())
        (first, last), = runs.id_ranges(Delivery.digest_id == digest.id)
        assert sending.send_batch(digest.id, first, last) is not None  # a retry is due for reader3
        statuses = dict(db.session.execute(select(Subscriber.email, Delivery.status)
                                           .join_from(Delivery, Subscriber)).all())
    assert statuses.pop("reader1@example.com") == "failed" and statuses.pop("reader3@example.com") == "pending"
    assert set(statuses.values()) == {"sent"}
    assert sorted(per_recipient(mailbox)) == sorted(statuses)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(alphabet=" .=\t\r\naé€x-" , max_size=120), st.sampled_from(["link0", "greeting"])),
                max_size=12),
       st.text(alphabet=" .=\taé€x", max_size=90))
def test_a_body_encoded_line_by_line_is_the_body_encoded_whole(chunks, value):
    """Digest bodies are quoted-printable encoded once, but for their slotted lines: the same bytes as
    encoding each reader's whole body, whatever the lines, dots, spaces, '=' and non-ASCII."""
    slot = re.compile("kr0([a-z0-9]+?)kr")
    rendered = "".join(f"kr0{chunk}kr" if chunk in ("link0", "greeting") else chunk for chunk in chunks)
    values = {"link0": value, "greeting": value[::-1]}
    whole = slot.sub(lambda match: values[match.group(1)], rendered.replace("\r\n", "\n").replace("\r", "\n"))
    assert Body(rendered, slot).encoded(values) == quoted_printable(whole)


def test_dot_stuffing_and_line_ends():
    assert transports._dot_stuffed(b".a\nb\r\n.c\rd") == b"..a\r\nb\r\n..c\r\nd\r\n"
    assert transports._dot_stuffed(b"a\r\n.\r\n..b\r\n") == b"a\r\n..\r\n...b\r\n"
    assert transports._dot_stuffed(b"plain") == b"plain\r\n"


def _spam_score(raw: bytes) -> float:
    if shutil.which("spamassassin") is None:
        need_server("spamassassin", "not installed (apt-get install spamassassin)")
    result = subprocess.run(["spamassassin", "-L", "-t"], input=raw, capture_output=True, timeout=120)
    status = re.search(rb"X-Spam-Status: \w+, score=(-?[\d.]+)(.*?)(?:\r?\n\S)", result.stdout, re.S)
    assert status, result.stdout[:2000] + result.stderr[:2000]
    print(f"SpamAssassin: score={status.group(1).decode()} {b' '.join(status.group(2).split()).decode()}")
    return float(status.group(1))


def test_digest_scores_at_most_zero_in_spamassassin(app, mailbox):
    with app.app_context():
        seed(1, name="Robin")
        posts.create("The harbour at low tide", "Mud flats, gulls and the old pier.\n\nMore for subscribers.",
                     "public", True)
        posts.create("Rope work", "A bowline, a clove hitch and a reef knot.\n\nMore for subscribers.",
                     "subscribers", True)
        received, = _send_in_process(app, mailbox)
    assert _spam_score(received.raw) <= 0


def test_confirmation_mail_scores_at_most_zero_in_spamassassin(client, worker, mailbox):
    response = client.post("/subscribe", data={"email": "newcomer@example.com", "next": "/", "website": ""})
    assert response.status_code < 400
    received, = mailbox.wait_for(1)
    assert "confirm" in received.text.lower()
    assert _spam_score(received.raw) <= 0


# --- signed article links ---

def test_signed_article_link_opens_the_article_with_a_reading_pass(app, client):
    with app.app_context():
        reader_id, = seed(1)
        post = publish_at(utcnow() - timedelta(hours=1), "Behind the wall")
        other = publish_at(utcnow() - timedelta(hours=2), "Another one")
        reader = db.session.get(Subscriber, reader_id)
        token = tokens.make("article", reader, post.id)
        wrong_post = tokens.make("article", reader, other.id)
        slug, other_slug = post.slug, other.slug
    full = b"The rest, for subscribers."
    page = client.get(f"/p/{slug}?t={token}")
    cookies = page.headers.get("Set-Cookie", "")
    assert full in page.data and "kr_pass=" in cookies and "kr_reader" not in cookies  # reads, is not signed in
    assert "private" in page.headers["Cache-Control"]
    assert full in client.get(f"/p/{other_slug}").data  # the reading pass

    anonymous = app.test_client()
    tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    for bad in (tampered, wrong_post, "nonsense"):
        page = anonymous.get(f"/p/{slug}?t={bad}")
        assert full not in page.data and b"Subscribe to keep reading" in page.data
        assert "kr_" not in page.headers.get("Set-Cookie", "")
        assert b"has expired" not in page.data

    with time_machine.travel(utcnow() + timedelta(days=31), tick=False):
        page = anonymous.get(f"/p/{slug}?t={token}")
    assert full not in page.data and b"has expired. Sign in to keep reading." in page.data
    assert b"/signin?next=" in page.data and "kr_" not in page.headers.get("Set-Cookie", "")


# --- the admin API ---

def test_api_lists_and_creates_runs(app, admin, worker, mailbox):
    with app.app_context():
        seed(3)
    admin.publish(title="Via the API")
    created = admin.post("/digests", json={})
    assert created.status_code == 202
    run = created.get_json()
    assert run["recipients"] == 3 and run["slot"].startswith("manual:")
    with app.app_context():
        wait_settled(run["id"])
    listed = admin.get("/digests").get_json()["digests"]
    assert listed[0]["id"] == run["id"] and listed[0]["counts"]["sent"] == 3 and listed[0]["finished_at"]
    assert admin.post("/digests", json={"frequency": "hourly"}).status_code == 422
    assert "/digests" in admin.get("/openapi.json").get_json()["paths"]
    assert admin.client.get("/api/v1/digests").status_code == 401
