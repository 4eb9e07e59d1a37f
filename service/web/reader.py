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


@bp.get("/")
def archive():
    signed_in = access.session_status() is not None
    return private(make_response(_kept(("archive", signed_in), lambda: _archive_page(signed_in))))


@bp.get("/p/<slug>")
def article(slug: str):
    if request.args.get("t"):
        return _article_from_link(slug)
    status = access.session_status()
    page = _kept(("article", slug, status), lambda: article_page(posts.get_published(slug), status))
    return private(make_response(page))


def _article_from_link(slug: str):
    """A digest's signed link opens the article and signs the reader in: never served from memory."""
    post = posts.get_published(slug)
    link = access.article_link(request.args.get("t"), post)
    reader = link.reader or access.current_reader()
    response = private(make_response(article_page(post, access.status_of(reader), link.expired)))
    if link.reader:
        access.sign_in(response, link.reader)
    return response


def article_page(post, status: str | None, link_expired: bool = False) -> str:
    """The page for a reader of this status: gating decided by the status the page is kept under."""
    allowed = access.can_read(status, post)
    return render_template(
        "article.html",
        post=post,
        allowed=allowed,
        link_expired=link_expired and not allowed,
        body_html=post.body_html if allowed else post.teaser_html,
        description=content.plain_text(post.teaser_html)[:300],
    )


def _archive_page(signed_in: bool) -> str:
    return render_template("archive.html", posts=posts.published(), signed_in_reader=signed_in)


def _kept(key, build) -> str:
    """A rendered page from memory, unless this request carries a flash message meant for it alone."""
    has_flashes = bool(request.cookies.get(current_app.config["SESSION_COOKIE_NAME"])) and "_flashes" in session
    return build() if has_flashes else memory.remember(key, build)


@bp.get("/feed.xml")
def feed():
    items = posts.published(limit=50)
    body = render_template("feed.xml", posts=items, updated=items[0].updated_at if items else None)
    response = make_response(body)
    response.headers["Content-Type"] = "application/atom+xml; charset=utf-8"
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.get("/sitemap.xml")
def sitemap():
    body = render_template("sitemap.xml", posts=posts.published())
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
