"""Access modes (issue 12): public, subscribers, popup and metered posts from the API, the CLI and the settings; the
pop-up's markup; the meter in its signed cookie on a frozen clock; the page around the article; notices once."""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest
import time_machine
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import select

from service import tokens
from service.extensions import db
from service.models import Post, Subscriber
from service.readers.access import COOKIE, METER_COOKIE

from .conftest import SECRET_KEY
from .helpers import Reader, csrf_token
from .test_gating import make_subscriber

TAIL = "where the harbour master hides the spare key"
START = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def body(title: str) -> str:
    return f"{title} opens for everyone.\n\n<!--more-->\n\n{title} then says {TAIL}."


def publish(admin, title: str, visibility: str | None) -> str:
    fields = {} if visibility is None else {"visibility": visibility}
    return "/p/" + admin.publish(title=title, body=body(title), **fields)["slug"]


def page(client, path: str) -> str:
    answer = client.get(path)
    assert answer.status_code == 200, answer.status_code
    return answer.get_data(as_text=True)


def meter_cookie(client) -> str | None:
    cookie = client.get_cookie(METER_COOKIE)
    return cookie.value if cookie else None


# --- the four modes from the API, the CLI and the publisher's default ---

def test_every_mode_from_the_api_and_the_cli(admin, runner, tmp_path):
    for visibility in ("public", "subscribers", "popup", "metered"):
        assert admin.publish(title=f"As {visibility}", visibility=visibility)["visibility"] == visibility
    refused = admin.post("/posts", json={"title": "t", "body": "b", "visibility": "members"})
    assert refused.status_code == 422 and "'popup'" in refused.get_json()["message"]
    source = tmp_path / "post.md"
    source.write_text("From the command line.", encoding="utf-8")
    for visibility in ("popup", "metered"):
        added = runner.invoke(args=["posts", "add", "--title", f"CLI {visibility}", "--file", str(source),
                                    "--visibility", visibility])
        assert added.exit_code == 0, added.output
        assert admin.get(f"/posts/cli-{visibility}").get_json()["visibility"] == visibility
    assert runner.invoke(args=["posts", "add", "--title", "x", "--file", str(source), "--visibility", "members"]).exit_code == 2


def test_new_posts_take_the_publications_default_visibility(admin, runner, tmp_path):
    assert admin.publish(title="Before")["visibility"] == "subscribers"
    assert admin.patch("/settings", json={"default_visibility": "metered"}).get_json()["default_visibility"] == "metered"
    assert admin.post("/posts", json={"title": "After", "body": "b"}).get_json()["visibility"] == "metered"
    source = tmp_path / "post.md"
    source.write_text("Words.", encoding="utf-8")
    assert runner.invoke(args=["posts", "add", "--title", "From the CLI", "--file", str(source)]).exit_code == 0
    assert admin.get("/posts/from-the-cli").get_json()["visibility"] == "metered"
    assert admin.patch("/settings", json={"default_visibility": "everyone"}).status_code == 422


@pytest.mark.parametrize("field, bad", [("free_articles", 101), ("free_articles", -1), ("popup_scroll_percent", 0),
                                        ("popup_delay_seconds", 3601), ("popup_snooze_days", 0),
                                        ("digest_content", "summary"), ("popup_snooze_days", "7")])
def test_reading_settings_are_checked(admin, field, bad):
    answer = admin.patch("/settings", json={field: bad})
    assert answer.status_code == 422 and answer.get_json()["field"] == field


def test_the_openapi_document_offers_the_four_modes(client):
    document = client.get("/api/v1/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    for name in ("NewPost", "PostInput", "Post"):
        assert schemas[name]["properties"]["visibility"]["enum"] == ["public", "subscribers", "popup", "metered"]
    assert {"default_visibility", "free_articles", "popup_scroll_percent", "popup_delay_seconds", "popup_snooze_days",
            "digest_content"} <= set(schemas["Settings"]["properties"])


# --- popup ---

def test_a_popup_post_is_readable_by_everyone_with_the_invitation_for_readers_who_are_not_subscribed(app, client, admin):
    path = publish(admin, "Night ferry", "popup")
    html = page(client, path)
    assert TAIL in html and "Subscribe to keep reading" not in html
    dialog = re.search(r"<dialog[^>]*>.*?</dialog>", html, re.S).group(0)
    assert 'data-scroll-percent="50"' in dialog and 'data-delay-seconds="45"' in dialog and 'data-snooze-days="7"' in dialog
    assert "Discover more from The Slow Harbour" in dialog and 'type="email"' in dialog and "Continue reading" in dialog
    assert 'href="#"' not in html  # "Continue reading" is a button: no jump to the top (Jetpack #34684)
    assert '<script src="/static/invite.js" defer></script>' in html
    # Without JavaScript a closed <dialog> is not shown: the article ends with the usual form, inline.
    before_dialog = html.split("<dialog", 1)[0]
    assert 'id="end-email"' in before_dialog and "Discover more from The Slow Harbour" in before_dialog
    data = json.loads(re.search(r'<script type="application/ld\+json">(.*?)</script>', html, re.S).group(1))
    assert data["isAccessibleForFree"] is True

    _, cookie = make_subscriber(app)
    client.set_cookie(COOKIE, cookie)
    signed_in = page(client, path)
    assert TAIL in signed_in and "<dialog" not in signed_in and "invite.js" not in signed_in
    assert 'action="/subscribe"' not in signed_in  # never a subscribe prompt


@pytest.mark.parametrize("visibility", ["public", "subscribers", "metered"])
def test_the_invitation_dialog_belongs_to_popup_posts_only(client, admin, visibility):
    path = publish(admin, "Other kinds", visibility)
    publish(admin, "A popup one", "popup")
    for shown in (page(client, path), page(client, "/"), page(client, "/signin")):
        assert "<dialog" not in shown and "invite.js" not in shown


def test_the_feed_says_popup_posts_are_free_and_carries_them_whole(client, admin):
    publish(admin, "Night ferry", "popup")
    feed = client.get("/feed.xml").get_data(as_text=True)
    entry = feed.split("<entry>")[1]
    assert '<category term="popup" label="Free to read (the page invites readers to subscribe)"/>' in entry
    assert "<content type=\"html\">" in entry and "spare key" in entry


def test_subscribing_from_the_invitation_answers_json_in_place(client, admin):
    path = publish(admin, "Night ferry", "popup")
    page(client, path)
    answer = client.post("/subscribe", data={"email": "walker@example.org", "next": path, "website": ""},
                         headers={"Accept": "application/json", "Referer": "http://localhost" + path})
    assert answer.status_code == 200 and answer.get_json()["ok"] is True
    assert "Check your inbox" in answer.get_json()["message"]
    wrong = client.post("/subscribe", data={"email": "not an address", "next": path}, headers={"Accept": "application/json"})
    assert wrong.status_code == 422 and wrong.get_json()["field"] == "email"


# --- metered ---

@pytest.fixture
def metered(admin):
    return [publish(admin, f"Metered {n}", "metered") for n in range(1, 6)]


def test_the_meter_counts_free_articles_across_articles_then_gates(client, metered):
    seen = []
    for path in metered[:3]:
        html = page(client, path)
        assert TAIL in html
        seen.append(re.search(r"\d of 3 free articles left this month", html).group(0))
    assert seen == ["2 of 3 free articles left this month", "1 of 3 free articles left this month",
                    "0 of 3 free articles left this month"]
    spent = page(client, metered[3])
    assert TAIL not in spent and "Metered 4 opens for everyone." in spent
    assert "You have read your 3 free articles this month." in spent and "Subscribe to keep reading" in spent
    again = page(client, metered[0])  # one already counted stays free to read again
    assert TAIL in again and "0 of 3 free articles left this month" in again


def test_the_meter_resets_after_30_days(client, metered):
    with time_machine.travel(START, tick=False) as clock:
        for path in metered[:3]:
            assert TAIL in page(client, path)
        assert TAIL not in page(client, metered[3])
        clock.shift(timedelta(days=29, hours=23))
        assert TAIL not in page(client, metered[3])
        clock.shift(timedelta(hours=2))  # the first three reads are 30 days old
        fresh = page(client, metered[3])
        assert TAIL in fresh and "2 of 3 free articles left this month" in fresh


def test_a_rolling_window_frees_one_article_at_a_time(client, metered):
    with time_machine.travel(START, tick=False) as clock:
        assert TAIL in page(client, metered[0])
        clock.shift(timedelta(days=10))
        assert TAIL in page(client, metered[1]) and TAIL in page(client, metered[2])
        clock.shift(timedelta(days=20, minutes=1))  # the first read aged out, the others not
        assert TAIL in page(client, metered[3])
        assert TAIL not in page(client, metered[4])


def test_a_tampered_or_foreign_meter_counts_as_spent(app, client, metered):
    page(client, metered[0])
    good = meter_cookie(client)
    _, session = make_subscriber(app)
    with app.app_context():
        forged_elsewhere = URLSafeTimedSerializer("another-installations-key-0123456789", salt="keepreading.meter").dumps([])
        no_reads_but_bad_shape = tokens.seal("meter", {"reads": []})
    empty = URLSafeTimedSerializer(SECRET_KEY, salt="keepreading.meter").dumps([])
    for bad in (good[:-2] + ("AA" if not good.endswith("AA") else "BB"), good + "x", "garbage", session,
                forged_elsewhere, no_reads_but_bad_shape, empty.replace(".", "x", 1)):
        client.set_cookie(METER_COOKIE, bad)
        html = page(client, metered[1])
        assert TAIL not in html and "Subscribe to keep reading" in html, bad
        assert meter_cookie(client) == bad  # left as it is: editing a cookie never buys a fresh meter
    client.set_cookie(METER_COOKIE, empty)  # a genuine empty meter is a fresh one
    assert TAIL in page(client, metered[1])


def test_the_meter_holds_post_ids_and_times_only(app, client, metered):
    with time_machine.travel(START, tick=False):
        page(client, metered[0])
        page(client, metered[1])
        with app.app_context():
            ids = [db.session.scalar(select(Post.id).where(Post.slug == path.removeprefix("/p/"))) for path in metered[:2]]
            assert tokens.unseal("meter", meter_cookie(client)) == [[ids[0], int(START.timestamp())],
                                                                    [ids[1], int(START.timestamp())]]
    headers = client.get(metered[2]).headers.getlist("Set-Cookie")
    [meter] = [each for each in headers if each.startswith(METER_COOKIE + "=")]
    assert "HttpOnly" in meter and "SameSite=Lax" in meter and "Max-Age=2592000" in meter


def test_a_confirmed_subscriber_is_never_metered(app, client, metered):
    _, cookie = make_subscriber(app)
    client.set_cookie(COOKIE, cookie)
    for path in metered:
        html = page(client, path)
        assert TAIL in html and "free articles" not in html and 'action="/subscribe"' not in html
    assert meter_cookie(client) is None


def test_metered_and_gated_articles_are_marked_for_search_engines(client, admin, metered):
    gated = publish(admin, "Members only", "subscribers")
    for path in (metered[0], gated):
        data = json.loads(re.search(r'<script type="application/ld\+json">(.*?)</script>', page(client, path), re.S).group(1))
        assert data["isAccessibleForFree"] is False
        assert data["hasPart"] == {"@type": "WebPageElement", "isAccessibleForFree": False, "cssSelector": ".gated"}
    assert '<div class="body gated">' in page(client, metered[1])  # the selector names the metered section


def test_no_free_articles_makes_metered_posts_subscriber_only(client, admin, metered):
    admin.patch("/settings", json={"free_articles": 0})
    html = page(client, metered[0])
    assert TAIL not in html and "Subscribe to keep reading" in html


# --- the page around the article ---

def test_article_pages_list_the_five_latest_other_posts(client, admin):
    paths = [publish(admin, f"Letter {n}", "public") for n in range(1, 8)]
    html = page(client, paths[2])
    latest = re.search(r'<nav class="latest".*?</nav>', html, re.S).group(0)
    assert re.findall(r">(Letter \d)</a>", latest) == ["Letter 7", "Letter 6", "Letter 5", "Letter 4", "Letter 2"]
    assert latest.count("<time datetime=") == 5
    assert '<nav class="latest"' not in page(client, "/")


def test_stay_in_touch_on_every_reader_page_but_not_for_signed_in_readers(app, client, admin):
    path = publish(admin, "Harbour notes", "public")
    for each in ("/", path, "/signin", "/no-such-page"):
        answer = client.get(each)
        html = answer.get_data(as_text=True)
        assert "Stay in touch" in html and 'id="stay-email"' in html, each
    assert 'name="next" value="/p/harbour-notes"' in page(client, path).split('class="stay"')[1]
    _, cookie = make_subscriber(app)
    client.set_cookie(COOKIE, cookie)
    for each in ("/", path, "/signin", "/account"):
        assert "Stay in touch" not in client.get(each).get_data(as_text=True), each


def test_the_stay_in_touch_form_uses_the_subscribe_endpoint_and_its_limits(app, client, admin):
    app.config["SIGNUP_RATE_LIMIT"] = "2/minute"
    html = page(client, publish(admin, "Harbour notes", "public"))
    form = html.split('class="stay"')[1].split("</form>")[0]
    assert 'action="/subscribe"' in form and 'name="website"' in form  # the honeypot too
    reader = Reader(client, "stay@example.org", ip="192.0.2.77")
    assert reader.subscribe("/p/harbour-notes").status_code == 200
    assert reader.subscribe("/p/harbour-notes").status_code == 200
    assert reader.subscribe("/p/harbour-notes").status_code == 429


def test_signed_in_readers_see_who_they_are_even_on_pages_from_memory(app, admin):
    app.extensions["page_memory"].seconds = 60
    path = publish(admin, "Harbour notes", "subscribers")
    anonymous = app.test_client()
    assert "Sign in</a>" in page(anonymous, path) and "Signed in as" not in page(anonymous, path)
    for email in ("ada@example.org", "bo@example.org"):  # same status, same kept page, each their own address
        browser = app.test_client()
        browser.set_cookie(COOKIE, make_subscriber(app, email=email)[1])
        for each in (path, "/", path):
            html = page(browser, each)
            assert f'<span class="who">Signed in as {email}</span> · <a href="/account">Account</a>' in html
            assert "Sign in</a>" not in html and "kr-reader-" not in html


def test_confirming_and_signing_in_say_so_once(app, client, admin, mailbox, worker):
    path = publish(admin, "Harbour notes", "subscribers")
    reader = Reader(client, "newcomer@example.org", mailbox)
    reader.subscribe(path)
    done = reader.confirm_from_mail()
    assert done.status_code == 303 and done.headers["Location"] == path
    first, second = page(client, path), page(client, path)
    assert "You&#39;re subscribed" in first and TAIL in first
    assert "You&#39;re subscribed" not in second
    with app.app_context():
        row = db.session.query(Subscriber).filter_by(email="newcomer@example.org").one()
        link = tokens.make("signin", row, "/", row.link_epoch)
    other = app.test_client()
    form = other.get(f"/signin/{link}")
    assert other.post(f"/signin/{link}", data={"csrf_token": csrf_token(form.data)}).status_code == 303
    once, after = page(other, "/"), page(other, "/")
    assert "Signed in." in once and "Signed in." not in after


# --- the studio and the migration ---

def test_the_studio_offers_the_four_modes_and_the_reading_settings(app, client, admin):
    from .studio_helpers import Publisher, make_staff

    make_staff(app)
    publisher = Publisher(client)
    assert publisher.sign_in().status_code == 303
    admin.patch("/settings", json={"default_visibility": "popup"})
    editor = page(client, "/studio/posts/new")
    assert re.findall(r'name="visibility" value="(\w+)"( checked)?', editor) == [
        ("subscribers", ""), ("metered", ""), ("popup", " checked"), ("public", "")]
    saved = publisher.form("/studio/posts/new", "/studio/posts/new", title="Studio metered", body=body("Studio"),
                           visibility="metered", action="save")
    assert saved.status_code == 303 and admin.get("/posts/studio-metered").get_json()["visibility"] == "metered"
    assert "Metered" in page(client, "/studio/posts")
    assert "read 3 metered posts a month in full" in page(client, "/studio/posts/studio-metered/preview")
    answer = publisher.form("/studio/settings", "/studio/settings", name="The Slow Harbour", default_frequency="weekly",
                            send_hour="8", send_weekday="0", timezone="UTC", teaser_words="120",
                            default_visibility="metered", free_articles="5", popup_scroll_percent="70",
                            popup_delay_seconds="0", popup_snooze_days="14", digest_content="teaser")
    assert answer.status_code == 303
    assert {key: value for key, value in admin.get("/settings").get_json().items() if key in (
        "default_visibility", "free_articles", "popup_scroll_percent", "popup_delay_seconds", "popup_snooze_days",
        "digest_content")} == {"default_visibility": "metered", "free_articles": 5, "popup_scroll_percent": 70,
                               "popup_delay_seconds": 0, "popup_snooze_days": 14, "digest_content": "teaser"}
    refused = publisher.form("/studio/settings", "/studio/settings", name="The Slow Harbour", free_articles="many")
    assert refused.status_code == 422 and "Enter a whole number." in refused.get_data(as_text=True)


def test_the_migration_keeps_posts_and_settings_and_allows_the_new_modes(tmp_path, monkeypatch):
    from sqlalchemy import create_engine, text

    from service import create_app

    url = f"sqlite:///{tmp_path / 'modes.sqlite'}"
    monkeypatch.setenv("KEEPREADING_INSTANCE_PATH", str(tmp_path))
    monkeypatch.setenv("KEEPREADING_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("KEEPREADING_DATABASE_URL", url)
    runner = create_app().test_cli_runner()
    assert runner.invoke(args=["db", "upgrade", "3b8f2d6e1a47"]).exit_code == 0
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO publication_settings (id, default_frequency, send_hour, send_weekday, "
                                "timezone, teaser_words, blocked_domains) VALUES (1, 'daily', 7, 2, 'UTC', 90, '')"))
        connection.execute(text("INSERT INTO posts (slug, title, body, body_html, teaser_html, visibility, published, "
                                "created_at, updated_at) VALUES ('old', 'Old', 'b', '<p>b</p>', '<p>b</p>', "
                                "'subscribers', 1, '2026-01-01 08:00:00', '2026-01-01 08:00:00')"))
    assert runner.invoke(args=["db", "upgrade"]).exit_code == 0
    with engine.begin() as connection:
        row = connection.execute(text("SELECT default_frequency, teaser_words, default_visibility, free_articles, "
                                      "popup_scroll_percent, popup_delay_seconds, popup_snooze_days, digest_content "
                                      "FROM publication_settings")).one()
        assert tuple(row) == ("daily", 90, "subscribers", 3, 50, 45, 7, "full")
        connection.execute(text("UPDATE posts SET visibility = 'metered' WHERE slug = 'old'"))
    with pytest.raises(Exception, match="CHECK constraint failed"), engine.begin() as connection:
        connection.execute(text("UPDATE posts SET visibility = 'members' WHERE slug = 'old'"))
    assert runner.invoke(args=["db", "downgrade", "3b8f2d6e1a47"]).exit_code == 0
    with engine.begin() as connection:
        assert connection.execute(text("SELECT visibility FROM posts")).scalar_one() == "subscribers"
    engine.dispose()
