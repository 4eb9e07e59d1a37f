"""Admin JSON API under /api/v1, behind the Bearer admin token."""
from __future__ import annotations

import hmac

from flask import Blueprint, current_app, jsonify, request
from sqlalchemy import select

from ..digests import runs
from ..errors import ValidationError
from ..extensions import db
from ..models import STATUSES, Post, Subscriber
from ..publishing import posts, publication
from ..readers import subscriber_csv, subscriptions
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
        visibility=body.get("visibility", "subscribers"),
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
    """Subscribers, newest first, a page at a time (or every one as CSV with ?format=csv)."""
    if request.args.get("format") == "csv":
        return subscriber_csv.export_text(), 200, {
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": 'attachment; filename="subscribers.csv"',
        }
    query = select(Subscriber).order_by(Subscriber.id.desc())
    status = request.args.get("status")
    if status is not None:
        if status not in STATUSES:
            raise ValidationError(f"status must be one of {', '.join(STATUSES)}", field="status")
        query = query.where(Subscriber.status == status)
    page = db.paginate(query, page=_whole_number("page", 1, 1, MAX_PAGE),
                       per_page=_whole_number("per_page", 20, 1, 500), error_out=False)
    return jsonify(subscribers=[subscriptions.as_dict(s) for s in page.items],
                   page=page.page, per_page=page.per_page, total=page.total, pages=page.pages)


@bp.post("/subscribers/import")
def import_subscribers():
    """A CSV (columns email,name,status,subscribed_at) as the body or as the multipart field `file`."""
    request.max_content_length = 20 * 1024 * 1024  # a whole list, not a form
    upload = request.files.get("file")
    raw = upload.read() if upload else request.get_data()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError("the CSV must be UTF-8", field="file") from None
    return jsonify(subscriber_csv.import_text(text).as_dict())


@bp.get("/digests")
def list_digests():
    """Digest runs, newest first, with their delivery counts."""
    return jsonify(digests=runs.recent(_whole_number("limit", 50, 1, 500)))


@bp.post("/digests")
def create_digest():
    """Send a digest now to every confirmed subscriber with unseen posts (of one frequency if given)."""
    body = bodies.json_object(required=False)
    return jsonify(runs.summary(runs.send_now(body.get("frequency")))), 202
