"""The embedded default (no SMTP_URL): mails become .eml files and their links are logged decoded, so a
developer can follow them as printed (issue 10 item 5: a digest link was logged as `?t=3D...`)."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

from service import tasks
from service.digests import runs
from service.extensions import db
from service.mail import outbox
from service.models import Delivery, Subscriber, utcnow
from service.publishing import posts

from .conftest import BASE_URL
from .helpers import Reader, path_of
from .test_digests import seed


@contextmanager
def logged_links():
    """The links each FileTransport log line names, per .eml file written (a handler of our own on the
    transport's logger, whatever the logging configuration does with its records)."""
    written: dict[Path, list[str]] = {}

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if "written to" in message and "links:" in message:
                path = Path(message.split("written to ", 1)[1].split("; links:", 1)[0])
                written[path] = message.split("links:", 1)[1].split()

    logger, handler = logging.getLogger("service.mail.transports"), Collect(logging.DEBUG)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield written
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_digest_links_are_logged_as_they_work(app, client):
    app.config["SMTP_URL"] = None
    with app.app_context():
        seed(1, name="Robin")
        slugs = [posts.create(title, "Teaser words.\n\n<!--more-->\n\nThe rest, for subscribers.", "subscribers", True).slug
                 for title in ("A rather long title about the harbour wall at night", "Knots")]
        digest = runs.create_run("manual:files", None, utcnow())
        (first, last), = runs.id_ranges(Delivery.digest_id == digest.id)
        with logged_links() as written:
            tasks.send_digest_batch.apply(args=[digest.id, first, last]).get()
    (path, links), = written.items()
    assert path.exists() and path.read_bytes().startswith(b"To: ")
    articles = [link for link in links if "/p/" in link]
    assert sorted(path_of(link).split("?")[0] for link in articles) == sorted(f"/p/{slug}" for slug in slugs)
    assert all("=3D" not in link and "?t=" in link for link in articles)
    for link in articles:
        assert b"The rest, for subscribers." in client.get(path_of(link)).data
    unsubscribe, = [link for link in links if "/unsubscribe/" in link]
    assert client.get(path_of(unsubscribe)).status_code == 200


def test_confirmation_link_is_logged_as_it_works(app, client):
    app.config["SMTP_URL"] = None
    reader = Reader(client, "files@example.org")
    with app.app_context():  # staged, not queued: a worker of the session must not send it first
        subscriber = Subscriber(email=reader.email, name="Robin", status="pending", frequency="default")
        db.session.add(subscriber)
        db.session.flush()
        staged = outbox.add("confirm", subscriber, next="/")
        db.session.commit()
        outbox_id = staged.id
    with logged_links() as written:
        assert tasks.send_outbox_email.apply(args=[outbox_id]).get() is True
    (_, links), = written.items()
    confirm, = [link for link in links if "/confirm/" in link]
    assert confirm.startswith(f"{BASE_URL}/confirm/")
    assert reader.press_button(path_of(confirm)).status_code == 303
