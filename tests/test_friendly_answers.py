"""What a reader sees when something is refused (issue 10.10): when to try again, a way to a new link, and only
errors about fields the page shows."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
import time_machine

from service.extensions import db
from service.models import Subscriber, utcnow

from .helpers import Reader, outbox_rows

START = datetime(2026, 3, 2, 9, 0, 30, tzinfo=timezone.utc)


def test_a_rate_limited_reader_is_told_when_to_try_again(client):
    with time_machine.travel(START, tick=False):
        for number in range(10):  # SIGNUP_RATE_LIMIT 10/minute
            assert Reader(client, f"r{number}@example.org", ip="192.0.2.99").subscribe().status_code == 200
        page = Reader(client, "one-more@example.org", ip="192.0.2.99").subscribe()
        assert page.status_code == 429 and page.mimetype == "text/html"
        assert 1 <= int(page.headers["Retry-After"]) <= 60
        text = page.get_data(as_text=True)
        assert 'class="masthead"' in text and "Please try again later" in text
        assert "try again after 09:02 UTC (in 1 minute)" in text and "per 1 minute" not in text
        json = Reader(client, "json@example.org", ip="192.0.2.99").subscribe_json()
        assert json.status_code == 429 and json.headers["Retry-After"] == page.headers["Retry-After"]
        assert json.get_json()["retry_after"] == int(page.headers["Retry-After"])
        assert "09:02 UTC" in json.get_json()["message"]


@pytest.mark.parametrize("path, form_action", [
    ("/confirm/not-a-token", 'action="/subscribe"'),
    ("/signin/not-a-token", 'action="/signin"'),
    ("/unsubscribe/not-a-token", 'action="/signin"'),
])
def test_a_link_that_does_not_work_offers_the_form_for_a_new_one(client, path, form_action):
    page = client.get(path)
    assert page.status_code == 400
    text = page.get_data(as_text=True)
    assert "This link does not work" in text and form_action in text and 'name="email"' in text


def test_errors_about_fields_the_form_does_not_show_are_never_shown(client, app):
    """The archive's form has an email field only: a 1,000-character name (or a broken `next`) posted with it
    subscribes without them; the JSON endpoint still names the field."""
    archive = client.get("/").get_data(as_text=True)
    assert 'name="name"' not in archive
    answer = client.post("/subscribe", data={"email": "quiet@example.org", "name": "n" * 1000, "next": "/\r\nx"})
    assert answer.status_code == 200 and b"Check your inbox" in answer.data
    assert b"name must be" not in answer.data and b"next must be" not in answer.data
    with app.app_context():
        row = db.session.query(Subscriber).filter_by(email="quiet@example.org").one()
        assert row.name == ""
    json = Reader(client, "loud@example.org").subscribe_json(name="n" * 1000)
    assert json.status_code == 422 and json.get_json()["field"] == "name"


def test_an_oversized_name_on_the_account_page_is_named_and_kept(client, app):
    from .test_account import signed_in

    reader = signed_in(client, app)
    answer = reader.account_post(action="save", name="N" * 100_000, frequency="weekly")
    assert answer.status_code == 422
    assert b"name must be at most 200 characters" in answer.data and b'value="' + b"N" * 100_000 in answer.data


def test_a_signup_held_back_by_the_cooldown_says_when_to_ask_again_in_the_same_words_for_everyone(client, app):
    with app.app_context():
        db.session.add_all([Subscriber(email="known@example.org", status="confirmed", confirmed_at=utcnow()),
                            Subscriber(email="waiting@example.org", status="pending", last_confirmation_at=START)])
        db.session.commit()
    with time_machine.travel(START, tick=False) as clock:
        first = Reader(client, "new@example.org", ip="198.51.100.1").subscribe()
        answers = [Reader(client, email, ip=f"198.51.100.{number + 2}").subscribe()
                   for number, email in enumerate(["new@example.org", "known@example.org", "waiting@example.org",
                                                   "never-seen@example.org"])]
        for answer in [first, *answers]:
            assert answer.data == first.data
        assert b"you can ask again after 09:11 UTC" in first.data
        assert [row.kind for row in outbox_rows(app)] == ["confirm", "signin", "confirm"]  # the second "new" held back
        clock.move_to(datetime(2026, 3, 2, 9, 11, tzinfo=timezone.utc))
        Reader(client, "new@example.org", ip="198.51.100.9").subscribe()
        assert [row.kind for row in outbox_rows(app)].count("confirm") == 3  # the promise holds
    json = Reader(client, "new@example.org", ip="198.51.100.10").subscribe_json().get_json()
    assert "you can ask again after" in json["message"]
