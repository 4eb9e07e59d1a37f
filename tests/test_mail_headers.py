"""Hostile names in every mail (confirmation, welcome, sign-in, digest), sent through the real path and read
back from the bytes the SMTP server received: no injected header, recipient or body; every mail
standards-correct (tests/mailcheck.py). Issue 9 item 1, issue 10 item 8."""
from __future__ import annotations

import base64
import html
import itertools

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from service import tasks
from service.digests import runs
from service.extensions import db
from service.mail import outbox
from service.models import Delivery, OutboxEmail, Subscriber, utcnow
from service.publishing import posts, publication

from .conftest import wait_until
from .helpers import Reader, csrf_token, link_to
from .mailcheck import check, display_name, shown

TRANSACTIONAL = ["Content-Type", "Date", "From", "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post",
                 "MIME-Version", "Message-ID", "Subject", "To"]
DIGEST = sorted([*TRANSACTIONAL, "Auto-Submitted", "Precedence"])
GREETINGS = {  # kind -> (greeting with a name, without), as the templates in emails/ write them
    "confirm": ("Hello {},", "Hello,"),
    "welcome": ("Welcome, {}!", "Welcome!"),
    "signin": ("Hello {},", "Hello,"),
    "digest": ("Hello {},", "Hello,"),
}
OURS = {  # kind -> a sentence only our template has
    "confirm": "Please confirm that you want to subscribe to",
    "welcome": "New posts will reach you by email",
    "signin": "Use this link to sign in on this device.",
    "digest": "since your last digest",
}
PUBLICATION = "The Slow Harbour"  # the embedded default's name
SUBJECTS = {
    "confirm": f"Confirm your subscription to {PUBLICATION}",
    "welcome": f"Welcome to {PUBLICATION}",
    "signin": f"Your sign-in link for {PUBLICATION}",
}

# --- hostile names ---

BREAKS = ["\r\n", "\n", "\r", "\r\n ", "\r\n\t", "\n\n", "\x85", "\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x1e",
          "\t", "\x1b", "\x7f", "\x9b"]
INJECTED = ["Subject: Your account is locked", "Reply-To: attacker@evil.example", "Bcc: victim@example.net",
            "To: admin@bank.example", "Content-Type: text/html", "From: Your Bank <security@bank.example>", ""]
BODIES = ["", "Reset now at https://evil.example/reset", "--==kr0000==\r\nContent-Type: text/plain"]
SPOOFS = ["Admin <admin@bank.example>", "admin@bank.example", "a@b.example, c@d.example", '"Bank" <x@bank.example>;']


def encoded_word(text: str, form: str, charset: str) -> str:
    """`text` as an RFC 2047 encoded word, the way an attacker would write one."""
    data = text.encode(charset, "replace")
    if form in "Bb":
        return f"=?{charset}?{form}?{base64.b64encode(data).decode()}?="
    quoted = "".join(chr(byte) if chr(byte).isalnum() and byte < 128 else "_" if byte == 32 else f"={byte:02X}"
                     for byte in data)
    return f"=?{charset}?{form}?{quoted}?="


# PostgreSQL cannot store NUL, and the web answers it with a 4xx like any control character.
characters = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
injections = st.builds(lambda lead, line_break, fields, body: lead + line_break + line_break.join(fields) + line_break * 2 + body,
                       st.sampled_from(["x", "Admin", "", "Zoë"]), st.sampled_from(BREAKS),
                       st.lists(st.sampled_from(INJECTED), min_size=1, max_size=3), st.sampled_from(BODIES))
encoded_words = st.builds(encoded_word, st.one_of(injections, st.sampled_from(SPOOFS), st.text(characters, max_size=40)),
                          st.sampled_from("bBqQ"), st.sampled_from(["utf-8", "UTF-8", "iso-8859-1"]))
specials = st.text(st.sampled_from('"\\<>,;:@()[]. =?_\'`aZ'), min_size=1, max_size=60)
emoji = st.text(st.sampled_from("😀🎉👩\u200d👧🇫🇷✨🌊é"), min_size=150, max_size=200)
names = st.one_of(
    encoded_words, injections, specials, emoji, st.text(characters, max_size=200),
    st.lists(st.one_of(encoded_words, specials, st.sampled_from(BREAKS), st.text(characters, max_size=20)),
             min_size=2, max_size=6).map("".join),
).map(lambda name: name[:200])

ATTACK = encoded_word("x\r\nSubject: Your account is locked\r\nReply-To: attacker@evil.example\r\n\r\n"
                      "Reset now at https://evil.example/reset", "b", "utf-8")
SPOOF = "=?utf-8?b?QWRtaW4gPGFkbWluQGJhbmsuZXhhbXBsZT4=?="  # "Admin <admin@bank.example>"
EMOJI_194 = "🌊" * 194
_unique = itertools.count(1)


def _address() -> str:
    return f"hostile{next(_unique)}@example.org"


def _ip() -> str:
    number = next(_unique)
    return f"10.{number // 65536 % 256}.{number // 256 % 256}.{number % 256}"


# --- what every received mail must be ---

def assert_ours(received, kind: str, address: str, name: str, subject: str) -> None:
    """One recipient, exactly our headers, To: the subscriber shown with exactly their name, our body."""
    assert received.recipients == [address]
    checked = check(received.raw)
    assert checked.names == (DIGEST if kind == "digest" else TRANSACTIONAL)
    message = checked.message
    assert [mailbox.addr_spec for mailbox in message["To"].addresses] == [address]
    assert display_name(checked.raw("To")) == shown(name)
    # the stdlib agrees, but for the space it leaves between adjacent encoded words of a display name
    assert "".join(message["To"].addresses[0].display_name.split()) == "".join(shown(name).split())
    assert message["Subject"] == subject
    with_name, without = GREETINGS[kind]
    greeting = with_name.format(shown(name)) if shown(name) else without
    text = received.text.replace("\r\n", "\n")
    assert text.startswith(greeting + "\n") and OURS[kind] in text
    assert greeting in html.unescape(received.html) and OURS[kind] in received.html


# --- confirmation, welcome, sign-in ---

def _subscribe(app, name: str) -> tuple[Reader, str]:
    """A signup with this name through POST /subscribe. A name the form refuses (a 4xx) is written to the
    database as an import or an older version could have, and the confirmation asked for by POST /signin.
    The reader, and their name as stored (what every mail must show)."""
    reader = Reader(app.test_client(), _address(), ip=_ip())
    answer = reader.subscribe(name=name)
    assert answer.status_code < 500
    if answer.status_code >= 400:
        with app.app_context():
            db.session.add(Subscriber(email=reader.email, name=name, status="pending", frequency="default"))
            db.session.commit()
        _ask_signin(reader)
    with app.app_context():
        return reader, db.session.scalar(select(Subscriber.name).where(Subscriber.email == reader.email))


def _ask_signin(reader: Reader) -> None:
    form = reader.client.get("/signin")
    answer = reader.client.post("/signin", data={"email": reader.email, "csrf_token": csrf_token(form.data)},
                                environ_base={"REMOTE_ADDR": _ip()})
    assert answer.status_code == 200, answer.data


def _mail(mailbox, reader: Reader, number: int):
    wait_until(lambda: len(mailbox.to(reader.email)) >= number, 30, f"mail {number} to {reader.email}")
    return mailbox.to(reader.email)[number - 1]


def _every_transactional_mail(app, mailbox, readers: list[tuple[Reader, str]]) -> None:
    """Confirmation, welcome and sign-in mail for each subscribed (reader, stored name), sent by the
    worker, each read back."""
    for reader, name in readers:
        confirmation = _mail(mailbox, reader, 1)
        assert_ours(confirmation, "confirm", reader.email, name, SUBJECTS["confirm"])
        assert reader.press_button(link_to(confirmation.text, "/confirm/")).status_code == 303
    for reader, name in readers:
        assert_ours(_mail(mailbox, reader, 2), "welcome", reader.email, name, SUBJECTS["welcome"])
        _ask_signin(reader)
    for reader, name in readers:
        assert_ours(_mail(mailbox, reader, 3), "signin", reader.email, name, SUBJECTS["signin"])
    with mailbox.lock:
        assert all(received.recipients[0].startswith("hostile") for received in mailbox.messages)


def test_the_reviews_attack_names_are_shown_literally(app, worker, mailbox):
    """The two names of the security review: an encoded word holding CRLF, headers and a body, and one that
    decodes to another address. Before: the first wrote the mail's Subject, Reply-To and body; the second
    sent the confirmation to admin@bank.example."""
    readers = [_subscribe(app, name) for name in (ATTACK, SPOOF)]
    received = mailbox.wait_for(2)
    assert sorted(mail.to for mail in received) == sorted(reader.email for reader, _ in readers)
    for mail in received:
        assert sorted(mail.message.keys()) == TRANSACTIONAL
        assert b"Reply-To" not in mail.raw and "Reset now" not in mail.text
    _every_transactional_mail(app, mailbox, readers)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(names, min_size=1, max_size=3))
@example([EMOJI_194, "Zoë \"Z\" O'Neil, <zoe@example.net>; \\", "x\r\nBcc: victim@example.net"])
@example([encoded_word("x\r\nSubject: hi", "q", "utf-8"), "a\u2028Subject: hi", "a\x85Bcc: b@example.net"])
def test_hostile_names_in_confirmation_welcome_and_signin_mail(app, worker, mailbox, given_names):
    _every_transactional_mail(app, mailbox, [_subscribe(app, name) for name in given_names])


# --- digests ---

def _digest_for(app, mailbox, reader_names: list[str], publication_name: str, title: str) -> None:
    """A run to readers of these names (in the database as the web or an import stores them), sent by the
    batch task's own body in this process, each mail read back."""
    mailbox.clear()
    with app.app_context():
        db.session.execute(update(Subscriber).values(status="unsubscribed"))  # earlier examples' readers
        row = publication.settings()
        row.name = publication_name
        since = utcnow()  # after the posts of earlier examples: this run carries the new post alone
        readers = [Subscriber(email=_address(), name=name, status="confirmed", frequency="default",
                              confirmed_at=since, digest_watermark=since) for name in reader_names]
        db.session.add_all(readers)
        db.session.commit()
        addresses = {reader.email: name for reader, name in zip(readers, reader_names, strict=True)}
        post = posts.create(title, "Words for the teaser.\n\n<!--more-->\n\nThe rest.", "subscribers", True)
        stored_title, shown_publication = post.title, publication.name()
        digest = runs.create_run(f"manual:{next(_unique)}", None, utcnow())
        for first, last in runs.id_ranges(Delivery.digest_id == digest.id):
            tasks.send_digest_batch.apply(args=[digest.id, first, last]).get()
        assert set(db.session.scalars(select(Delivery.status).where(Delivery.digest_id == digest.id))) == {"sent"}
    received = mailbox.wait_for(len(readers))
    assert sorted(mail.to for mail in received) == sorted(addresses)
    for mail in received:
        assert_ours(mail, "digest", mail.to, addresses[mail.to], shown(f"{shown_publication}: {stored_title}"))
        list_id = check(mail.raw).raw("List-Id")
        assert display_name(list_id) == shown(shown_publication) and list_id.endswith("<keepreading.localhost>")


titles = st.one_of(st.sampled_from(["Tides", ATTACK, "Knots & <b>ropes</b>", "🌊" * 150]), names).filter(str.strip)
publication_names = st.one_of(st.sampled_from([PUBLICATION, SPOOF, "Café \"Harbour\"", "🌊" * 194]), names).filter(str.strip)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(names, min_size=1, max_size=4), publication_names, titles)
@example([EMOJI_194, ATTACK, SPOOF, ""], "🌊" * 194, ATTACK)
def test_hostile_names_in_digests(app, mailbox, reader_names, publication_name, title):
    _digest_for(app, mailbox, reader_names, publication_name, title)


def test_an_address_the_encoder_refuses_fails_its_delivery_alone(app, mailbox):
    """No address becomes a header unchecked: one that is not a plain addr-spec (here written straight to
    the database) fails its own delivery, and the batch goes on."""
    with app.app_context():
        since = utcnow()
        db.session.add_all([Subscriber(email=email, name="", status="confirmed", frequency="default",
                                       confirmed_at=since, digest_watermark=since)
                            for email in ("fine@example.org", "Bcc: x@example.net <y@example.org>")])
        db.session.commit()
        posts.create("Spring tide", "Words.", "subscribers", True)
        digest = runs.create_run("manual:refused", None, utcnow())
        (first, last), = runs.id_ranges(Delivery.digest_id == digest.id)
        tasks.send_digest_batch.apply(args=[digest.id, first, last]).get()
        outcomes = dict(db.session.execute(select(Subscriber.email, Delivery.status).join_from(Delivery, Subscriber)).all())
    assert outcomes == {"fine@example.org": "sent", "Bcc: x@example.net <y@example.org>": "failed"}
    assert [mail.to for mail in mailbox.messages] == ["fine@example.org"]


def test_a_transactional_mail_to_an_address_the_encoder_refuses_is_given_up(app, mailbox):
    with app.app_context():
        reader = Subscriber(email="To: x@example.net <y@example.org>", name="", status="pending", frequency="default")
        db.session.add(reader)
        db.session.flush()
        staged = outbox.add("confirm", reader, next="/")
        db.session.commit()
        assert outbox.send(staged.id) is False
        row = db.session.get(OutboxEmail, staged.id)
        assert "not a plain ASCII address" in row.error and row.attempts == outbox.MAX_ATTEMPTS
    assert mailbox.messages == []
