"""The archive in keyset pages (`/?before=…`, `/?after=…`, rel=next/prev) and a feed of bounded size."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from sqlalchemy import insert, select, update

from service.extensions import db
from service.models import Post
from service.publishing import posts
from service.web.reader import ARCHIVE_PAGE_SIZE

from .test_page_memory import Statements

START = datetime(2026, 1, 1, 8, 0, tzinfo=timezone.utc)
TITLE = re.compile(r'<h2><a href="/p/([a-z0-9-]+)">')
LINK = re.compile(r'<link rel="(next|prev)" href="([^"]+)">')


def many_posts(app, count: int, drafts: int = 0) -> list[str]:
    """`count` published posts an hour apart (posts 10 and 11 at the same moment), newest first by slug."""
    with app.app_context():
        app.config["PAGE_CACHE_SECONDS"] = 0
        post = posts.create("Template", "Some *words* here.", "public", True)
        rows = [{"slug": f"post-{n:05d}", "title": f"Post {n}", "body": "Words.", "body_html": "<p>Words.</p>",
                 "teaser_html": "<p>Words.</p>", "visibility": "public", "published": n < count,
                 "published_at": START + timedelta(hours=n - (n == 11)) if n < count else None,
                 "created_at": START, "updated_at": START}
                for n in range(count + drafts)]
        db.session.execute(insert(Post), rows)
        db.session.execute(update(Post).where(Post.id == post.id).values(published=False))
        db.session.commit()
        order = db.session.scalars(select(Post.slug).where(Post.published.is_(True))
                                   .order_by(Post.published_at.desc(), Post.id.desc())).all()
    return list(order)


def page(client, url: str) -> tuple[list[str], dict[str, str]]:
    response = client.get(url)
    assert response.status_code == 200, url
    text = response.get_data(as_text=True)
    head, body = text.split("</head>", 1)
    links = {rel: href.replace("&amp;", "&") for rel, href in LINK.findall(head)}
    shown = {rel: href.replace("&amp;", "&") for rel, href in re.findall(r'<a rel="(next|prev)" href="([^"]+)">', body)}
    assert links == shown  # the page's own links say what its head says
    return TITLE.findall(body), links


def test_every_post_once_in_order_through_the_older_links_and_back(app, client):
    order = many_posts(app, 47, drafts=3)
    seen, url, visited = [], "/", []
    while url:
        slugs, links = page(client, url)
        assert len(slugs) == ARCHIVE_PAGE_SIZE or "next" not in links
        assert ("prev" in links) == (url != "/")
        visited.append((url, slugs))
        seen += slugs
        url = links.get("next")
    assert seen == order and len(visited) == 3  # 20 + 20 + 7; the drafts on no page
    url = visited[-1][0]  # and back from the last page through the newer links: the same pages
    for expected in reversed([slugs for _, slugs in visited[:-1]]):
        url = page(client, url)[1]["prev"]
        assert page(client, url)[0] == expected
    assert "prev" not in page(client, url)[1]  # the newest page, reached from the second


def test_a_page_link_keeps_its_posts_when_new_ones_are_published(app, client):
    many_posts(app, 45)
    _, links = page(client, "/")
    second, _ = page(client, links["next"])
    with app.app_context():
        posts.create("Breaking news", "Words.", "public", True)
    assert page(client, links["next"])[0] == second  # an offset would have shifted by one
    assert "breaking-news" in page(client, "/")[0]


def test_bad_and_spent_cursors_are_not_found(app, client):
    many_posts(app, 5)
    for cursor in ("x", "12-", "-5", "99999999999999999999999-1", "1-2-3"):
        assert client.get(f"/?before={cursor}").status_code == 404, cursor
    assert client.get("/?before=1-1").status_code == 404  # older than every post: an empty page
    assert client.get("/").status_code == 200 and "next" not in page(client, "/")[1]


def test_a_deep_page_takes_the_statements_of_the_first(app, client):
    many_posts(app, 205)
    url, pages = "/", []
    while url:
        with Statements(app) as counted:
            slugs, links = page(client, url)
        pages.append(counted.count)
        url = links.get("next")
    assert len(pages) == 11 and max(pages[1:]) <= pages[0] + 1  # the deep pages ask also whether newer posts exist


def test_the_feed_and_sitemap(app, client):
    order = many_posts(app, 60)
    feed = client.get("/feed.xml").get_data(as_text=True)
    assert feed.count("<entry>") == 50 and f"/p/{order[0]}</id>" in feed and f"/p/{order[50]}<" not in feed
    sitemap = client.get("/sitemap.xml").get_data(as_text=True)
    assert sitemap.count("<url>") == 61 and all(f"/p/{slug}</loc>" in sitemap for slug in order)
