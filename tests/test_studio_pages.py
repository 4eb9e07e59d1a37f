"""The studio's pages with a signed-in publisher: posts (editor, previews, publish, schedule, delete), settings,
digests (runs, send now, preview, a test to the staff member). They call the admin API's domain functions, so
what one changes the other shows."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import time_machine
from sqlalchemy import select

from service.digests import runs
from service.extensions import db
from service.models import Post
from service.publishing import posts

from .conftest import wait_until
from .helpers import Reader, csrf_token, wait_outbox_sent
from .studio_helpers import Publisher, make_staff

BODY = "The ferry waits for the bread.\n\n<!--more-->\n\nThe skipper tried once to leave on time."


@pytest.fixture
def publisher(app, client) -> Publisher:
    make_staff(app)
    publisher = Publisher(client)
    assert publisher.sign_in().status_code == 303
    return publisher


def write(publisher, title="Harbour notes", body=BODY, visibility="subscribers", **extra):
    return publisher.form("/studio/posts/new", "/studio/posts/new", title=title, body=body, visibility=visibility,
                          action="save", **extra)


def stored(app, slug: str) -> Post | None:
    with app.app_context():
        post = db.session.scalar(select(Post).where(Post.slug == slug))
        db.session.expunge_all()
        return post


# --- posts ---

def test_write_a_draft_and_find_it_by_title(app, publisher, admin):
    answer = write(publisher)
    assert answer.status_code == 303 and answer.headers["Location"] == "/studio/posts/harbour-notes"
    admin.publish(title="Tide clocks", visibility="public")
    listing = publisher.client.get("/studio/posts").get_data(as_text=True)
    drafts, published = listing.split("<h2>Scheduled")[0], listing.split("<h2>Published")[1]
    assert "Harbour notes" in drafts and "Tide clocks" in published
    found = publisher.client.get("/studio/posts?q=HARBOUR").get_data(as_text=True)
    assert "Harbour notes" in found and "Tide clocks" not in found
    assert "No post matches." in publisher.client.get("/studio/posts?q=100%25").get_data(as_text=True)
    assert admin.get("/posts/harbour-notes").get_json()["published"] is False  # the API sees the same post


def test_the_editor_previews_without_saving_and_keeps_what_was_typed(app, publisher):
    write(publisher)
    answer = publisher.form("/studio/posts/harbour-notes", "/studio/posts/harbour-notes", title="Harbour notes",
                            body="# A heading\n\nNew *words* here.", visibility="subscribers", action="preview")
    page = answer.get_data(as_text=True)
    assert answer.status_code == 200 and "<h1>A heading</h1>" in page and "<em>words</em>" in page
    assert "New *words* here." in page  # the textarea keeps the Markdown typed
    assert stored(app, "harbour-notes").body == BODY


def test_an_invalid_edit_answers_on_the_form_with_the_text_kept(app, publisher, admin):
    write(publisher)
    admin.publish(title="Taken", slug="taken")
    answer = publisher.form("/studio/posts/harbour-notes", "/studio/posts/harbour-notes", title="Renamed",
                            body="Kept body", visibility="subscribers", slug="taken", action="save")
    page = answer.get_data(as_text=True)
    assert answer.status_code == 409 and "slug &#39;taken&#39; is taken" in page and "Kept body" in page
    assert stored(app, "harbour-notes").title == "Harbour notes"


def test_publish_now_then_unpublish(app, publisher, client):
    write(publisher)
    publisher.form("/studio/posts/harbour-notes", "/studio/posts/harbour-notes/publish")
    reader = app.test_client()
    page = reader.get("/p/harbour-notes").get_data(as_text=True)
    assert "The ferry waits" in page and "The skipper tried" not in page
    publisher.form("/studio/posts/harbour-notes", "/studio/posts/harbour-notes/unpublish")
    assert reader.get("/p/harbour-notes").status_code == 404
    assert stored(app, "harbour-notes").published_at is None


def test_delete_asks_for_confirmation(app, publisher):
    write(publisher)
    refused = publisher.form("/studio/posts/harbour-notes/delete", "/studio/posts/harbour-notes/delete")
    assert refused.status_code == 422 and "Tick the box" in refused.get_data(as_text=True)
    assert stored(app, "harbour-notes") is not None
    done = publisher.form("/studio/posts/harbour-notes/delete", "/studio/posts/harbour-notes/delete", confirm="yes")
    assert done.status_code == 303 and stored(app, "harbour-notes") is None


def test_the_anonymous_preview_is_the_page_an_anonymous_reader_gets(app, publisher, admin):
    admin.publish(title="Gated one", body=BODY)
    preview = publisher.client.get("/studio/posts/gated-one/preview/reader")
    anonymous = app.test_client().get("/p/gated-one")
    assert preview.status_code == 200 and preview.data == anonymous.data
    page = preview.get_data(as_text=True)
    assert "Subscribe to keep reading" in page and "The skipper tried" not in page
    assert "frame-ancestors 'self'" in preview.headers["Content-Security-Policy"]
    outer = publisher.client.get("/studio/posts/gated-one/preview").get_data(as_text=True)
    assert 'src="/studio/posts/gated-one/preview/reader"' in outer


def test_a_draft_can_be_previewed_as_readers_will_see_it(app, publisher):
    write(publisher)
    page = publisher.client.get("/studio/posts/harbour-notes/preview/reader").get_data(as_text=True)
    assert "The ferry waits" in page and "Subscribe to keep reading" in page and "The skipper tried" not in page
    assert stored(app, "harbour-notes").published is False  # previewing changes nothing


# --- scheduling ---

def test_schedule_in_the_publications_time_zone_and_beat_publishes_it(app, publisher):
    publisher.form("/studio/settings", "/studio/settings", name="The Slow Harbour", default_frequency="weekly",
                   send_hour="8", send_weekday="0", timezone="Europe/Paris", teaser_words="120")
    write(publisher)
    local = (datetime.now(ZoneInfo("Europe/Paris")) + timedelta(days=1)).replace(second=0, microsecond=0, tzinfo=None)
    answer = publisher.form("/studio/posts/harbour-notes", "/studio/posts/harbour-notes/schedule",
                            scheduled_at=local.isoformat(timespec="minutes"), action="schedule")
    assert answer.status_code == 303
    when = stored(app, "harbour-notes").scheduled_at
    assert when == local.replace(tzinfo=ZoneInfo("Europe/Paris"))
    listing = publisher.client.get("/studio/posts").get_data(as_text=True)
    assert "Harbour notes" in listing.split("<h2>Scheduled")[1].split("<h2>Published")[0]
    with app.app_context():
        assert posts.publish_due() == []
        with time_machine.travel(when + timedelta(seconds=1), tick=False):
            assert posts.publish_due() == ["harbour-notes"]
    post = stored(app, "harbour-notes")
    assert post.published and post.scheduled_at is None and post.published_at > when
    beat = app.extensions["celery"].conf.beat_schedule["publish-scheduled-posts"]
    assert beat["task"] == "service.tasks.publish_scheduled_posts"


def test_a_scheduled_post_goes_into_the_next_digest_of_its_cadence(app, publisher, client, mailbox, worker):
    reader = Reader(app.test_client(), "reader@example.org", mailbox)
    reader.subscribe()
    reader.confirm_from_mail()
    write(publisher)
    publisher.form("/studio/posts/harbour-notes", "/studio/posts/harbour-notes/schedule",
                   scheduled_at=(datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
                   action="schedule")
    with app.app_context(), time_machine.travel(timedelta(hours=2)):  # beat's next tick after the time
        assert posts.publish_due() == ["harbour-notes"]
        digest_id = runs.send_now().id  # the digest that follows, sent here rather than waiting for its hour
    wait_until(lambda: any("Harbour notes" in str(m.message["Subject"]) for m in reader.mailbox.to(reader.email)),
               60, "the digest with the scheduled post")
    with app.app_context():
        assert runs.settle(digest_id)["counts"]["sent"] == 1
    wait_outbox_sent(app)


def test_a_time_in_the_past_is_refused_on_the_form(app, publisher):
    write(publisher)
    answer = publisher.form("/studio/posts/harbour-notes", "/studio/posts/harbour-notes/schedule",
                            scheduled_at="2020-01-01T08:00", action="schedule")
    assert answer.status_code == 422 and "The scheduled time has passed" in answer.get_data(as_text=True)
    assert stored(app, "harbour-notes").scheduled_at is None


def test_cancel_a_schedule_and_publishing_clears_it(app, publisher):
    write(publisher)
    later = (datetime.now(timezone.utc) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M")
    publisher.form("/studio/posts/harbour-notes", "/studio/posts/harbour-notes/schedule", scheduled_at=later, action="schedule")
    publisher.form("/studio/posts/harbour-notes", "/studio/posts/harbour-notes/schedule", scheduled_at="", action="cancel")
    assert stored(app, "harbour-notes").state == "draft"
    publisher.form("/studio/posts/harbour-notes", "/studio/posts/harbour-notes/schedule", scheduled_at=later, action="schedule")
    publisher.form("/studio/posts/harbour-notes", "/studio/posts/harbour-notes/publish")
    post = stored(app, "harbour-notes")
    assert post.state == "published" and post.scheduled_at is None


def test_the_api_can_schedule_too(app, admin):
    admin.post("/posts", json={"title": "Later", "body": "x"})
    later = (datetime.now(timezone.utc) + timedelta(days=1)).replace(microsecond=0)
    answer = admin.patch("/posts/later", json={"scheduled_at": later.isoformat()})
    assert answer.status_code == 200 and answer.get_json()["scheduled_at"] == later.isoformat()
    assert admin.patch("/posts/later", json={"scheduled_at": "tomorrow"}).status_code == 422


# --- settings ---

SETTINGS = {"name": "Tide Notes", "default_frequency": "daily", "send_hour": "7", "send_weekday": "4",
            "timezone": "America/New_York", "teaser_words": "60", "blocked_domains": "spam.example\njunk.example",
            "embed_origins": "https://blog.example\nhttps://www.blog.example/"}


def test_settings_are_saved_through_the_same_rules_as_the_api(app, publisher, admin):
    answer = publisher.form("/studio/settings", "/studio/settings", **SETTINGS)
    assert answer.status_code == 303
    assert admin.get("/settings").get_json() == {
        "name": "Tide Notes", "default_frequency": "daily", "send_hour": 7, "send_weekday": 4,
        "timezone": "America/New_York", "teaser_words": 60, "blocked_domains": ["junk.example", "spam.example"],
        "embed_origins": ["https://blog.example", "https://www.blog.example"], "default_visibility": "subscribers",
        "popup_scroll_percent": 50, "popup_delay_seconds": 45, "popup_snooze_days": 7, "free_articles": 3,
        "digest_content": "full"}
    page = publisher.client.get("/studio/settings").get_data(as_text=True)
    assert "https://blog.example\nhttps://www.blog.example</textarea>" in page
    assert '&lt;script src=&#34;http://localhost/embed.js&#34; data-keepreading&gt;&lt;/script&gt;' in page


def test_embed_origins_from_the_studio_decide_who_may_frame_the_form(app, publisher, client):
    app.config["EMBED_ORIGINS"] = ["https://from-env.example"]
    assert "https://from-env.example" in client.get("/embed").headers["Content-Security-Policy"]  # seeded from the env
    publisher.form("/studio/settings", "/studio/settings", **SETTINGS)
    policy = client.get("/embed").headers["Content-Security-Policy"]
    ancestors = [part.strip() for part in policy.split(";") if part.strip().startswith("frame-ancestors")]
    assert ancestors == ["frame-ancestors 'self' https://blog.example https://www.blog.example"]


def test_a_bad_setting_answers_on_the_form_and_keeps_the_input(app, publisher):
    answer = publisher.form("/studio/settings", "/studio/settings", **{**SETTINGS, "embed_origins": "blog.example/path"})
    page = answer.get_data(as_text=True)
    assert answer.status_code == 422 and "is not an origin like https://blog.example" in page
    assert "blog.example/path</textarea>" in page and 'value="Tide Notes"' in page
    assert publisher.form("/studio/settings", "/studio/settings", **{**SETTINGS, "send_hour": "eight"}).status_code == 422


# --- digests ---

def test_send_a_digest_now_and_see_the_run_with_its_counts(app, publisher, mailbox, worker, admin):
    readers = [Reader(app.test_client(), f"r{n}@example.org", mailbox) for n in range(3)]
    for reader in readers:
        reader.subscribe()
        reader.confirm_from_mail()
    wait_outbox_sent(app)  # the welcome emails are out before the address starts to bounce
    mailbox.clear()
    mailbox.faults.by_recipient["r2@example.org"] = "550 5.1.1 no such user"
    admin.publish(title="A new letter")
    answer = publisher.form("/studio/digests", "/studio/digests", frequency="")
    assert answer.status_code == 303
    assert "is sending to 3 subscribers" in publisher.client.get("/studio/digests").get_data(as_text=True)
    with app.app_context():
        digest_id = runs.recent(1)[0]["id"]
        wait_until(lambda: runs.settle(digest_id)["finished_at"], 60, "the run to settle")
    row = publisher.client.get("/studio/digests").get_data(as_text=True).split("<tbody>")[1].split("</tr>")[0]
    cells = [cell.split(">", 1)[1] for cell in row.split("</td>")[:-1]]
    # started, recipients, sent, failed, bounced, skipped, waiting, duration
    assert [cell.split("<")[0].strip() for cell in cells[1:7]] == ["3", "2", "1", "1", "0", "0"]
    assert cells[7].strip().endswith(" s") or " min " in cells[7]


def test_preview_a_subscribers_next_digest_and_send_a_test_to_me(app, publisher, mailbox, worker, admin):
    reader = Reader(app.test_client(), "reader@example.org", mailbox)
    reader.subscribe()
    reader.confirm_from_mail()
    admin.publish(title="Since you joined")
    mailbox.clear()
    page = publisher.client.get("/studio/digests/preview?email=Reader@Example.org")
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and "reader@example.org" in text and "1 post published since their last one" in text
    assert "The Slow Harbour: Since you joined" in text
    html = publisher.client.get("/studio/digests/preview/mail?email=reader@example.org").get_data(as_text=True)
    assert "Since you joined" in html and "Hello," in html
    answer = publisher.client.post("/studio/digests/test", data={"csrf_token": csrf_token(page.data),
                                                                 "email": "reader@example.org"})
    assert answer.status_code == 303
    [mail] = mailbox.to("editor@example.org")  # sent while the request waited; a late welcome mail may be there too
    assert mail.message["Subject"] == "The Slow Harbour: Since you joined"
    assert "List-Unsubscribe" in mail.message and mail.message["To"] == "Edith <editor@example.org>"
    article = app.test_client().get("/p/since-you-joined?t=" + mail.text.split("?t=")[1].split()[0])
    assert "Subscribe to keep reading" in article.get_data(as_text=True)  # a test's link opens nobody's account
    wait_outbox_sent(app)


def test_preview_of_an_unknown_subscriber_says_so_on_the_form(app, publisher):
    page = publisher.client.get("/studio/digests/preview?email=nobody@example.org")
    assert page.status_code == 404 and "No subscriber has that address." in page.get_data(as_text=True)


def test_a_sample_digest_without_a_subscriber(app, publisher, admin):
    assert "nothing is published yet" in publisher.client.get("/studio/digests/preview").get_data(as_text=True)
    for n in range(4):
        admin.publish(title=f"Letter {n}")
    text = publisher.client.get("/studio/digests/preview").get_data(as_text=True)
    assert "A sample digest with the latest 3 posts." in text and "Letter 3 and 2 more new posts" in text
