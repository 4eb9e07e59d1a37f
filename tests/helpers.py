"""Small actions as readers and the publisher perform them, shared by the tests."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

from sqlalchemy import select

from service.extensions import db
from service.models import OutboxEmail, Subscriber

from .conftest import BASE_URL, wait_until

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
LINKS = re.compile(r"https?://[^\s\"'<>]+")


def csrf_token(html: str | bytes) -> str:
    text = html.decode() if isinstance(html, bytes) else html
    found = CSRF.search(text)
    assert found, "the page has no CSRF token"
    return found.group(1)


def policy(response) -> dict[str, str]:
    """The response's Content-Security-Policy as {directive: its sources}."""
    found = {}
    for directive in response.headers["Content-Security-Policy"].split(";"):
        name, _, sources = directive.strip().partition(" ")
        found[name] = sources.strip()
    return found


def links_in(text: str) -> list[str]:
    return LINKS.findall(text)


def path_of(url: str) -> str:
    assert url.startswith(BASE_URL + "/"), f"{url} is not under BASE_URL"
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def link_to(text: str, prefix: str) -> str:
    """The path of the first link in `text` whose path starts with `prefix` (e.g. "/confirm/")."""
    for url in links_in(text):
        if urlsplit(url).path.startswith(prefix):
            return path_of(url)
    raise AssertionError(f"no {prefix} link in: {text}")


def subscriber(app, email: str) -> Subscriber | None:
    with app.app_context():
        row = db.session.scalar(select(Subscriber).where(Subscriber.email == email))
        db.session.expunge_all()
        return row


def outbox_rows(app, kind: str | None = None) -> list[OutboxEmail]:
    with app.app_context():
        query = select(OutboxEmail).order_by(OutboxEmail.id)
        if kind:
            query = query.where(OutboxEmail.kind == kind)
        rows = list(db.session.scalars(query))
        db.session.expunge_all()
        return rows


def wait_outbox_sent(app, timeout: float = 30) -> None:
    """Every outbox row sent (by the worker, another process)."""
    wait_until(lambda: all(row.sent_at for row in outbox_rows(app)), timeout, "outbox not drained")


class Reader:
    """One person with one browser (a test client) and one mailbox address."""

    def __init__(self, client, email: str, mailbox=None, ip: str = "192.0.2.10"):
        self.client = client
        self.email = email
        self.mailbox = mailbox
        self.ip = ip

    def subscribe(self, next_url: str = "/", **fields):
        data = {"email": self.email, "next": next_url, "website": "", **fields}
        return self.client.post("/subscribe", data=data, environ_base={"REMOTE_ADDR": self.ip})

    def subscribe_json(self, **fields):
        return self.client.post("/subscribe", json={"email": self.email, **fields},
                                headers={"Accept": "application/json"}, environ_base={"REMOTE_ADDR": self.ip})

    def mails(self, count: int = 1, timeout: float = 30):
        wait_until(lambda: len(self.mailbox.to(self.email)) >= count, timeout,
                   f"{count} email(s) to {self.email} did not arrive")
        return self.mailbox.to(self.email)

    def confirm_link(self) -> str:
        return link_to(self.mails()[0].text, "/confirm/")

    def press_button(self, path: str):
        """GET the link's page, then POST its form as the button would."""
        page = self.client.get(path)
        assert page.status_code == 200, page.data
        return self.client.post(path, data={"csrf_token": csrf_token(page.data)})

    def confirm_from_mail(self):
        return self.press_button(self.confirm_link())

    def sign_in(self, path: str):
        return self.press_button(path)

    def account_post(self, **fields):
        page = self.client.get("/account")
        assert page.status_code == 200, page.data
        return self.client.post("/account", data={"csrf_token": csrf_token(page.data), **fields})
