"""Signup and double opt-in, end to end and under abuse: what readers, the database and the mailbox see."""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import time_machine
from sqlalchemy import select

from service import create_app, tasks
from service.extensions import db
from service.models import Event, OutboxEmail
from service.publishing import publication

from .conftest import BASE_URL
from .helpers import (
    Reader,
    csrf_token,
    link_to,
    links_in,
    outbox_rows,
    subscriber,
    wait_outbox_sent,
)

SUBSCRIBED = b"Check your inbox to confirm your subscription."


def test_whole_flow_from_article_to_full_text(client, admin, mailbox, worker, app):
    post = admin.publish(title="Tides", body="The first paragraph.\n\n<!--more-->\n\nThe hidden ending.")
    article = f"/p/{post['slug']}"
    assert b"The hidden ending." not in client.get(article).data

    reader = Reader(client, "ada@example.org", mailbox)
    answer = reader.subscribe(next_url=article)
    assert answer.status_code == 200 and SUBSCRIBED in answer.data

    [mail] = reader.mails(1)
    assert mail.message["Subject"].startswith("Confirm your subscription")
    assert mail.message.get_content_type() == "multipart/alternative"
    confirm = link_to(mail.text, "/confirm/")
    assert confirm in mail.html.replace("&amp;", "&") or link_to(mail.html, "/confirm/") == confirm

    page = client.get(confirm)
    assert page.status_code == 200 and b"Confirm my subscription" in page.data
    assert subscriber(app, "ada@example.org").status == "pending"  # GET changed nothing

    done = reader.press_button(confirm)
    assert done.status_code == 303 and done.headers["Location"] == article
    row = subscriber(app, "ada@example.org")
    assert row.status == "confirmed" and row.digest_watermark == row.confirmed_at
    assert b"The hidden ending." in client.get(article).data

    welcome = reader.mails(2)[1]
    assert welcome.message["Subject"].startswith("Welcome")


def test_every_mail_carries_one_click_unsubscribe(client, mailbox, worker):
    reader = Reader(client, "headers@example.org", mailbox)
    reader.subscribe()
    [mail] = reader.mails(1)
    unsubscribe = mail.message["List-Unsubscribe"]
    assert unsubscribe.startswith(f"<{BASE_URL}/unsubscribe/")
    assert mail.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail.message["List-Id"]
    assert link_to(mail.text, "/unsubscribe/") == unsubscribe[1:-1][len(BASE_URL):]
    assert "/unsubscribe/" in mail.html


def test_the_answer_never_reveals_membership(client, app):
    known = {"pending@example.org": "pending", "confirmed@example.org": "confirmed",
             "left@example.org": "unsubscribed"}
    for email, status in known.items():
        Reader(client, email, ip="192.0.2.50").subscribe()
        _set_status(app, email, status)
    for json in (False, True):
        answers = []
        with time_machine.travel(datetime.now(timezone.utc), tick=False):  # one minute in "ask again after HH:MM"
            for number, email in enumerate([*known, "new@example.org"]):
                reader = Reader(client, email, ip=f"198.51.100.{number + (10 if json else 0)}")
                answers.append(reader.subscribe_json() if json else reader.subscribe())
        first = answers[0]
        for answer in answers:
            assert (answer.status_code, answer.data) == (first.status_code, first.data)
            assert "Set-Cookie" not in answer.headers
            assert sorted(answer.headers.keys()) == sorted(first.headers.keys())


def test_list_bombing_sends_one_email(client, mailbox, worker, app):
    for number in range(20):
        answer = Reader(client, "target@example.org", ip=f"203.0.113.{number + 1}").subscribe()
        assert answer.status_code == 200 and SUBSCRIBED in answer.data
    Reader(client, "TARGET@Example.org", ip="203.0.113.200").subscribe()  # same mailbox, other spelling
    assert len(outbox_rows(app)) == 1
    wait_outbox_sent(app)
    assert len(mailbox.wait_for(1)) == 1
    assert len(mailbox.to("target@example.org")) == 1


def test_one_confirmation_per_cooldown(client, app):
    with time_machine.travel(datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc), tick=False) as clock:
        reader = Reader(client, "patient@example.org", ip="192.0.2.77")
        reader.subscribe()
        clock.shift(timedelta(minutes=9))
        reader.subscribe()
        assert len(outbox_rows(app, "confirm")) == 1
        clock.shift(timedelta(minutes=2))
        reader.subscribe()
        assert len(outbox_rows(app, "confirm")) == 2


def test_address_rate_limit_counts_tagged_addresses_together(client, app):
    app.config["CONFIRM_COOLDOWN"] = 0
    for number in range(8):
        Reader(client, f"sam+{number}@example.org", ip=f"203.0.113.{number + 1}").subscribe()
    assert len(outbox_rows(app)) == 3  # ADDRESS_RATE_LIMIT: 3 mails a day for the mailbox sam@example.org


def test_honeypot_stores_and_sends_nothing(client, app):
    answer = Reader(client, "bot@example.org").subscribe(website="http://spam.example")
    assert answer.status_code == 200 and SUBSCRIBED in answer.data
    json = Reader(client, "bot2@example.org").subscribe_json(website="x")
    assert json.status_code == 200 and json.get_json()["ok"] is True
    assert subscriber(app, "bot@example.org") is None and subscriber(app, "bot2@example.org") is None
    assert outbox_rows(app) == []


def test_rate_limit_per_ip_on_every_entry_point(client, app):
    limit = 10  # SIGNUP_RATE_LIMIT 10/minute
    for number in range(limit):
        entry = [lambda r: r.subscribe(), lambda r: r.subscribe_json(), lambda r: r.subscribe(embed="1")][number % 3]
        assert entry(Reader(client, f"r{number}@example.org", ip="192.0.2.99")).status_code == 200
    assert Reader(client, "one-more@example.org", ip="192.0.2.99").subscribe().status_code == 429
    json = Reader(client, "json@example.org", ip="192.0.2.99").subscribe_json()
    assert json.status_code == 429 and json.get_json()["error"] == "too_many_requests"
    form = client.get("/signin")
    signin = client.post("/signin", data={"email": "x@example.org", "csrf_token": csrf_token(form.data)},
                         environ_base={"REMOTE_ADDR": "192.0.2.99"})
    assert signin.status_code == 429
    assert Reader(client, "elsewhere@example.org", ip="192.0.2.100").subscribe().status_code == 200


BAD_EMAILS = ["", "   ", "plainaddress", "a@b", "@example.org", "ada@", "ada@@example.org", "a..b@example.org",
              "ada@example..org", "ada@-example.org", "ada@localhost", "ada@example.test", "ada example@example.org",
              "ü@example.org", "x" * 65 + "@example.org", "a@" + "b" * 250 + ".org", "ada@[127.0.0.1]"]


@pytest.mark.parametrize("email", BAD_EMAILS)
def test_bad_email_gets_a_message_next_to_the_field(client, app, email):
    answer = Reader(client, email).subscribe()
    assert answer.status_code == 422
    assert b'id="subscribe-error"' in answer.data and b'aria-invalid="true"' in answer.data
    json = Reader(client, email, ip="192.0.2.11").subscribe_json()
    assert json.status_code == 422 and json.get_json()["field"] == "email" and json.get_json()["message"]
    assert outbox_rows(app) == []


def test_non_string_json_fields_are_rejected(client):
    answer = client.post("/subscribe", json={"email": ["a@example.org"]}, headers={"Accept": "application/json"})
    assert answer.status_code == 422 and answer.get_json()["field"] == "email"
    answer = client.post("/subscribe", json=["a@example.org"], headers={"Accept": "application/json"})
    assert answer.status_code == 422


def test_email_is_normalised(client, app):
    Reader(client, "  Ada.Lovelace@BÜCHER.Example  ").subscribe()
    row = subscriber(app, "ada.lovelace@xn--bcher-kva.example")
    assert row is not None and row.status == "pending"


@pytest.mark.parametrize("field, value", [
    ("email", "ada@example.org\r\nBcc: victim@example.org"),
    ("email", "ada@example.org\n"),
    ("name", "Ada\r\nBcc: victim@example.org"),
    ("next", "/p/x\r\nSet-Cookie: a=b"),
])
def test_cr_lf_in_any_field_is_rejected(client, app, field, value):
    fields = {"email": "ada@example.org", "name": "Ada", "next": "/", field: value}
    answer = client.post("/subscribe", json=fields, headers={"Accept": "application/json"})
    assert answer.status_code == 422 and answer.get_json()["field"] == field
    assert subscriber(app, "ada@example.org") is None


def test_an_oversized_field_is_named_and_kept_and_a_huge_body_is_413(client, app):
    """Issue 10.10: a form larger than the app's body limit is still read: the answer names the field that is
    too long and keeps what was typed. Only a body past what any form needs is refused whole."""
    huge = "a" * (70 * 1024) + "@example.org"
    answer = client.post("/subscribe", data={"email": huge})
    assert answer.status_code == 422
    page = answer.get_data(as_text=True)
    assert 'aria-invalid="true"' in page and f'value="{huge}"' in page and "too long" in page
    json = client.post("/subscribe", json={"email": huge}, headers={"Accept": "application/json"})
    assert json.status_code == 422 and json.get_json()["field"] == "email"
    enormous = "a" * (300 * 1024)
    assert client.post("/subscribe", data={"email": enormous}).status_code == 413
    answer = client.post("/subscribe", json={"email": enormous}, headers={"Accept": "application/json"})
    assert answer.status_code == 413 and answer.get_json()["error"] == "request_entity_too_large"
    assert outbox_rows(app) == []


def test_blocked_domains_are_refused(client, app):
    with app.app_context():
        publication.update({"blocked_domains": ["spam.example"]})
    answer = Reader(client, "x@mail.spam.example").subscribe_json()
    assert answer.status_code == 422 and "domain" in answer.get_json()["message"]
    assert Reader(client, "x@example.org").subscribe_json().status_code == 200


def test_consent_data_is_stored(client, app):
    client.post("/subscribe", data={"email": "consent@example.org", "next": "/p/tides"},
                headers={"User-Agent": "TestBrowser/1.0", "Referer": "http://localhost/p/tides"},
                environ_base={"REMOTE_ADDR": "192.0.2.33"})
    row = subscriber(app, "consent@example.org")
    assert row.consent_at is not None and row.consent_ip == "192.0.2.33"
    assert row.consent_user_agent == "TestBrowser/1.0" and row.consent_source == "http://localhost/p/tides"


OPEN_REDIRECTS = [
    ("/p/tides", "/p/tides"), ("/account?tab=1", "/account?tab=1"),
    ("//evil.example", "/"), ("/\\evil.example", "/"), ("/%09/evil.example", "/"), ("/%2F/evil.example", "/"),
    ("https://evil.example/", "/"), ("http:evil.example", "/"), ("javascript:alert(1)", "/"),
    ("JaVaScRiPt:alert(1)", "/"), ("evil.example", "/"), ("/%5Cevil.example", "/"), ("", "/"),
    ("\\\\evil.example", "/"),
]


@pytest.mark.parametrize("next_url, landing", OPEN_REDIRECTS)
def test_confirm_redirects_only_to_same_site_paths(client, app, next_url, landing):
    token = _confirm_token(app, "redirect@example.org", next_url)
    done = Reader(client, "redirect@example.org").press_button(f"/confirm/{token}")
    assert done.status_code == 303 and done.headers["Location"] == landing


def test_host_header_never_reaches_a_link(client, mailbox, worker, app):
    answer = client.post("/subscribe", data={"email": "spoof@example.org"}, base_url="http://evil.example",
                         headers={"X-Forwarded-Host": "evil2.example", "X-Forwarded-Proto": "https"})
    assert answer.status_code == 200 and b"evil" not in answer.data
    [mail] = Reader(client, "spoof@example.org", mailbox).mails(1)
    links = links_in(mail.text) + links_in(mail.html) + [mail.message["List-Unsubscribe"][1:-1]]
    assert links and all(link.startswith(BASE_URL + "/") for link in links)
    assert b"evil" not in mail.raw


def test_names_are_escaped_in_pages_and_mails(client, mailbox, worker, app):
    name = "<script>alert(1)</script> {{ config }}"
    reader = Reader(client, "escape@example.org", mailbox)
    assert reader.subscribe_json(name=name).status_code == 200
    [mail] = reader.mails(1)
    assert "<script>" not in mail.html and "&lt;script&gt;" in mail.html
    assert "{{ config }}" in mail.text and "SECRET_KEY" not in mail.text and "SECRET_KEY" not in mail.html
    assert "<script>" in mail.message["To"] or "script" in str(mail.message["To"])
    reader.confirm_from_mail()
    account = client.get("/account")
    assert b"<script>alert(1)</script>" not in account.data and b"&lt;script&gt;" in account.data
    assert b"{{ config }}" in account.data and b"test-secret-key" not in account.data


def test_get_on_confirm_and_unsubscribe_changes_nothing(client, app):
    token = _confirm_token(app, "scanner@example.org", "/")
    for _ in range(3):
        assert client.get(f"/confirm/{token}").status_code == 200
        assert client.head(f"/confirm/{token}").status_code == 200
    assert subscriber(app, "scanner@example.org").status == "pending"
    _set_status(app, "scanner@example.org", "confirmed")
    unsubscribe = _unsubscribe_token(app, "scanner@example.org")
    page = client.get(f"/unsubscribe/{unsubscribe}")
    assert page.status_code == 200 and b"Unsubscribe" in page.data and b"/account" in page.data
    assert subscriber(app, "scanner@example.org").status == "confirmed"


def test_one_click_unsubscribe_as_a_mail_provider_sends_it(app):
    _set_status(app, "leaver@example.org", "confirmed", create=True)
    token = _unsubscribe_token(app, "leaver@example.org")
    provider = app.test_client(use_cookies=False)
    answer = provider.post(f"/unsubscribe/{token}", data="List-Unsubscribe=One-Click",
                           content_type="application/x-www-form-urlencoded")
    assert answer.status_code == 200 and "Location" not in answer.headers
    assert subscriber(app, "leaver@example.org").status == "unsubscribed"
    again = provider.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"},
                          content_type="multipart/form-data")
    assert again.status_code == 200
    with app.app_context():
        kinds = db.session.scalars(select(Event.kind).where(Event.kind == "unsubscribed")).all()
    assert kinds == ["unsubscribed"]
    assert provider.post("/unsubscribe/not-a-token", data="List-Unsubscribe=One-Click").status_code == 400


def test_resubscribing_goes_through_double_opt_in(client, app):
    _set_status(app, "back@example.org", "unsubscribed", create=True)
    Reader(client, "back@example.org").subscribe()
    assert subscriber(app, "back@example.org").status == "unsubscribed"
    assert [row.kind for row in outbox_rows(app)] == ["confirm"]


def test_confirmed_reader_signing_up_again_gets_a_sign_in_link(client, app):
    _set_status(app, "known@example.org", "confirmed", create=True)
    Reader(client, "known@example.org").subscribe(next_url="/p/tides")
    [row] = outbox_rows(app)
    assert row.kind == "signin" and row.data == {"next": "/p/tides"}


def test_replaying_a_confirm_link_does_nothing_harmful(client, app):
    token = _confirm_token(app, "twice@example.org", "/")
    reader = Reader(client, "twice@example.org")
    assert reader.press_button(f"/confirm/{token}").status_code == 303
    first = subscriber(app, "twice@example.org").confirmed_at
    replay = client.get(f"/confirm/{token}")  # the link is spent: it neither confirms nor signs in again
    assert replay.status_code == 400 and b"already been used" in replay.data
    assert client.post(f"/confirm/{token}", data={"csrf_token": csrf_token(replay.data)}).status_code == 400
    assert subscriber(app, "twice@example.org").confirmed_at == first
    assert [row.kind for row in outbox_rows(app)] == ["welcome"]


def test_confirm_post_needs_the_pages_csrf_token(client, app):
    token = _confirm_token(app, "csrf@example.org", "/")
    assert client.post(f"/confirm/{token}").status_code == 400
    assert subscriber(app, "csrf@example.org").status == "pending"


def test_broker_down_at_signup_mail_goes_out_when_it_is_back(app, mailbox, worker, backend):
    down = create_app({"TESTING": True, "BROKER_URL": "redis://127.0.0.1:9/0", "RATELIMIT_KEY_PREFIX": f"kr-down-{uuid.uuid4().hex}"})
    try:
        started = time.monotonic()
        answer = down.test_client().post("/subscribe", data={"email": "outage@example.org"})
        assert answer.status_code == 200 and SUBSCRIBED in answer.data
        assert time.monotonic() - started < 3  # no waiting on the dead broker
    finally:
        with down.app_context():
            db.session.remove()
            for engine in db.engines.values():
                engine.dispose()
    [row] = outbox_rows(app)
    assert row.sent_at is None and row.error.startswith("not queued")
    assert mailbox.to("outage@example.org") == []

    app.extensions["celery"].set_current()  # the broker is back
    with app.app_context():
        tasks.flush_outbox.delay()
    wait_outbox_sent(app)
    [mail] = mailbox.wait_for(1)
    assert mail.to == "outage@example.org" and "/confirm/" in mail.text


def test_a_claimed_outbox_email_is_sent_once(app, mailbox):
    from service.mail import outbox

    _set_status(app, "once@example.org", "pending", create=True)
    with app.app_context():
        row = OutboxEmail(kind="confirm", subscriber_id=subscriber(app, "once@example.org").id, data={})
        db.session.add(row)
        db.session.commit()
        assert outbox.send(row.id) is True
        assert outbox.send(row.id) is False
    assert len(mailbox.wait_for(1)) == 1


def test_smtp_refusals_retry_later_or_give_up(app, mailbox):
    from service.mail import outbox

    mailbox.faults.refuse_first_attempt.add("later@example.org")
    mailbox.faults.by_recipient["gone@example.org"] = "550 5.1.1 no such user"
    # Frozen at the real time: a session worker may run the task flush() queues, and must see the same leases.
    with time_machine.travel(datetime.now(timezone.utc), tick=False) as clock:
        later, gone = (_queued_confirm(app, email) for email in ("later@example.org", "gone@example.org"))
        with app.app_context():
            assert outbox.send(later) is False and outbox.send(gone) is False
            assert outbox.flush() == 0  # the 4xx waits out its back-off; the 5xx is given up
            clock.shift(timedelta(minutes=2, seconds=1))
            assert outbox.flush() == 1
            assert outbox.send(later) is True
    assert [m.to for m in mailbox.wait_for(1)] == ["later@example.org"]
    rows = {row.id: row for row in outbox_rows(app)}
    assert rows[gone].sent_at is None and rows[gone].error.startswith("550")


def _queued_confirm(app, email: str) -> int:
    _set_status(app, email, "pending", create=True)
    with app.app_context():
        row = OutboxEmail(kind="confirm", subscriber_id=subscriber(app, email).id, data={})
        db.session.add(row)
        db.session.commit()
        return row.id


# --- helpers for this module: set up rows and tokens directly ---

def _set_status(app, email: str, status: str, create: bool = False) -> None:
    from service.models import Subscriber, utcnow

    with app.app_context():
        row = db.session.scalar(select(Subscriber).where(Subscriber.email == email))
        if row is None and create:
            row = Subscriber(email=email, name="", status="pending", frequency="default")
            db.session.add(row)
        row.status = status
        if status == "confirmed":
            row.confirmed_at = row.digest_watermark = utcnow()
        db.session.commit()


def _confirm_token(app, email: str, next_url: str) -> str:
    from service import tokens

    _set_status(app, email, "pending", create=True)
    with app.app_context():
        row = subscriber(app, email)
        return tokens.make("confirm", row, next_url, row.link_epoch)


def _unsubscribe_token(app, email: str) -> str:
    from service import tokens

    with app.app_context():
        return tokens.make("unsubscribe", subscriber(app, email))
