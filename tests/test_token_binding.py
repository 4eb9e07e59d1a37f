"""Tokens die with their subscriber: a new row under a deleted row's id (SQLite reuses the highest id) and
address is a different person, whom none of the old tokens reach."""
from __future__ import annotations

from service.extensions import db
from service.models import Subscriber, utcnow
from service.readers.access import COOKIE

from .conftest import BASE_URL
from .flows import (
    GATED_TAIL,
    account_email_shown,
    confirmed_subscriber,
    digest_links,
    publish_gated,
    signed_in_by_mail,
    status_of,
)
from .helpers import Reader


def test_a_new_subscriber_under_an_old_id_inherits_none_of_its_tokens(app, client, backend, mailbox, worker):
    with app.app_context():
        publish_gated("Spring tides")
        old_id = confirmed_subscriber("shared@example.org")
    [link] = digest_links(app, mailbox, "shared@example.org")
    unsubscribe = mailbox.to("shared@example.org")[0].message["List-Unsubscribe"].strip("<>")[len(BASE_URL):]
    leaver = Reader(client, "shared@example.org", mailbox)
    cookie = signed_in_by_mail(leaver, mails_before=1)
    assert leaver.account_post(action="delete", confirm="yes").status_code == 200

    with app.app_context():  # later, the address (a shared or recycled mailbox) subscribes anew
        newcomer = Subscriber(email="shared@example.org", name="Someone else", status="confirmed",
                              frequency="default", consent_at=utcnow(), confirmed_at=utcnow())
        if backend.name == "postgresql":
            newcomer.id = old_id  # a sequence never hands an id out twice, but a restore or a reset can
        db.session.add(newcomer)
        db.session.commit()
        assert newcomer.id == old_id  # on SQLite, by itself: the deleted row had the highest id

    kept_cookie = app.test_client()
    kept_cookie.set_cookie(COOKIE, cookie)
    assert account_email_shown(kept_cookie) is None
    old_digest = app.test_client()
    assert GATED_TAIL not in old_digest.get(link).get_data(as_text=True)
    assert account_email_shown(old_digest) is None
    provider = app.test_client(use_cookies=False)
    provider.post(unsubscribe, data="List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded")
    assert status_of(app, "shared@example.org") == "confirmed"  # the old mail's unsubscribe is not theirs
