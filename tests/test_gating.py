"""Gating: the gated tail reaches only allowed readers, on no other channel."""
import json
import re

import pytest

from service import tokens
from service.extensions import db
from service.models import Subscriber, utcnow
from service.readers.access import COOKIE, session_token

TAIL = "the lighthouse keeper's secret recipe"
BODY = f"Opening lines anyone may read.\n\n<!--more-->\n\nThen {TAIL} follows."


@pytest.fixture
def gated(admin):
    admin.publish(title="A gated tale", body=BODY, visibility="subscribers")
    admin.publish(title="An open letter", body=f"Free to all, including {TAIL.replace('secret', 'public')}.",
                  visibility="public")
    return "/p/a-gated-tale"


def make_subscriber(app, email="reader@example.org", status="confirmed") -> tuple[int, str]:
    with app.app_context():
        reader = Subscriber(email=email, status=status, confirmed_at=utcnow() if status == "confirmed" else None)
        db.session.add(reader)
        db.session.commit()
        return reader.id, session_token(reader)


def test_anonymous_reader_sees_teaser_and_subscribe_block(client, gated):
    page = client.get(gated).get_data(as_text=True)
    assert "Opening lines anyone may read." in page
    assert TAIL not in page
    assert "Discover more from" in page and "Subscribe to keep reading" in page
    assert 'action="/subscribe"' in page and 'type="email"' in page
    assert 'name="next" value="/p/a-gated-tale"' in page


def test_meta_tags_and_json_ld_carry_no_gated_text(client, gated):
    page = client.get(gated).get_data(as_text=True)
    head = page.split("</head>")[0]
    assert "Opening lines" in head and TAIL not in head
    data = json.loads(re.search(r'<script type="application/ld\+json">(.*?)</script>', page, re.S).group(1))
    assert data["isAccessibleForFree"] is False
    assert data["hasPart"]["isAccessibleForFree"] is False
    assert data["hasPart"]["cssSelector"] == ".gated"


def test_public_post_is_shown_in_full_and_marked_free(client, gated):
    page = client.get("/p/an-open-letter").get_data(as_text=True)
    assert "Free to all" in page and "Subscribe to keep reading" not in page
    data = json.loads(re.search(r'<script type="application/ld\+json">(.*?)</script>', page, re.S).group(1))
    assert data["isAccessibleForFree"] is True


@pytest.mark.parametrize("path", ["/", "/feed.xml", "/sitemap.xml", "/api/v1/posts", "/api/v1/posts/a-gated-tale",
                                  "/api/v1/openapi.json", "/metrics", "/healthz"])
def test_no_other_channel_leaks_the_tail(client, gated, path):
    assert TAIL not in client.get(path).get_data(as_text=True)


def test_feed_has_teasers_for_gated_and_full_text_for_public(client, gated):
    feed = client.get("/feed.xml")
    assert feed.mimetype == "application/atom+xml"
    text = feed.get_data(as_text=True)
    assert "Opening lines anyone may read." in text
    assert "lighthouse keeper&#39;s public recipe" in text or "lighthouse keeper's public recipe" in text
    assert "http://localhost/p/a-gated-tale" in text


def test_sitemap_lists_published_posts(client, gated):
    text = client.get("/sitemap.xml").get_data(as_text=True)
    assert "<loc>http://localhost/p/a-gated-tale</loc>" in text and "<loc>http://localhost/p/an-open-letter</loc>" in text


def test_confirmed_reader_sees_everything(app, client, gated):
    _, cookie = make_subscriber(app)
    client.set_cookie(COOKIE, cookie)
    page = client.get(gated).get_data(as_text=True)
    assert TAIL in page and "Opening lines" in page
    assert "Subscribe to keep reading" not in page
    assert TAIL not in page.split("</head>")[0]


@pytest.mark.parametrize("status", ["pending", "unsubscribed", "deleted"])
def test_readers_who_are_not_confirmed_see_the_teaser(app, client, gated, status):
    _, cookie = make_subscriber(app, status=status)
    client.set_cookie(COOKIE, cookie)
    assert TAIL not in client.get(gated).get_data(as_text=True)


def test_tampered_or_foreign_cookies_see_the_teaser(app, client, gated):
    reader_id, cookie = make_subscriber(app)
    for bad in (cookie[:-2] + "xx", cookie + "x", "garbage", ""):
        client.set_cookie(COOKIE, bad)
        assert TAIL not in client.get(gated).get_data(as_text=True)
    with app.app_context():
        other_purpose = tokens.make("confirm", db.session.get(Subscriber, reader_id))
    client.set_cookie(COOKIE, other_purpose)
    assert TAIL not in client.get(gated).get_data(as_text=True)


def test_cookie_dies_when_the_email_changes(app, client, gated):
    reader_id, cookie = make_subscriber(app)
    with app.app_context():
        db.session.get(Subscriber, reader_id).email = "someone-else@example.org"
        db.session.commit()
    client.set_cookie(COOKIE, cookie)
    assert TAIL not in client.get(gated).get_data(as_text=True)


def test_cookie_signed_with_an_old_key_still_works(app, client, gated):
    _, cookie = make_subscriber(app)
    app.config["SECRET_KEY_FALLBACKS"] = [app.config["SECRET_KEY"]]
    app.config["SECRET_KEY"] = "a-brand-new-key"
    app.extensions.pop("keepreading_serializers", None)
    client.set_cookie(COOKIE, cookie)
    assert TAIL in client.get(gated).get_data(as_text=True)


@pytest.mark.parametrize("path", ["/", "/p/a-gated-tale", "/p/an-open-letter"])
def test_reader_dependent_pages_are_private_and_vary_on_cookie(client, gated, path):
    response = client.get(path)
    assert "private" in response.headers["Cache-Control"]
    assert "Cookie" in response.headers["Vary"]


def test_drafts_are_not_served(client, admin):
    admin.post("/posts", json={"title": "Draft", "body": "unfinished", "visibility": "public"})
    assert client.get("/p/draft").status_code == 404
    assert b"unfinished" not in client.get("/feed.xml").data


SHORT_OPENING = "A short note that opens plainly"
SHORT_ENDING = "and closes with the harbour master's confession"


def test_a_short_gated_post_keeps_its_ending_from_every_anonymous_channel(client, admin, runner):
    """Issue 9.6: shorter than the word budget and without <!--more-->, still only a teaser."""
    post = admin.publish(title="Short and gated", body=f"{SHORT_OPENING}.\n\nThen, {SHORT_ENDING}.")
    for path in ("/", "/feed.xml", f"/p/{post['slug']}"):
        page = client.get(path).get_data(as_text=True)
        assert SHORT_OPENING in page and SHORT_ENDING not in page, path
    assert post["teaser_warning"] is None
    single = admin.publish(title="One paragraph", body=f"{SHORT_OPENING} {SHORT_ENDING}.")
    page = client.get(f"/p/{single['slug']}").get_data(as_text=True)
    assert "A short note" in page and "confession" not in page
    public = admin.patch(f"/posts/{single['slug']}", json={"visibility": "public"}).get_json()
    assert "confession" in client.get(f"/p/{public['slug']}").get_data(as_text=True)


def test_api_and_cli_say_when_a_gated_teaser_is_most_of_the_post(client, admin, runner, tmp_path):
    body = f"{SHORT_OPENING} {SHORT_ENDING}, at length.\n\n<!--more-->\n\nBye."
    late = admin.publish(title="Late marker", body=body)
    assert "teaser shows 9" in late["teaser_warning"]
    assert admin.get(f"/posts/{late['slug']}").get_json()["teaser_warning"] == late["teaser_warning"]
    assert admin.publish(title="Open late marker", body=body, visibility="public")["teaser_warning"] is None
    source = tmp_path / "late.md"
    source.write_text(body, encoding="utf-8")
    added = runner.invoke(args=["posts", "add", "--title", "From the CLI", "--file", str(source)])
    assert added.exit_code == 0 and "warning: The teaser shows" in added.stderr
    listed = runner.invoke(args=["posts", "list"]).output.splitlines()
    assert sum("warning: The teaser shows" in line for line in listed) == 2


# --- access modes (issue 12): metered posts once the browser's free articles are spent, popup posts ---

METERED_TAIL = "the pilot's second logbook"


@pytest.fixture
def spent_meter(admin, client):
    """Three metered posts read in full, then a fourth whose tail this browser may no longer read."""
    for n in range(1, 4):
        admin.publish(title=f"Free sample {n}", body=f"Sample {n}.\n\n<!--more-->\n\nMore of sample {n}.",
                      visibility="metered")
        assert f"More of sample {n}" in client.get(f"/p/free-sample-{n}").get_data(as_text=True)
    admin.publish(title="Past the meter", body=f"Opening of the fourth.\n\n<!--more-->\n\nThen {METERED_TAIL}.",
                  visibility="metered")
    return "/p/past-the-meter"


def test_a_spent_meter_gets_the_teaser_and_the_subscribe_block(client, spent_meter):
    page = client.get(spent_meter).get_data(as_text=True)
    assert "Opening of the fourth." in page and METERED_TAIL not in page
    assert "Subscribe to keep reading" in page and 'name="next" value="/p/past-the-meter"' in page


@pytest.mark.parametrize("path", ["/", "/feed.xml", "/sitemap.xml", "/api/v1/posts", "/api/v1/posts/past-the-meter",
                                  "/p/free-sample-1", "/p/past-the-meter"])
def test_no_other_channel_leaks_a_metered_tail_once_the_meter_is_spent(client, spent_meter, path):
    assert METERED_TAIL not in client.get(path).get_data(as_text=True)


def test_meta_tags_of_a_metered_post_carry_no_gated_text(client, admin):
    admin.publish(title="Metered", body=f"Opening.\n\n<!--more-->\n\nThen {METERED_TAIL}.", visibility="metered")
    page = client.get("/p/metered").get_data(as_text=True)
    assert METERED_TAIL in page  # a fresh meter reads it...
    assert METERED_TAIL not in page.split("</head>")[0]  # ...never in the head


def test_popup_posts_are_public_by_nature_in_every_channel(client, admin):
    admin.publish(title="Invited", body=f"Opening.\n\n<!--more-->\n\nThen {TAIL.replace('secret', 'shared')}.",
                  visibility="popup")
    feed = client.get("/feed.xml").get_data(as_text=True)
    assert '<category term="popup"' in feed and "shared recipe" in feed
    assert "shared recipe" in client.get("/p/invited").get_data(as_text=True)
