"""A reader's own account: magic-link sign-in, settings, export, delete, sign out; all behind CSRF."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from service import tokens
from service.extensions import db
from service.models import Event, OutboxEmail, Subscriber, utcnow

from .conftest import wait_until
from .helpers import Reader, csrf_token, link_to, outbox_rows, subscriber


def add_reader(app, email="reader@example.org", status="confirmed", name="Reader") -> int:
    with app.app_context():
        now = utcnow()
        row = Subscriber(email=email, name=name, status=status, frequency="default", consent_at=now,
                         consent_ip="192.0.2.1", consent_source="http://localhost/p/x",
                         confirmed_at=now if status == "confirmed" else None)
        db.session.add(row)
        db.session.commit()
        return row.id


def signed_in(client, app, email="reader@example.org") -> Reader:
    reader_id = add_reader(app, email)
    with app.app_context():
        row = db.session.get(Subscriber, reader_id)
        token = tokens.make("signin", row, "/account", row.link_epoch)
    reader = Reader(client, email)
    done = reader.sign_in(f"/signin/{token}")
    assert done.status_code == 303 and done.headers["Location"] == "/account"
    return reader


def test_account_needs_a_signed_in_reader(client):
    answer = client.get("/account")
    assert answer.status_code == 302 and answer.headers["Location"].startswith("/signin?next=")
    assert client.post("/account", data={"action": "export"}).status_code == 400  # no session, no CSRF token


def test_magic_link_sign_in_end_to_end(client, app, mailbox, worker):
    add_reader(app, "returning@example.org")
    form = client.get("/signin?next=/p/tides")
    assert b'value="/p/tides"' in form.data
    answer = client.post("/signin", data={"email": "Returning@Example.org", "next": "/p/tides",
                                          "csrf_token": csrf_token(form.data)})
    assert answer.status_code == 200 and b"Check your inbox" in answer.data
    reader = Reader(client, "returning@example.org", mailbox)
    [mail] = reader.mails(1)
    link = link_to(mail.text, "/signin/")
    assert mail.message["List-Unsubscribe"]

    page = client.get(link)
    assert page.status_code == 200 and "kr_reader" not in page.headers.get("Set-Cookie", "")
    done = client.post(link, data={"csrf_token": csrf_token(page.data)})
    assert done.status_code == 303 and done.headers["Location"] == "/p/tides"
    cookie = done.headers["Set-Cookie"]
    assert "kr_reader=" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Max-Age=31536000" in cookie and "Secure" not in cookie  # BASE_URL is http in the tests
    assert b'href="/account">Account' in client.get("/").data


def test_sign_in_request_does_not_reveal_membership(client, app, mailbox, worker):
    add_reader(app, "member@example.org")
    form = client.get("/signin")
    answers = [client.post("/signin", data={"email": email, "csrf_token": csrf_token(form.data)})
               for email in ("member@example.org", "stranger@example.org")]
    assert answers[0].status_code == answers[1].status_code == 200
    assert answers[0].data == answers[1].data
    wait_until(lambda: [row.kind for row in outbox_rows(app)] == ["signin"] and outbox_rows(app)[0].sent_at,
               message="the worker did not answer both requests")
    assert [mail.to for mail in mailbox.wait_for(1)] == ["member@example.org"]


def test_nav_offers_sign_in_to_strangers(client):
    assert b'href="/signin">Sign in' in client.get("/").data


def test_save_name_and_frequency(client, app):
    reader = signed_in(client, app)
    answer = reader.account_post(action="save", name="Ada L.", frequency="daily")
    assert answer.status_code == 303
    row = subscriber(app, "reader@example.org")
    assert (row.name, row.frequency) == ("Ada L.", "daily")
    page = client.get("/account")
    assert b"Your settings are saved." in page.data and b'value="daily" selected' in page.data


@pytest.mark.parametrize("fields, field", [
    ({"name": "Ada", "frequency": "hourly"}, "frequency"),
    ({"name": "Ada\r\nBcc: x@example.org", "frequency": "weekly"}, "name"),
    ({"name": "x" * 201, "frequency": "weekly"}, "name"),
])
def test_invalid_settings_are_shown_on_the_account_page(client, app, fields, field):
    reader = signed_in(client, app)
    answer = reader.account_post(action="save", **fields)
    assert answer.status_code == 422 and b'class="error"' in answer.data and b"Your account" in answer.data
    assert subscriber(app, "reader@example.org").frequency == "default"


def test_account_forms_need_the_csrf_token(client, app):
    signed_in(client, app)
    for action in ("save", "delete", "signout", "export"):
        answer = client.post("/account", data={"action": action, "name": "Mallory", "frequency": "off",
                                               "confirm": "yes"})
        assert answer.status_code == 400
    row = subscriber(app, "reader@example.org")
    assert row is not None and row.name == "Reader" and row.frequency == "default"


def test_download_my_data(client, app):
    reader = signed_in(client, app)
    answer = reader.account_post(action="export")
    assert answer.status_code == 200 and answer.mimetype == "application/json"
    assert "attachment" in answer.headers["Content-Disposition"]
    assert "private" in answer.headers["Cache-Control"]
    data = json.loads(answer.data)
    assert data["email"] == "reader@example.org" and data["name"] == "Reader" and data["status"] == "confirmed"
    assert data["consent"]["ip"] == "192.0.2.1" and data["consent"]["source"] == "http://localhost/p/x"


def test_delete_my_data(client, app):
    reader = signed_in(client, app)
    with app.app_context():
        reader_id = subscriber(app, "reader@example.org").id
        db.session.add(OutboxEmail(kind="welcome", subscriber_id=reader_id, data={}))
        db.session.commit()
        unsubscribe = tokens.make("unsubscribe", db.session.get(Subscriber, reader_id))
    refused = reader.account_post(action="delete")
    assert refused.status_code == 422 and subscriber(app, "reader@example.org") is not None

    answer = reader.account_post(action="delete", confirm="yes")
    assert answer.status_code == 200 and b"Your data is deleted" in answer.data
    assert "kr_reader=;" in answer.headers["Set-Cookie"]
    assert subscriber(app, "reader@example.org") is None
    assert outbox_rows(app) == []  # queued mail went with the row
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Event).where(Event.subscriber_id.is_not(None))) == 0
        assert db.session.scalar(select(Event.data).where(Event.kind == "deleted")) == {"from": "confirmed"}
    one_click = app.test_client(use_cookies=False).post(f"/unsubscribe/{unsubscribe}",
                                                         data="List-Unsubscribe=One-Click",
                                                         content_type="application/x-www-form-urlencoded")
    assert one_click.status_code == 200
    assert client.get("/account").status_code == 302


def test_sign_out(client, app):
    reader = signed_in(client, app)
    answer = reader.account_post(action="signout")
    assert answer.status_code == 303 and "kr_reader=;" in answer.headers["Set-Cookie"]
    assert client.get("/account").status_code == 302
