"""Who gets into the studio: staff accounts from the CLI, sign-in by password or one-time link, limits,
a session cookie of its own that the server can revoke, idle timeout, and CSRF on every studio form."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
import time_machine
from sqlalchemy import func, select

from service.extensions import db
from service.mail import outbox
from service.models import OutboxEmail, Staff, StudioSession

from .conftest import BASE_URL
from .helpers import Reader, csrf_token, link_to, outbox_rows, path_of, wait_outbox_sent
from .studio_helpers import COOKIE, PASSWORD, Publisher, make_staff

STUDIO_LINK = re.compile(r"http://localhost(/studio/(?:welcome|signin)/[^\s\"'<>]+)")


def studio_rules(app, method: str) -> list[str]:
    """Every studio URL answering `method`, placeholders filled with something that may or may not exist."""
    rules = [rule for rule in app.url_map.iter_rules() if rule.rule.startswith("/studio") and method in rule.methods]
    return sorted({re.sub(r"<[^>]+>", "anything", rule.rule) for rule in rules})


OPEN = ("/studio/signin", "/studio/signin/email", "/studio/signin/anything", "/studio/welcome/anything")


# --- accounts from the CLI ---

def test_staff_add_prints_an_invitation_in_development(app, runner, client):
    app.config["ENV"] = "development"
    result = runner.invoke(args=["staff", "add", "Editor@Example.org", "--name", "Edith"])
    assert result.exit_code == 0, result.output
    path = STUDIO_LINK.search(result.output).group(1)
    assert path.startswith("/studio/welcome/")
    page = client.get(path)
    assert page.status_code == 200 and "editor@example.org" in page.get_data(as_text=True)
    answer = client.post(path, data={"csrf_token": csrf_token(page.data), "password": PASSWORD, "repeat": PASSWORD})
    assert answer.status_code == 303 and answer.headers["Location"] == "/studio/"
    assert client.get("/studio/").status_code == 200
    again = client.get(path)  # the invitation worked once
    assert again.status_code == 400


def test_staff_add_emails_the_invitation_in_production(app, runner, client, mailbox, worker):
    result = runner.invoke(args=["staff", "add", "owner@example.org"])
    assert result.exit_code == 0 and "email" in result.output and "/studio/" not in result.output
    [mail] = mailbox.wait_for(1)
    wait_outbox_sent(app)
    [row] = outbox_rows(app)
    assert row.kind == "studio_invite" and row.subscriber_id is None
    assert mail.to == "owner@example.org" and "studio" in mail.message["Subject"]
    assert "List-Unsubscribe" not in mail.message
    path = link_to(mail.text, "/studio/welcome/")
    assert client.get(path).status_code == 200


def test_staff_list_and_remove(app, runner):
    make_staff(app, "one@example.org")
    runner.invoke(args=["staff", "add", "two@example.org", "--name", "Two"])
    listed = runner.invoke(args=["staff", "list"]).output
    assert "one@example.org" in listed and "password set" in listed and "two@example.org" in listed and "invited" in listed
    assert runner.invoke(args=["staff", "add", "one@example.org"]).exit_code == 1
    assert runner.invoke(args=["staff", "remove", "two@example.org"]).exit_code == 0
    assert "two@example.org" not in runner.invoke(args=["staff", "list"]).output
    assert runner.invoke(args=["staff", "remove", "nobody@example.org"]).exit_code == 1


def test_ensure_first_creates_one_account_and_prints_a_way_in(app, runner, client):
    app.config["ENV"] = "development"
    first = runner.invoke(args=["staff", "ensure-first"])
    assert first.exit_code == 0 and "publisher@example.org" in first.output
    path = STUDIO_LINK.search(first.output).group(1)
    page = client.get(path)
    client.post(path, data={"csrf_token": csrf_token(page.data), "password": PASSWORD, "repeat": PASSWORD})
    second = runner.invoke(args=["staff", "ensure-first"])
    assert "sign in at" in second.output and "/studio/signin/" in second.output
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Staff)) == 1
    app.config["ENV"] = "production"
    assert runner.invoke(args=["staff", "ensure-first"]).exit_code == 1


# --- signing in ---

def test_password_sign_in_sets_a_strict_studio_cookie(app, client):
    make_staff(app)
    answer = Publisher(client).sign_in()
    assert answer.status_code == 303 and answer.headers["Location"] == "/studio/"
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Path=/studio" in cookie and "Secure" not in cookie
    page = client.get("/studio/")
    assert page.status_code == 200 and "Dashboard" in page.get_data(as_text=True)
    assert page.headers["Cache-Control"] == "no-store"


def test_the_cookie_is_secure_when_the_site_is_https(app, client):
    app.config["SECURE_COOKIES"] = True
    make_staff(app)
    assert "Secure" in Publisher(client).sign_in().headers["Set-Cookie"]


def test_a_wrong_password_or_an_unknown_address_get_the_same_answer(app, client):
    make_staff(app)
    wrong = Publisher(client, password="not-the-password").sign_in()
    unknown = Publisher(client, email="stranger@example.org").sign_in()
    for answer in (wrong, unknown):
        assert answer.status_code == 401
        assert "That email and password do not match a studio account." in answer.get_data(as_text=True)
        assert COOKIE not in answer.headers.get("Set-Cookie", "")


def test_sign_in_by_a_one_time_emailed_link(app, client, mailbox, worker):
    make_staff(app)
    page = client.get("/studio/signin")
    answer = client.post("/studio/signin/email", data={"csrf_token": csrf_token(page.data), "email": "editor@example.org"})
    assert "a sign-in link is on its way" in answer.get_data(as_text=True)
    [mail] = mailbox.wait_for(1)
    wait_outbox_sent(app)
    path = link_to(mail.text, "/studio/signin/")
    link_page = client.get(path)
    assert link_page.status_code == 200
    used = client.post(path, data={"csrf_token": csrf_token(link_page.data)})
    assert used.status_code == 303 and client.get("/studio/").status_code == 200
    assert client.post(path, data={"csrf_token": csrf_token(link_page.data)}).status_code == 400  # once only


def test_an_unknown_address_asking_for_a_link_gets_the_same_answer_and_no_mail(app, client):
    page = client.get("/studio/signin")
    answer = client.post("/studio/signin/email", data={"csrf_token": csrf_token(page.data), "email": "who@example.org"})
    assert answer.status_code == 200 and "a sign-in link is on its way" in answer.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(OutboxEmail)) == 0


def test_a_sign_in_link_can_reset_a_forgotten_password(app, client):
    make_staff(app)
    with app.app_context():
        link = outbox.staff_link("studio_signin", db.session.scalar(select(Staff)))
    path = path_of(link)
    page = client.get(path)
    client.post(path, data={"csrf_token": csrf_token(page.data), "password": "a-new-password-1", "repeat": "a-new-password-1"})
    assert Publisher(app.test_client(), password="a-new-password-1").sign_in().status_code == 303
    assert Publisher(app.test_client()).sign_in().status_code == 401


def test_per_account_limit_stops_guessing_from_many_addresses(app, client):
    app.config["STUDIO_ACCOUNT_RATE_LIMIT"] = "3/minute"
    make_staff(app)
    for n in range(3):
        assert Publisher(client, password=f"guess-{n}").sign_in(ip=f"203.0.113.{n}").status_code == 401
    blocked = Publisher(client).sign_in(ip="203.0.113.99")  # the right password, from a new address: still limited
    assert blocked.status_code == 429
    assert "Too many sign-in attempts. Wait a few minutes, then try again." in blocked.get_data(as_text=True)
    assert Publisher(client, email="other@example.org").sign_in(ip="203.0.113.99").status_code == 401  # another account


def test_per_ip_limit_stops_one_address_trying_many_accounts(app, client):
    app.config["STUDIO_SIGNIN_RATE_LIMIT"] = "3/minute"
    for n in range(3):
        assert Publisher(client, email=f"user{n}@example.org").sign_in().status_code == 401
    blocked = Publisher(client, email="user9@example.org").sign_in()
    assert blocked.status_code == 429 and "Too many sign-in attempts" in blocked.get_data(as_text=True)
    assert Publisher(client, email="user9@example.org").sign_in(ip="198.51.100.99").status_code == 401


# --- sessions end on the server ---

def test_sign_out_revokes_the_session_on_the_server(app, client):
    make_staff(app)
    publisher = Publisher(client)
    publisher.sign_in()
    token = publisher.cookie()
    answer = publisher.form("/studio/", "/studio/signout")
    assert answer.status_code == 303 and f"{COOKIE}=;" in answer.headers["Set-Cookie"]
    replay = app.test_client()
    replay.set_cookie(COOKIE, token, path="/studio")
    assert replay.get("/studio/").status_code == 303  # the old cookie, kept by a thief, opens nothing


def test_removing_staff_signs_them_out_everywhere(app, client, runner):
    make_staff(app)
    Publisher(client).sign_in()
    assert client.get("/studio/").status_code == 200
    runner.invoke(args=["staff", "remove", "editor@example.org"])
    assert client.get("/studio/").status_code == 303
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(StudioSession)) == 0


def test_changing_the_password_signs_out_other_browsers(app, client):
    make_staff(app)
    laptop, phone = Publisher(client), Publisher(app.test_client())
    laptop.sign_in()
    phone.sign_in()
    answer = laptop.form("/studio/password", "/studio/password", current_password=PASSWORD,
                         password="fresh-password-7", repeat="fresh-password-7")
    assert answer.status_code == 303
    assert laptop.client.get("/studio/").status_code == 200
    assert phone.client.get("/studio/").status_code == 303


def test_a_wrong_current_password_changes_nothing(app, client):
    make_staff(app)
    publisher = Publisher(client)
    publisher.sign_in()
    answer = publisher.form("/studio/password", "/studio/password", current_password="wrong-one-here",
                            password="fresh-password-7", repeat="fresh-password-7")
    assert answer.status_code == 422 and "current password is not right" in answer.get_data(as_text=True)
    assert Publisher(app.test_client()).sign_in().status_code == 303


def test_an_idle_session_ends(app, client):
    make_staff(app)
    Publisher(client).sign_in()
    idle = app.config["STUDIO_IDLE_TIMEOUT"]
    with time_machine.travel(timedelta(seconds=idle - 60), tick=False):
        assert client.get("/studio/").status_code == 200  # in use: seen again, so the idle clock restarts
    with time_machine.travel(timedelta(seconds=2 * idle - 120), tick=False):
        assert client.get("/studio/").status_code == 200
    with time_machine.travel(timedelta(seconds=3 * idle), tick=False):
        assert client.get("/studio/").status_code == 303


def test_the_hourly_sweep_deletes_only_sessions_that_ended(app, client):
    from service import tasks

    make_staff(app)
    Publisher(client).sign_in()  # stays in use
    other = app.test_client()
    Publisher(other).sign_in()  # left open, never used again
    idle = app.config["STUDIO_IDLE_TIMEOUT"]
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(StudioSession)) == 2
    with time_machine.travel(timedelta(seconds=idle - 60), tick=False):
        assert client.get("/studio/").status_code == 200
    with time_machine.travel(timedelta(seconds=idle + 60), tick=False), app.app_context():
        assert tasks.sweep_studio_sessions.apply().get() == 1  # the idle one, not the one seen a minute ago
        db.session.remove()
    with time_machine.travel(timedelta(seconds=idle + 60), tick=False):
        assert client.get("/studio/").status_code == 200
        assert other.get("/studio/").status_code == 303
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(StudioSession)) == 1


def test_sign_in_returns_to_the_studio_page_asked_for_and_only_there(app, client):
    make_staff(app)
    asked = client.get("/studio/posts?q=harbour")
    assert asked.status_code == 303
    assert asked.headers["Location"] == "/studio/signin?next=/studio/posts?q%3Dharbour"
    page = client.get(asked.headers["Location"])
    answer = client.post("/studio/signin", data={"csrf_token": csrf_token(page.data), "email": "editor@example.org",
                                                  "password": PASSWORD, "next": "/studio/posts?q=harbour"})
    assert answer.headers["Location"] == "/studio/posts?q=harbour"
    other = app.test_client()
    page = other.get("/studio/signin")
    answer = other.post("/studio/signin", data={"csrf_token": csrf_token(page.data), "email": "editor@example.org",
                                                 "password": PASSWORD, "next": "https://evil.example/"})
    assert answer.headers["Location"] == "/studio/"


# --- nobody else gets in ---

def test_a_readers_cookie_opens_no_studio_page(app, client, mailbox, worker):
    reader = Reader(client, "reader@example.org", mailbox)
    reader.subscribe()
    reader.confirm_from_mail()
    assert "Account" in client.get("/").get_data(as_text=True)  # signed in as a reader
    guarded = [path for path in studio_rules(app, "GET") if path not in OPEN]
    assert "/studio/" in guarded and "/studio/posts/anything/preview/reader" in guarded
    for path in guarded:
        answer = client.get(path)
        assert answer.status_code == 303 and answer.headers["Location"].startswith("/studio/signin"), path
    for path in [path for path in studio_rules(app, "POST") if path not in OPEN]:
        page = client.get("/signin")
        answer = client.post(path, data={"csrf_token": csrf_token(page.data)})
        assert answer.status_code == 303 and answer.headers["Location"].startswith("/studio/signin"), path
    wait_outbox_sent(app)  # the welcome email: the worker is done before the tables are emptied


@pytest.mark.parametrize("method", ["POST"])
def test_every_studio_form_refuses_a_post_without_its_csrf_token(app, client, method):
    make_staff(app)
    Publisher(client).sign_in()
    posts = studio_rules(app, method)
    assert len(posts) >= 15  # every form of the studio, found in the URL map: a new one cannot be forgotten
    for path in posts:
        answer = client.post(path, data={"email": "editor@example.org", "password": PASSWORD})
        assert answer.status_code == 400 and "CSRF" in answer.get_data(as_text=True), path
    assert client.get("/studio/").status_code == 200  # still signed in: nothing above was taken as a request


def test_studio_links_are_built_from_base_url(app):
    with app.app_context():
        account = Staff(id=7, email="x@example.org", name="", link_generation=0)
        assert outbox.staff_link("studio_invite", account).startswith(BASE_URL + "/studio/welcome/")
