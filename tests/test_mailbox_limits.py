"""Per-mailbox limits and the sign-in request (issue 9.7, 9.8): strangers can neither bomb an inbox nor lock its
owner out, and a sign-in request costs the same whoever the address belongs to.

The mail is handled in this process, with a frozen clock: the request path publishes to a queue of this
test's own that no worker reads (`own_queue`), and `drain` does what the worker would with each row.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import time_machine
from sqlalchemy import select

from service.extensions import db
from service.mail import outbox
from service.models import OutboxEmail, Subscriber, utcnow
from service.readers import subscriptions
from service.readers.addresses import mailbox_key

from .helpers import Reader, csrf_token, link_to, outbox_rows
from .test_query_budget import counting

pytestmark = pytest.mark.usefixtures("own_queue")
START = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
GMAIL_DOTS = ["victim@gmail.com", "v.ictim@gmail.com", "vi.ctim@gmail.com", "vic.tim@gmail.com", "vict.im@gmail.com",
              "victi.m@gmail.com", "v.i.c.t.i.m@gmail.com", "Vic.Tim@GoogleMail.com", "victim+news@googlemail.com"]


def drain(app) -> int:
    """What the worker does with every unhandled row: answer requests, send emails. The emails sent."""
    sent = 0
    with app.app_context():
        pending = db.session.execute(select(OutboxEmail.id, OutboxEmail.kind).where(OutboxEmail.sent_at.is_(None))
                                     .order_by(OutboxEmail.id)).all()
        db.session.rollback()
        for outbox_id, kind in pending:
            if kind == "signin_request":
                sent += subscriptions.answer_signin_request(outbox_id)
            else:
                sent += outbox.send(outbox_id)
    return sent


def add_reader(app, email: str, status: str = "confirmed") -> None:
    with app.app_context():
        db.session.add(Subscriber(email=email, status=status, confirmed_at=utcnow() if status == "confirmed" else None))
        db.session.commit()


def ask_for_signin(client, email: str, ip: str):
    form = client.get("/signin")
    return client.post("/signin", data={"email": email, "csrf_token": csrf_token(form.data)},
                       environ_base={"REMOTE_ADDR": ip})


@pytest.mark.parametrize("spelling, mailbox", [
    ("a.b.c@gmail.com", "abc@gmail.com"), ("ABC+x.y@googlemail.com", "abc@gmail.com"),
    ("a.b+tag@example.org", "a.b@example.org"), ("a.b@outlook.com", "a.b@outlook.com"),
])
def test_provider_equivalent_spellings_are_one_mailbox(spelling, mailbox):
    assert mailbox_key(spelling.lower()) == mailbox


def test_dot_and_tag_variants_of_one_gmail_address_get_a_few_mails_a_day(client, app, mailbox):
    """Nine spellings of one Gmail inbox from nine addresses: not nine confirmation mails, three (a day)."""
    app.config["CONFIRM_COOLDOWN"] = 0  # the per-mailbox budget alone, not the per-address cooldown
    with time_machine.travel(START, tick=False):
        for number, spelling in enumerate(GMAIL_DOTS):
            assert Reader(client, spelling, ip=f"203.0.113.{number + 1}").subscribe().status_code == 200
        assert drain(app) == 3
    assert len(outbox_rows(app)) == 3


def test_a_stranger_sends_one_mailbox_at_most_three_mails_a_day(client, app, mailbox):
    """Signups and sign-in requests for a reader's address, from ever new IPs, for three days."""
    add_reader(app, "owner@example.org")
    with time_machine.travel(START, tick=False) as clock:
        for day in range(3):
            sent_today = 0
            for hour in range(24):
                ip = f"198.51.{day}.{hour + 1}"
                Reader(client, "owner@example.org", ip=ip).subscribe()
                ask_for_signin(client, "o.w.n.e.r+x@example.org" if hour % 2 else "owner@example.org", ip)
                sent_today += drain(app)
                clock.shift(timedelta(hours=1))
            assert sent_today == 3, f"day {day}"
    assert len(mailbox.to("owner@example.org")) == 9


def test_a_spent_budget_never_locks_the_owner_out(client, app, mailbox):
    """The stranger spends the budget; the owner still signs in at once from the inbox, and an hour later
    (the link expired) renews it from its own budget; signing in restores the anonymous budget."""
    add_reader(app, "owner@example.org")
    reader = Reader(client, "owner@example.org", mailbox)
    with time_machine.travel(START, tick=False) as clock:
        strangers_mails = 0
        for step in range(49):  # two requests every five minutes for four hours, from ever new IPs
            for number in range(2):
                ask_for_signin(app.test_client(), "owner@example.org", f"203.0.{step}.{number + 1}")
            strangers_mails += drain(app)
            clock.shift(timedelta(minutes=5))
        ask_for_signin(client, "owner@example.org", "192.0.2.1")  # the owner's own request: budget spent
        assert drain(app) == 0
        latest = link_to(mailbox.to("owner@example.org")[-1].text, "/signin/")
        expired = client.get(latest)  # every link in the inbox has expired by now, and each offers a fresh one
        assert expired.status_code == 400 and b"Send me a fresh link" in expired.data
        renewed = client.post(f"/renew/signin/{latest.rsplit('/', 1)[1]}",
                              data={"csrf_token": csrf_token(expired.data)})
        assert renewed.status_code == 200
        assert drain(app) == 1
        fresh = link_to(mailbox.to("owner@example.org")[-1].text, "/signin/")
        assert reader.sign_in(fresh).status_code == 303
        assert client.get("/account").status_code == 200

        ask_for_signin(app.test_client(), "owner@example.org", "192.0.2.2")  # proven: the budget is back
        assert drain(app) == 1
    assert strangers_mails == 3


def test_renewals_have_a_budget_of_their_own(client, app, mailbox):
    add_reader(app, "renewer@example.org")
    with time_machine.travel(START, tick=False) as clock:
        ask_for_signin(client, "renewer@example.org", "192.0.2.1")
        assert drain(app) == 1
        token = link_to(mailbox.to("renewer@example.org")[-1].text, "/signin/").rsplit("/", 1)[1]
        clock.shift(timedelta(hours=2))
        page = client.get(f"/signin/{token}")
        for _ in range(8):
            client.post(f"/renew/signin/{token}", data={"csrf_token": csrf_token(page.data)})
        assert drain(app) == 5  # RENEW_RATE_LIMIT 5/day


def test_a_signin_request_costs_the_same_for_every_address(client, app):
    """The request path writes one row and publishes one message whether the address is a reader's, a
    pending one, one that left, or unknown: the statements and messages are the same, and so is the answer."""
    app.extensions["page_memory"].seconds = 0  # the page's settings read on every request, not now and then
    for email, status in (("reader@example.org", "confirmed"), ("waiting@example.org", "pending"),
                          ("left@example.org", "unsubscribed")):
        add_reader(app, email, status)
    form = client.get("/signin")
    tallies, answers = {}, {}
    for number, email in enumerate(("reader@example.org", "waiting@example.org", "left@example.org",
                                    "nobody@example.org")):
        with app.app_context(), counting() as tally:
            answers[email] = client.post("/signin", data={"email": email, "csrf_token": csrf_token(form.data)},
                                         environ_base={"REMOTE_ADDR": f"192.0.2.{number + 1}"})
        tallies[email] = ([_shape(statement) for statement in tally.statements], [key for key, _ in tally.published])
    assert len({(answer.status_code, answer.data) for answer in answers.values()}) == 1
    shapes = list(tallies.values())
    for shape in shapes:
        assert shape == shapes[0]
    assert len(shapes[0][1]) == 1
    rows = outbox_rows(app)
    assert [row.kind for row in rows] == [outbox.SIGNIN_REQUEST] * 4 and {row.subscriber_id for row in rows} == {None}

    assert drain(app) == 2  # the reader's sign-in link and the pending address's confirmation
    assert sorted(row.kind for row in outbox_rows(app)) == ["confirm", "signin"]
    assert all(set(row.data) == {"next"} for row in outbox_rows(app))  # no address is left in any row


def test_requests_never_answered_do_not_keep_the_address(app):
    with time_machine.travel(START, tick=False) as clock:
        with app.app_context():
            outbox.commit_and_dispatch([outbox.add_signin_request("forgotten@example.org", "/")])
            clock.shift(timedelta(days=1, minutes=1))
            outbox.flush()
    assert outbox_rows(app) == []


def _shape(statement: str) -> str:
    """A statement without its parameters (the same SQL whatever the values)."""
    return " ".join(statement.split())


def test_the_budget_is_shared_by_every_process_and_holds_no_address(app, client):
    """Budgets live in the database: a worker's spend and the web's reset meet (the embedded default's
    in-memory limiter keeps one store per process), and what is kept is a digest, never the address."""
    add_reader(app, "owner@example.org")
    with time_machine.travel(START, tick=False):
        for n in range(3):
            ask_for_signin(client, "owner@example.org", f"192.0.2.{n}")
        assert drain(app) == 3
        with app.app_context():
            from service.models import MailboxSpend
            from service.readers import abuse

            kept = db.session.scalars(select(MailboxSpend.mailbox)).all()
            assert len(kept) == 3 and not any("owner" in value or "@" in value for value in kept)
            abuse.mailbox_proven("owner@example.org")
            assert db.session.scalars(select(MailboxSpend)).all() == []
        ask_for_signin(client, "owner@example.org", "192.0.2.9")
        assert drain(app) == 1
    with time_machine.travel(START + timedelta(days=2), tick=False), app.app_context():
        from service.readers import abuse

        assert abuse.forget_spent_budgets() == 1
