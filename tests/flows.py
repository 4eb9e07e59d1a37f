"""Readers' journeys through the links they are mailed: sign-up, confirmation, sign-in, a digest's article links.

Every link comes out of a real email in the test mailbox (sent by the Celery worker, or by the digest batch run
in this process), so the tests that use these journeys hold whatever the tokens look like inside.
"""
from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select

from service.digests import runs, sending
from service.extensions import db
from service.models import Delivery, Subscriber, utcnow
from service.publishing import posts
from service.readers.access import COOKIE

from .conftest import BASE_URL
from .helpers import Reader, csrf_token, link_to, path_of

GATED_TAIL = "the keeper's private log"
ARTICLE_LINK = re.compile(re.escape(BASE_URL) + r"/p/[a-z0-9-]+\?t=[A-Za-z0-9_.-]+")


def publish_gated(title: str) -> str:
    """A published subscribers-only post whose tail says GATED_TAIL; its path."""
    with_tail = f"{title}: the opening, for everyone.\n\n<!--more-->\n\n{title}: {GATED_TAIL}."
    post = posts.create(title, with_tail, "subscribers", True)
    db.session.commit()
    return f"/p/{post.slug}"


def confirmed_subscriber(email: str, name: str = "") -> int:
    """A confirmed subscriber whose next digest carries every post published from an hour ago on."""
    hour_ago = utcnow() - timedelta(hours=1)
    row = Subscriber(email=email, name=name, status="confirmed", frequency="default", consent_at=hour_ago,
                     consent_ip="192.0.2.1", confirmed_at=hour_ago, digest_watermark=hour_ago)
    db.session.add(row)
    db.session.commit()
    return row.id


def digest_links(app, mailbox, email: str) -> list[str]:
    """Send a digest run in this process; the article links (paths with ?t=) in `email`'s digest."""
    with app.app_context():
        digest = runs.create_run(f"manual:{email}", None, utcnow())
        for first, last in runs.id_ranges(Delivery.digest_id == digest.id):
            sending.send_batch(digest.id, first, last)
    [mail] = [each for each in mailbox.wait_for(1) if each.to == email]
    return [path_of(url) for url in ARTICLE_LINK.findall(mail.text)]


def mailed_link(reader: Reader, prefix: str, count: int) -> str:
    """The `prefix` link (e.g. "/signin/") in the reader's `count`-th email, once it has arrived."""
    return link_to(reader.mails(count)[count - 1].text, prefix)


def request_signin(reader: Reader, next_url: str = "/") -> None:
    form = reader.client.get("/signin")
    answer = reader.client.post("/signin", data={"email": reader.email, "next": next_url,
                                                 "csrf_token": csrf_token(form.data)},
                                environ_base={"REMOTE_ADDR": reader.ip})
    assert answer.status_code == 200, answer.data


def signed_in_by_mail(reader: Reader, mails_before: int = 0) -> str:
    """Ask for a sign-in link, follow it from the inbox; the session cookie the browser got."""
    request_signin(reader)
    done = reader.press_button(mailed_link(reader, "/signin/", mails_before + 1))
    assert done.status_code == 303, done.data
    return session_cookie(reader.client)


def session_cookie(client) -> str:
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None and cookie.value, "the browser has no reader session"
    return cookie.value


def status_of(app, email: str) -> str | None:
    with app.app_context():
        status = db.session.scalar(select(Subscriber.status).where(Subscriber.email == email))
        db.session.rollback()
        return status


def account_email_shown(client) -> str | None:
    """Whose account /account opens in this browser (None: it asks to sign in)."""
    page = client.get("/account")
    if page.status_code != 200:
        return None
    found = re.search(r"Signed in as ([^\s<]+)", page.get_data(as_text=True))
    return found.group(1) if found else None
