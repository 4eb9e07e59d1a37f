"""Signed links: one purpose each, max_age checked on a frozen clock, key rotation, tampering refused."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import time_machine
from sqlalchemy import select

from service import tokens
from service.errors import InvalidToken, TokenExpired
from service.extensions import db
from service.models import Subscriber

from .helpers import Reader, csrf_token, outbox_rows, subscriber

START = datetime(2026, 5, 4, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def ada(app):
    with app.app_context():
        row = Subscriber(email="ada@example.org", name="Ada", status="pending", frequency="default")
        db.session.add(row)
        db.session.commit()
        return row.id


def make(app, purpose: str, subscriber_id: int, *extra) -> str:
    """A token as the app mints it: confirm and sign-in links carry a next URL and the reader's link epoch."""
    with app.app_context():
        row = db.session.get(Subscriber, subscriber_id)
        if purpose in ("confirm", "signin"):
            extra = (*(extra or ("/",)), row.link_epoch)
        return tokens.make(purpose, row, *extra)


def verify(app, purpose: str, token: str) -> list:
    with app.app_context():
        return tokens.verify(purpose, token)


def rotate(app, new_key: str, keep_old: bool) -> None:
    old = app.config["SECRET_KEY"]
    app.config["SECRET_KEY"] = new_key
    app.config["SECRET_KEY_FALLBACKS"] = [old] if keep_old else []
    app.extensions.pop("keepreading_serializers", None)


def test_round_trip_carries_id_and_fingerprint_not_the_email(app, ada):
    token = make(app, "confirm", ada, "/p/x")
    payload = verify(app, "confirm", token)
    assert payload[0] == ada and payload[2] == "/p/x" and "ada@example.org" not in payload


@pytest.mark.parametrize("damage", [
    lambda t: t[:-1],
    lambda t: t[: len(t) // 2],
    lambda t: t[:-2] + ("AA" if t[-2:] != "AA" else "BB"),
    lambda t: "x" + t,
    lambda t: t.replace(".", "", 1),
    lambda t: "",
    lambda t: "....",
    lambda t: "%00",
])
def test_tampered_or_truncated_tokens_are_invalid(app, ada, damage):
    token = make(app, "confirm", ada)
    with pytest.raises(InvalidToken) as caught:
        verify(app, "confirm", damage(token))
    assert not isinstance(caught.value, TokenExpired)


@pytest.mark.parametrize("made_for, used_for", [
    ("confirm", "signin"), ("signin", "confirm"), ("unsubscribe", "confirm"),
    ("confirm", "unsubscribe"), ("reader", "signin"), ("article", "confirm"),
])
def test_a_token_for_one_purpose_never_works_for_another(app, ada, made_for, used_for):
    with pytest.raises(InvalidToken):
        verify(app, used_for, make(app, made_for, ada))


def test_cross_purpose_link_is_refused_by_the_route(client, app, ada):
    unsubscribe = make(app, "unsubscribe", ada)
    assert client.get(f"/confirm/{unsubscribe}").status_code == 400
    assert client.get(f"/signin/{unsubscribe}").status_code == 400
    assert subscriber(app, "ada@example.org").status == "pending"


@pytest.mark.parametrize("purpose, max_age", [("confirm", timedelta(hours=48)), ("signin", timedelta(hours=1))])
def test_links_expire_on_a_frozen_clock(app, ada, purpose, max_age):
    with time_machine.travel(START, tick=False) as clock:
        token = make(app, purpose, ada)
        clock.shift(max_age - timedelta(seconds=1))
        assert verify(app, purpose, token)[0] == ada
        clock.shift(timedelta(seconds=2))
        with pytest.raises(TokenExpired) as caught:
            verify(app, purpose, token)
        assert caught.value.payload[0] == ada


def test_unsubscribe_links_never_expire(app, ada):
    with time_machine.travel(START, tick=False) as clock:
        token = make(app, "unsubscribe", ada)
        clock.shift(timedelta(days=3 * 365))
        assert verify(app, "unsubscribe", token)[0] == ada


def test_expired_confirm_link_offers_a_fresh_one(client, app, ada):
    with time_machine.travel(START, tick=False) as clock:
        token = make(app, "confirm", ada, "/p/tides")
        clock.shift(timedelta(hours=49))
        page = client.get(f"/confirm/{token}")
        assert page.status_code == 400 and b"This link has expired" in page.data
        assert subscriber(app, "ada@example.org").status == "pending"
        fresh = client.post(f"/renew/confirm/{token}", data={"csrf_token": csrf_token(page.data)})
        assert fresh.status_code == 200 and b"Check your inbox" in fresh.data
        [row] = outbox_rows(app)
        assert row.kind == "confirm" and row.data == {"next": "/p/tides"}
        expired_post = client.post(f"/confirm/{token}", data={"csrf_token": csrf_token(page.data)})
        assert expired_post.status_code == 400 and subscriber(app, "ada@example.org").status == "pending"


def test_rotated_key_keeps_old_links_working(client, app, ada):
    token = make(app, "confirm", ada)
    rotate(app, "a-brand-new-secret-key-0123456789", keep_old=True)
    assert verify(app, "confirm", token)[0] == ada
    assert Reader(client, "ada@example.org").press_button(f"/confirm/{token}").status_code == 303
    fresh = make(app, "confirm", ada)
    rotate(app, "yet-another-secret-key-0123456789", keep_old=False)
    with pytest.raises(InvalidToken):
        verify(app, "confirm", fresh)


def test_a_token_dies_when_the_email_changes(client, app, ada):
    token = make(app, "confirm", ada)
    with app.app_context():
        db.session.scalar(select(Subscriber).where(Subscriber.id == ada)).email = "new@example.org"
        db.session.commit()
    assert client.get(f"/confirm/{token}").status_code == 400


def test_a_token_for_an_erased_subscriber_is_invalid(client, app, ada):
    token = make(app, "signin", ada)
    with app.app_context():
        db.session.delete(db.session.get(Subscriber, ada))
        db.session.commit()
    assert client.get(f"/signin/{token}").status_code == 400


def test_a_minter_signs_what_make_signs(app, ada):
    """The digest's fast path (key derived once, timestamp once a second) gives tokens `verify` takes."""
    with app.app_context(), time_machine.travel(START, tick=False):
        row = db.session.get(Subscriber, ada)
        fingerprint = tokens.email_fingerprint(row.email, row.token_key)
        minted = tokens.Minter("article")(ada, fingerprint, 3)
        assert minted == tokens.make("article", row, 3)
        assert tokens.verify("article", minted) == [ada, fingerprint, 3]
