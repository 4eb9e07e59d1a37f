"""Confirmation and sign-in links work once (a GET page never spends one), die when the reader leaves, and
only a confirmation sent after a fresh signup brings a reader who left back."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from service.extensions import db
from service.mail import links, outbox
from service.models import OutboxEmail, Subscriber, utcnow
from service.readers.access import COOKIE

from .conftest import BASE_URL
from .flows import (
    account_email_shown,
    confirmed_subscriber,
    mailed_link,
    request_signin,
    session_cookie,
    status_of,
)
from .helpers import Reader, csrf_token


def refused(app, link: str) -> None:
    """A fresh browser follows the link: the page says it is spent, and its button signs nobody in."""
    browser = app.test_client()
    page = browser.get(link)
    assert page.status_code == 400 and b"already been used" in page.data, page.data
    pressed = browser.post(link, data={"csrf_token": csrf_token(page.data)})
    assert pressed.status_code == 400 and browser.get_cookie(COOKIE) is None
    assert account_email_shown(browser) is None


def one_click_unsubscribe(app, path: str) -> None:
    """What a mail provider does with List-Unsubscribe: POST, no cookie."""
    answer = app.test_client(use_cookies=False).post(path, data="List-Unsubscribe=One-Click",
                                                      content_type="application/x-www-form-urlencoded")
    assert answer.status_code == 200


def unsubscribe_path(mail) -> str:
    return mail.message["List-Unsubscribe"].strip("<>")[len(BASE_URL):]


def test_a_sign_in_link_signs_in_once(app, client, mailbox, worker):
    with app.app_context():
        confirmed_subscriber("once@example.org")
    reader = Reader(client, "once@example.org", mailbox)
    request_signin(reader, next_url="/account")
    link = mailed_link(reader, "/signin/", 1)
    for _ in range(3):  # a mail scanner fetching the page spends nothing
        assert app.test_client().get(link).status_code == 200
    done = reader.press_button(link)
    assert done.status_code == 303 and done.headers["Location"] == "/account" and session_cookie(client)
    refused(app, link)


def test_a_confirmation_link_confirms_once_and_never_after_leaving(app, client, mailbox, worker):
    reader = Reader(client, "twice@example.org", mailbox)
    reader.subscribe()
    link = mailed_link(reader, "/confirm/", 1)
    assert reader.press_button(link).status_code == 303 and status_of(app, "twice@example.org") == "confirmed"
    refused(app, link)
    one_click_unsubscribe(app, unsubscribe_path(reader.mails(1)[0]))
    assert status_of(app, "twice@example.org") == "unsubscribed"
    refused(app, link)
    assert status_of(app, "twice@example.org") == "unsubscribed"


def test_an_unused_confirmation_dies_when_the_reader_leaves_and_a_new_signup_brings_them_back(
        app, client, mailbox, worker):
    reader = Reader(client, "back@example.org", mailbox)
    reader.subscribe()
    first = mailed_link(reader, "/confirm/", 1)
    one_click_unsubscribe(app, unsubscribe_path(reader.mails(1)[0]))
    refused(app, first)
    assert status_of(app, "back@example.org") == "unsubscribed"

    with app.app_context():  # an hour later (past the confirmation cooldown) they subscribe again
        left_at = db.session.scalar(select(Subscriber.unsubscribed_at).where(Subscriber.email == "back@example.org"))
        db.session.execute(update(Subscriber).where(Subscriber.email == "back@example.org")
                           .values(last_confirmation_at=utcnow() - timedelta(hours=1)))
        db.session.commit()
    reader.subscribe()
    second = mailed_link(reader, "/confirm/", 2)
    refused(app, first)
    assert reader.press_button(second).status_code == 303
    row = db_row(app, "back@example.org")
    assert row.status == "confirmed" and row.consent_at > left_at  # consent recorded anew before confirming


def test_a_confirmation_mailed_after_leaving_without_a_new_signup_does_not_bring_the_reader_back(app, mailbox):
    """A confirmation queued before the reader left (say the broker was down) goes out after: it must not work."""
    with app.app_context():
        reader = Subscriber(email="queued@example.org", status="pending", frequency="default",
                            consent_at=utcnow() - timedelta(minutes=20))
        db.session.add(reader)
        db.session.flush()
        queued = OutboxEmail(kind="confirm", subscriber_id=reader.id, data={"next": "/"})
        db.session.add(queued)
        db.session.commit()
        queued_id, leave = queued.id, links.unsubscribe_url(reader)[len(BASE_URL):]
    one_click_unsubscribe(app, leave)
    with app.app_context():
        assert outbox.send(queued_id) is True
    link = mailed_link(Reader(app.test_client(), "queued@example.org", mailbox), "/confirm/", 1)
    browser = app.test_client()
    assert browser.get(link).status_code == 400
    browser.post(link, data={"csrf_token": csrf_token(browser.get("/signin").data)})  # a form's token, any form
    assert status_of(app, "queued@example.org") == "unsubscribed" and browser.get_cookie(COOKIE) is None


def db_row(app, email: str) -> Subscriber:
    with app.app_context():
        row = db.session.scalar(select(Subscriber).where(Subscriber.email == email))
        db.session.expunge_all()
        return row


def test_a_spent_sign_in_link_offers_a_fresh_one(app, client, mailbox, worker):
    with app.app_context():
        confirmed_subscriber("again@example.org")
    reader = Reader(client, "again@example.org", mailbox)
    request_signin(reader)
    spent = mailed_link(reader, "/signin/", 1)
    assert reader.press_button(spent).status_code == 303
    later = app.test_client()  # another day, another browser: the old mail's link
    page = later.get(spent)
    assert page.status_code == 400 and b"Send me a fresh link" in page.data
    answer = later.post(f"/renew/signin/{spent.rsplit('/', 1)[1]}", data={"csrf_token": csrf_token(page.data)})
    assert answer.status_code == 200 and b"Check your inbox" in answer.data
    fresh = mailed_link(reader, "/signin/", 2)
    assert fresh != spent and Reader(later, reader.email).press_button(fresh).status_code == 303
    assert account_email_shown(later) == "again@example.org"
