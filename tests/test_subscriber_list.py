"""The publisher's list: keyset pages, search and filter, one subscriber's record, and the actions on it."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import insert, select

from service import tokens
from service.errors import Conflict, NotFound, ValidationError
from service.extensions import db
from service.models import Delivery, Digest, Event, OutboxEmail, Subscriber, utcnow
from service.readers import subscriber_csv, subscriber_list, subscriptions
from service.readers.subscriptions import Signup

from .test_query_budget import counting

STATUS_CYCLE = ("confirmed", "pending", "unsubscribed", "bounced")


def seed(count: int) -> list[int]:
    """Subscribers r0..r{count-1}, statuses in turn; their ids, oldest first."""
    rows = [{"email": f"r{n}@example.org", "name": f"Reader {n}", "status": STATUS_CYCLE[n % 4],
             "frequency": "default", "created_at": utcnow()} for n in range(count)]
    db.session.execute(insert(Subscriber), rows)
    db.session.commit()
    return list(db.session.scalars(select(Subscriber.id).order_by(Subscriber.id)))


def walk(**filters) -> list[int]:
    """Every id, following ?after= from the first page to the last."""
    seen, after = [], None
    while True:
        found = subscriber_list.page(after=after, size=7, **filters)
        seen += [row.id for row in found.subscribers]
        if found.older is None:
            return seen
        after = found.older


def test_keyset_pages_walk_the_whole_list_newest_first_and_back(app):
    with app.app_context():
        ids = seed(30)
        assert walk() == ids[::-1]
        assert walk(status="pending") == [i for n, i in enumerate(ids) if n % 4 == 1][::-1]
        second = subscriber_list.page(after=subscriber_list.page(size=7).older, size=7)
        back = subscriber_list.page(before=second.newer, size=7)
        assert [row.id for row in back.subscribers] == ids[::-1][:7] and back.newer is None
        assert subscriber_list.page(size=7).newer is None
        past_the_end = subscriber_list.page(after=ids[0], size=7)
        assert past_the_end.subscribers == [] and past_the_end.older is None and past_the_end.newer == ids[0]


def test_search_finds_addresses_by_their_start_from_a_to_z_and_wildcards_are_plain_text(app):
    with app.app_context():
        seed(30)
        db.session.add(Subscriber(email="per%cent_under@example.org", status="pending", frequency="default"))
        db.session.commit()
        assert [row.email for row in subscriber_list.page("R2").subscribers] == \
            [*(f"r{n}@example.org" for n in range(20, 30)), "r2@example.org"]
        assert [row.email for row in subscriber_list.page("per%c").subscribers] == ["per%cent_under@example.org"]
        assert subscriber_list.page("pe_").subscribers == subscriber_list.page("%").subscribers == []
        assert [row.email for row in subscriber_list.page("r2", status="unsubscribed").subscribers] == \
            ["r22@example.org", "r26@example.org", "r2@example.org"]
        with pytest.raises(ValidationError):
            subscriber_list.page(status="royalty")


def test_search_pages_continue_in_address_order(app):
    with app.app_context():
        seed(30)
        seen, after = [], None
        while True:
            found = subscriber_list.page("r1", after=after, size=4)
            seen += [row.email for row in found.subscribers]
            if found.older is None:
                break
            after = found.older
        assert seen == sorted(f"r{n}@example.org" for n in (1, *range(10, 20)))
        back = subscriber_list.page("r1", before=subscriber_list.page("r1", after=after, size=4).newer, size=4)
        assert [row.email for row in back.subscribers] == seen[-7:-3]


def test_a_deep_page_costs_one_statement_like_the_first(app):
    with app.app_context():
        ids = seed(400)
        with counting() as first:
            subscriber_list.page()
            subscriber_list.page(status="confirmed", search="r")
        with counting() as deep:
            newest = subscriber_list.page(after=ids[10])
            found = subscriber_list.page(status="confirmed", search="r", after=ids[300])
        assert len(first.statements) == len(deep.statements) == 2
        assert [row.id for row in newest.subscribers] == ids[:10][::-1]
        expected = sorted(f"r{n}@example.org" for n in range(0, 400, 4))
        assert [row.email for row in found.subscribers] == [e for e in expected if e > "r300@example.org"][:50]


def test_a_subscribers_record_holds_consent_events_deliveries_and_mail_in_five_statements(app):
    with app.app_context():
        subscriptions.subscribe(Signup(email="ada@example.org", source="http://localhost/p/x", ip="192.0.2.7",
                                       user_agent="Firefox"))
        ada = subscriptions.find("ada@example.org")
        subscriptions.confirm(tokens.make("confirm", ada, "/", ada.link_epoch))
        digests = [Digest(slot=f"manual:{n}", cutoff=utcnow(), created_at=utcnow()) for n in range(150)]
        db.session.add_all(digests)
        db.session.flush()
        db.session.execute(insert(Delivery), [{"digest_id": digest.id, "subscriber_id": ada.id, "status": "sent",
                                               "attempts": 1, "sent_at": utcnow()} for digest in digests])
        db.session.commit()
        ada_id, last_run = ada.id, digests[-1].id
        db.session.expunge_all()
        with counting() as tally:
            found = subscriber_list.record(ada_id)
            assert found.subscriber.consent_ip == "192.0.2.7" and found.subscriber.consent_source == "http://localhost/p/x"
            assert [event.kind for event in found.events] == ["confirmed", "signup"]
            assert len(found.deliveries) == subscriber_list.RECENT and found.delivery_counts == {"sent": 150}
            assert found.deliveries[0].run == last_run and found.deliveries[0].status == "sent"
            assert [email.kind for email in found.emails] == ["welcome", "confirm"]
        assert len(tally.statements) == 5
        with pytest.raises(NotFound):
            subscriber_list.record(ada_id + 1000)


def test_the_publisher_unsubscribes_erases_and_resends(app):
    with app.app_context():
        for email in ("ada@example.org", "bob@example.org", "cy@example.org"):
            subscriptions.subscribe(Signup(email=email))
        ada, bob, cy = (subscriptions.find(f"{name}@example.org").id for name in ("ada", "bob", "cy"))
        row = db.session.get(Subscriber, ada)
        subscriptions.confirm(tokens.make("confirm", row, "/", row.link_epoch))

        assert subscriptions.unsubscribe_for_publisher(ada).status == "unsubscribed"
        assert db.session.scalars(select(Event.data).where(Event.subscriber_id == ada, Event.kind == "unsubscribed")
                                  ).one() == {"from": "confirmed", "by": "publisher"}
        with pytest.raises(Conflict):
            subscriptions.unsubscribe_for_publisher(ada)

        with pytest.raises(Conflict, match="less than 10 minutes"):  # the signup's confirmation just went
            subscriptions.resend_confirmation(bob)
        db.session.execute(Subscriber.__table__.update().where(Subscriber.id == bob)
                           .values(last_confirmation_at=utcnow() - timedelta(hours=1)))
        db.session.commit()
        subscriptions.resend_confirmation(bob)
        assert len(db.session.scalars(select(OutboxEmail).where(OutboxEmail.subscriber_id == bob,
                                                                OutboxEmail.kind == "confirm")).all()) == 2
        assert db.session.scalar(select(Event.kind).where(Event.subscriber_id == bob).order_by(Event.id.desc()).limit(1)) \
            == "confirmation_resent"
        with pytest.raises(Conflict, match="this one is unsubscribed"):
            subscriptions.resend_confirmation(ada)

        subscriptions.erase_for_publisher(cy)
        assert db.session.get(Subscriber, cy) is None
        assert db.session.scalar(select(Event.subscriber_id).where(Event.kind == "deleted")) is None
        with pytest.raises(NotFound):
            subscriptions.erase_for_publisher(cy)


def test_the_export_streams_the_same_file_in_chunks(app):
    with app.app_context():
        seed(3000)
        chunks = list(subscriber_csv.export_chunks())
        assert len(chunks) > 1 and "".join(chunks) == subscriber_csv.export_text()


def test_the_api_pages_by_keyset_and_still_by_number(admin, app):
    with app.app_context():
        ids = seed(25)
    first = admin.get("/subscribers?per_page=10").get_json()
    assert first["total"] == 25 and first["next_after"] == ids[-10]
    walked, answer = [s["id"] for s in first["subscribers"]], first
    while answer["next_after"] is not None:
        answer = admin.get(f"/subscribers?per_page=10&after={answer['next_after']}").get_json()
        assert "total" not in answer
        walked += [s["id"] for s in answer["subscribers"]]
    assert walked == ids[::-1]
    numbered = admin.get("/subscribers?per_page=10&page=3").get_json()
    assert [s["id"] for s in numbered["subscribers"]] == ids[::-1][20:] and numbered["next_after"] is None
    searched = admin.get("/subscribers?q=r2&status=confirmed").get_json()
    assert [s["email"] for s in searched["subscribers"]] == ["r24@example.org", "r20@example.org"]  # numbered: newest first
    by_address = admin.get(f"/subscribers?q=r2&after={ids[0]}&per_page=2").get_json()
    assert [s["email"] for s in by_address["subscribers"]] == ["r20@example.org", "r21@example.org"]
    assert admin.get("/subscribers?after=5&status=royalty").status_code == 422
