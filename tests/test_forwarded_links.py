"""A digest forwarded to someone else: its links open their articles (and read for a day), never the account,
and never replace the session of a reader who is signed in."""
from __future__ import annotations

from datetime import timedelta

import time_machine
from sqlalchemy import select

from service.extensions import db
from service.models import Subscriber, utcnow

from .flows import (
    GATED_TAIL,
    account_email_shown,
    confirmed_subscriber,
    digest_links,
    publish_gated,
    session_cookie,
    signed_in_by_mail,
    status_of,
)
from .helpers import Reader


def forwarded_digest(app, mailbox, email="owner@example.org") -> tuple[str, str, str]:
    """Two gated posts and `email`'s digest: (the first post's link, that post's path, the other post's path)."""
    with app.app_context():
        linked, other = publish_gated("Low water"), publish_gated("Night watch")
        confirmed_subscriber(email)
    links = digest_links(app, mailbox, email)
    [link] = [each for each in links if each.startswith(linked + "?")]
    return link, linked, other


def test_a_forwarded_link_opens_its_article_but_never_the_account(app, mailbox):
    link, linked, _ = forwarded_digest(app, mailbox)
    friend = app.test_client()
    page = friend.get(link)
    assert page.status_code == 200 and GATED_TAIL in page.get_data(as_text=True)
    assert account_email_shown(friend) is None
    assert friend.get("/account").headers["Location"].startswith("/signin")
    assert b'href="/account">Account' not in friend.get(linked).data
    for action in ("export", "delete", "signout", "save"):  # no account, so no form and no way past its CSRF
        assert friend.post("/account", data={"action": action, "confirm": "yes"}).status_code in (302, 400)
    assert status_of(app, "owner@example.org") == "confirmed"


def test_a_replayed_link_still_never_opens_the_account(app, mailbox):
    link, _, _ = forwarded_digest(app, mailbox)
    friend = app.test_client()
    with time_machine.travel(utcnow() + timedelta(days=20), tick=False):
        assert GATED_TAIL in friend.get(link).get_data(as_text=True)  # the article, for the link's 30 days
        assert account_email_shown(friend) is None


def test_the_reading_pass_of_a_link_lasts_a_day(app, mailbox):
    """Browsing on from a digest link reads other gated posts for a while, then the archive asks to sign in."""
    link, _, other = forwarded_digest(app, mailbox)
    app.extensions["page_memory"].seconds = 0  # the frozen clock below must be what decides
    friend = app.test_client()
    with time_machine.travel(utcnow(), tick=False) as clock:
        friend.get(link)
        assert GATED_TAIL in friend.get(other).get_data(as_text=True)
        clock.shift(timedelta(hours=25))
        assert GATED_TAIL not in friend.get(other).get_data(as_text=True)
        assert account_email_shown(friend) is None


def test_a_link_never_replaces_the_signed_in_readers_session(app, client, mailbox, worker):
    """Login CSRF: someone else's link (in a page, a mail, an image) must not swap the reader's session."""
    link, linked, _ = forwarded_digest(app, mailbox, "mallory@example.org")
    with app.app_context():
        confirmed_subscriber("ada@example.org")
    ada = Reader(client, "ada@example.org", mailbox)
    before = signed_in_by_mail(ada)
    page = client.get(link)
    assert page.status_code == 200 and GATED_TAIL in page.get_data(as_text=True)
    assert session_cookie(client) == before
    assert account_email_shown(client) == "ada@example.org"


def test_a_link_for_a_reader_who_left_opens_nothing(app, mailbox):
    link, _, _ = forwarded_digest(app, mailbox)
    with app.app_context():
        owner = db.session.scalar(select(Subscriber).where(Subscriber.email == "owner@example.org"))
        owner.status = "unsubscribed"
        db.session.commit()
    friend = app.test_client()
    assert GATED_TAIL not in friend.get(link).get_data(as_text=True)
