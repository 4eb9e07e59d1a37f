"""Reader pages: the archive, articles (gated), the feed and the sitemap."""
from __future__ import annotations

from flask import (
    Blueprint,
    current_app,
    make_response,
    render_template,
    request,
    session,
    url_for,
)

from ..publishing import content, memory, posts, publication
from ..readers import access
from .headers import private

bp = Blueprint("reader", __name__)
ARCHIVE_PAGE_SIZE = 20
# Each feed entry says what kind of post it is: popup posts are public by nature, and carry their full text.
FEED_LABELS = {
    "public": "Free to read",
    "popup": "Free to read (the page invites readers to subscribe)",
    "subscribers": "For subscribers: the teaser only",
    "metered": "A few free articles a month, then for subscribers: the teaser only",
}


@bp.get("/")
def archive():
    """The archive, ARCHIVE_PAGE_SIZE posts a page: `/?before=<cursor>` older, `/?after=<cursor>` newer."""
    signed_in = access.session_status() is not None
    before, after = request.args.get("before") or None, request.args.get("after") or None
    key = ("archive", signed_in, before, after)
    return private(make_response(_kept(key, lambda: _archive_page(signed_in, before, after))))


@bp.get("/p/<slug>")
def article(slug: str):
    if request.args.get("t"):
        return _article_from_link(slug)
    status, signed_in = access.reading_status(), access.session_status() is not None  # a pass is not signed in
    gate = posts.gate(slug)
    reading = access.article_access(status, gate)
    # Everything the page shows of the reader is in the key: their status, and for a metered post whether it is
    # open to them and how many free articles it leaves (a spent meter is never served a full page).
    key = ("article", slug, status, signed_in, reading.allowed, reading.meter.left if reading.meter else None)
    page = _kept(key, lambda: article_page(posts.published_by_id(gate.id), status, meter=reading.meter))
    response = private(make_response(page))
    if reading.counted and reading.meter:
        access.keep_meter(response, reading.meter)
    return response


def _article_from_link(slug: str):
    """A digest's signed link opens its article, and never signs anyone in: a forwarded email must not hand
    over the account, nor replace the session of whoever is signed in here. Without a session, the browser
    gets a reading pass (other gated posts for a while, no account). Never served from memory."""
    post = posts.get_published(slug)
    link = access.article_link(request.args.get("t"), post)
    status = link.reader.status if link.reader else access.reading_status()
    reading = access.article_access(status, post)
    response = private(make_response(article_page(post, status, link.expired, reading.meter)))
    if link.reader and access.current_reader() is None:
        access.give_reading_pass(response, link.reader)
    if reading.counted and reading.meter:
        access.keep_meter(response, reading.meter)
    return response


def article_page(post, status: str | None, link_expired: bool = False, meter: access.Meter | None = None) -> str:
    """The page for a reader of this status (and this browser's meter, after this view, for a metered post):
    gating decided by what the page is kept under."""
    allowed = access.can_read(status, post, meter)
    invited = not access.subscribed(status)
    return render_template(
        "article.html",
        post=post,
        allowed=allowed,
        link_expired=link_expired and not allowed,
        body_html=post.body_html if allowed else post.teaser_html,
        description=content.plain_text(post.teaser_html)[:300],
        meter_notice=_meter_notice(meter, allowed),
        invite_at_end=invited and allowed and post.visibility in ("popup", "metered"),
        popup=publication.reading() if invited and post.visibility == "popup" else None,
        latest=posts.latest(excluding=post.id),
    )


def _meter_notice(meter: access.Meter | None, allowed: bool) -> str | None:
    """What a metered page tells its reader about their free articles (None: not metered for them)."""
    if meter is None:
        return None
    articles = f"{meter.limit} free article{'s' if meter.limit != 1 else ''}"
    if not allowed:
        return f"You have read your {articles} this month." if meter.limit else None
    return f"{meter.left} of {articles} left this month."


def _archive_page(signed_in: bool, before: str | None, after: str | None) -> str:
    page = posts.archive_page(before, after, ARCHIVE_PAGE_SIZE)
    return render_template("archive.html", page=page, posts=page.posts, signed_in_reader=signed_in,
                           first_page=not (before or after))


def _kept(key, build) -> str:
    """A rendered page from memory, unless this request carries a flash message meant for it alone."""
    has_flashes = bool(request.cookies.get(current_app.config["SESSION_COOKIE_NAME"])) and "_flashes" in session
    return build() if has_flashes else memory.remember(key, build)


@bp.get("/feed.xml")
def feed():
    items = posts.published(limit=50)
    body = render_template("feed.xml", posts=items, updated=items[0].updated_at if items else None,
                           feed_labels=FEED_LABELS)
    response = make_response(body)
    response.headers["Content-Type"] = "application/atom+xml; charset=utf-8"
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.get("/sitemap.xml")
def sitemap():
    body = render_template("sitemap.xml", posts=posts.in_sitemap())
    response = make_response(body)
    response.headers["Content-Type"] = "application/xml; charset=utf-8"
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.app_context_processor
def publication_context():
    return {"publication_name": publication.name(), "absolute": absolute_url}


def absolute_url(endpoint: str, **values) -> str:
    """Links that leave the site are built from BASE_URL, never from the request's Host."""
    from flask import current_app

    return current_app.config["BASE_URL"] + url_for(endpoint, _external=False, **values)
