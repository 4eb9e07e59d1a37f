"""Reader pages: the archive, articles (gated), the feed and the sitemap."""
from __future__ import annotations

from flask import Blueprint, make_response, render_template, request, url_for

from .. import access, content, posts, publication
from ..security import private

bp = Blueprint("reader", __name__)


@bp.get("/")
def archive():
    page = render_template("archive.html", posts=posts.published(), reader=access.current_reader())
    return private(make_response(page))


@bp.get("/p/<slug>")
def article(slug: str):
    post = posts.get_published(slug)
    link = access.article_link(request.args.get("t"), post)  # a digest's signed link opens it and signs in
    reader = link.reader or access.current_reader()
    allowed = access.can_read(reader, post)
    page = render_template(
        "article.html",
        post=post,
        reader=reader,
        allowed=allowed,
        link_expired=link.expired and not allowed,
        body_html=post.body_html if allowed else post.teaser_html,
        description=content.plain_text(post.teaser_html)[:300],
    )
    response = private(make_response(page))
    if link.reader:
        access.sign_in(response, link.reader)
    return response


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
