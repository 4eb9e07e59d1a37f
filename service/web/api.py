"""Admin JSON API under /api/v1, behind the Bearer admin token."""
from __future__ import annotations

import hmac

from flask import Blueprint, current_app, jsonify, request, stream_with_context
from sqlalchemy import select

from ..digests import runs
from ..errors import ValidationError
from ..extensions import db
from ..models import Post, Subscriber
from ..publishing import posts, publication
from ..readers import subscriber_csv, subscriber_list, subscriptions
from ..studio import stats
from . import bodies, openapi
from .reader import absolute_url

bp = Blueprint("api", __name__)
MAX_PAGE = 1_000_000


@bp.before_request
def require_admin_token():
    if request.endpoint == "api.spec":
        return None
    expected = current_app.config.get("ADMIN_TOKEN") or ""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if not expected or scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        response = jsonify(error="unauthorized", message="a valid Bearer admin token is required")
        response.headers["WWW-Authenticate"] = 'Bearer realm="keepreading"'
        return response, 401
    return None


@bp.after_request
def no_store(response):
    response.headers["Cache-Control"] = "no-store"
    return response


def _whole_number(name: str, default: int, lowest: int, highest: int) -> int:
    """A query parameter that must be a whole number in range (huge ones overflow the database's integers)."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not lowest <= int(raw) <= highest:
        raise ValidationError(f"{name} must be a whole number from {lowest} to {highest}", field=name)
    return int(raw)


def json_body() -> dict:
    return bodies.json_object()


def post_json(post: Post) -> dict:
    return {
        "slug": post.slug,
        "title": post.title,
        "url": absolute_url("reader.article", slug=post.slug),
        "visibility": post.visibility,
        "published": post.published,
        "published_at": post.published_at.isoformat() if post.published_at else None,
        "scheduled_at": post.scheduled_at.isoformat() if post.scheduled_at else None,
        "updated_at": post.updated_at.isoformat(),
        "body": post.body,
        "teaser_warning": posts.teaser_warning(post),
    }


@bp.get("/openapi.json")
def spec():
    return jsonify(openapi.document(current_app.config["BASE_URL"]))


@bp.get("/posts")
def list_posts():
    return jsonify(posts=[post_json(post) for post in posts.every()])


@bp.post("/posts")
def create_post():
    body = json_body()
    post = posts.create(
        title=body.get("title"),
        body=body.get("body"),
        visibility=body.get("visibility"),  # absent: the publication's default_visibility
        published=body.get("published", False),
        slug=body.get("slug"),
    )
    return jsonify(post_json(post)), 201


@bp.get("/posts/<slug>")
def get_post(slug: str):
    return jsonify(post_json(posts.get(slug)))


@bp.patch("/posts/<slug>")
def update_post(slug: str):
    return jsonify(post_json(posts.update(slug, json_body())))


@bp.delete("/posts/<slug>")
def delete_post(slug: str):
    posts.delete(slug)
    return "", 204


@bp.get("/settings")
def get_settings():
    return jsonify(publication.as_dict())


@bp.patch("/settings")
def update_settings():
    return jsonify(publication.as_dict(posts.update_settings(json_body())))


@bp.get("/subscribers")
def list_subscribers():
    """Subscribers, newest first: keyset pages with ?after=<id> (next_after in each answer; A to Z with ?q=), numbered
    pages with ?page=N (and the total), or every one as CSV with ?format=csv. ?status= and ?q= (the address's start) filter."""
    if request.args.get("format") == "csv":
        return stream_with_context(subscriber_csv.export_chunks()), 200, {
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": 'attachment; filename="subscribers.csv"',
        }
    search, status = request.args.get("q", ""), request.args.get("status")
    per_page = _whole_number("per_page", 20, 1, 500)
    after = _whole_number("after", 0, 0, 2**62) if "after" in request.args else None
    if after is not None and "page" not in request.args:
        found = subscriber_list.page(search, status, after=after, size=per_page)
        return jsonify(subscribers=[subscriptions.as_dict(s) for s in found.subscribers], per_page=per_page,
                       next_after=found.older)
    query = select(Subscriber).where(*subscriber_list.conditions(search, status)).order_by(Subscriber.id.desc())
    page = db.paginate(query, page=_whole_number("page", 1, 1, MAX_PAGE), per_page=per_page, error_out=False)
    return jsonify(subscribers=[subscriptions.as_dict(s) for s in page.items], page=page.page,
                   per_page=page.per_page, total=page.total, pages=page.pages,
                   next_after=page.items[-1].id if page.has_next else None)


@bp.post("/subscribers/import")
def import_subscribers():
    """A CSV (columns email,name,status,subscribed_at) as the body or as the multipart field `file`."""
    request.max_content_length = 20 * 1024 * 1024  # a whole list, not a form
    upload = request.files.get("file")
    return jsonify(subscriber_csv.import_binary(upload.stream if upload else request.stream).as_dict())


@bp.get("/stats")
def get_stats():
    """The dashboard's figures: per day over the last ?days= (31 to 366, 90 by default), headline numbers, sources."""
    return jsonify(stats.as_dict(stats.dashboard(request.args.get("days", 90, type=int))))


@bp.get("/digests")
def list_digests():
    """Digest runs, newest first, with their delivery counts."""
    return jsonify(digests=runs.recent(_whole_number("limit", 50, 1, 500)))


@bp.post("/digests")
def create_digest():
    """Send a digest now to every confirmed subscriber with unseen posts (of one frequency if given)."""
    body = bodies.json_object(required=False)
    return jsonify(runs.summary(runs.send_now(body.get("frequency")))), 202
