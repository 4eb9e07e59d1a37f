"""Publishing posts: create, edit, schedule, delete, list; HTML and teaser rendered once on save."""
from __future__ import annotations

import re
from datetime import datetime

from slugify import slugify
from sqlalchemy import func, select

from ..errors import Conflict, NotFound, ValidationError
from ..extensions import db
from ..models import VISIBILITIES, Post, PublicationSettings, utcnow
from . import content, publication

SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
FIELDS = {"title", "body", "visibility", "published", "slug", "scheduled_at"}


def create(title, body, visibility="subscribers", published=False, slug=None) -> Post:
    fields = _validated({"title": title, "body": body, "visibility": visibility, "published": published},
                        required=("title", "body"))
    if slug is not None:
        fields["slug"] = _valid_slug(slug)
        _ensure_free(fields["slug"])
    else:
        fields["slug"] = _free_slug(slugify(fields["title"], max_length=80) or "post")
    post = Post(**fields)
    _render(post)
    if post.published:
        publication.lock()
        post.published_at = utcnow()
    db.session.add(post)
    db.session.commit()
    return post


def update(slug: str, changes: dict) -> Post:
    post = get(slug)
    unknown = set(changes) - FIELDS
    if unknown:
        raise ValidationError(f"unknown field {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
    fields = _validated(changes)
    if "slug" in changes and changes["slug"] != post.slug:
        fields["slug"] = _valid_slug(changes["slug"])
        _ensure_free(fields["slug"])
    if "scheduled_at" in changes:
        fields["scheduled_at"] = _schedule_time(changes["scheduled_at"])
    for name, value in fields.items():
        setattr(post, name, value)
    if "body" in fields:
        _render(post)
    if post.published and post.published_at is None:
        publication.lock()
        post.published_at = utcnow()
    if post.published:
        post.scheduled_at = None  # published now: nothing left for beat to do
    else:
        post.published_at = None
    db.session.commit()
    return post


def publish_due(now: datetime | None = None) -> list[str]:
    """Beat's work: publish every draft whose scheduled time has come; their slugs.

    Published under the publication lock, stamped with the moment of publishing, like `update`: the
    next digest of each reader's cadence carries them."""
    due = (Post.published.is_(False), Post.scheduled_at <= (now or utcnow()))
    if db.session.scalar(select(Post.id).where(*due).limit(1)) is None:
        db.session.rollback()
        return []  # the common case: no write, no lock
    db.session.commit()
    publication.lock()
    posts = db.session.scalars(select(Post).where(*due)).all()
    for post in posts:
        post.published, post.published_at, post.scheduled_at = True, utcnow(), None
    db.session.commit()
    return [post.slug for post in posts]


def delete(slug: str) -> None:
    db.session.delete(get(slug))
    db.session.commit()


def get(slug: str) -> Post:
    post = db.session.scalar(select(Post).where(Post.slug == slug))
    if post is None:
        raise NotFound(f"no post with slug {slug!r}")
    return post


def get_published(slug: str) -> Post:
    post = db.session.scalar(select(Post).where(Post.slug == slug, Post.published.is_(True)))
    if post is None:
        raise NotFound("No such article.")
    return post


def published(limit: int | None = None) -> list[Post]:
    query = select(Post).where(Post.published.is_(True)).order_by(Post.published_at.desc(), Post.id.desc())
    return list(db.session.scalars(query.limit(limit)))


def every(title_contains: str | None = None) -> list[Post]:
    """Every post, newest first; only those whose title contains the words given, when given."""
    query = select(Post).order_by(Post.created_at.desc(), Post.id.desc())
    if title_contains and title_contains.strip():
        query = query.where(func.lower(Post.title).contains(title_contains.strip().lower(), autoescape=True))
    return list(db.session.scalars(query))


def preview(title, body, visibility="subscribers", slug=None) -> Post:
    """A post as it would be saved, rendered but never stored: for the editor's preview."""
    fields = _validated({"title": title, "body": body, "visibility": visibility}, required=("title", "body"))
    post = Post(**fields, slug=slug or slugify(fields["title"], max_length=80) or "post", published=False)
    _render(post)
    return post


def update_settings(changes: dict) -> PublicationSettings:
    """The publisher's settings changed, and every teaser recut when the word budget is one of them:
    posts follow the settings, so this lives here rather than the settings calling back into posts."""
    row = publication.update(changes)
    if "teaser_words" in changes:
        recut_teasers()
    return row


def recut_teasers() -> None:
    for post in db.session.scalars(select(Post)):
        _render(post)
    db.session.commit()


def _render(post: Post) -> None:
    post.body_html = content.render(post.body)
    post.teaser_html = content.teaser(post.body, publication.settings().teaser_words)


def _validated(values: dict, required: tuple[str, ...] = ()) -> dict:
    for name in required:
        if values.get(name) is None:
            raise ValidationError(f"{name} is required", field=name)
    checks = {
        "title": lambda v: isinstance(v, str) and 0 < len(v.strip()) <= 300,
        "body": lambda v: isinstance(v, str) and len(v) <= 500_000,
        "visibility": lambda v: v in VISIBILITIES,
        "published": lambda v: isinstance(v, bool),
    }
    out = {}
    for name, value in values.items():
        if name in ("slug", "scheduled_at"):  # checked on their own
            continue
        if not checks[name](value):
            raise ValidationError(_problem(name), field=name)
        out[name] = value.strip() if name == "title" else value
    return out


def _schedule_time(value) -> datetime | None:
    """A moment in the future (a datetime with its zone, or ISO 8601 text with an offset), or None: not scheduled."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            value = None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValidationError("scheduled_at must be a date and time with its time zone", field="scheduled_at")
    if value <= utcnow():
        raise ValidationError("The scheduled time has passed: choose a moment in the future.", field="scheduled_at")
    return value


def _problem(name: str) -> str:
    return {
        "title": "title must be a non-empty string of at most 300 characters",
        "body": "body must be a Markdown string",
        "visibility": "visibility must be 'public' or 'subscribers'",
        "published": "published must be true or false",
    }[name]


def _valid_slug(slug) -> str:
    if not isinstance(slug, str) or len(slug) > 200 or not SLUG.match(slug):
        raise ValidationError("slug must be lower-case letters, digits and single hyphens", field="slug")
    return slug


def _ensure_free(slug: str) -> None:
    if db.session.scalar(select(Post.id).where(Post.slug == slug)) is not None:
        raise Conflict(f"slug {slug!r} is taken", field="slug")


def _free_slug(base: str) -> str:
    taken = set(db.session.scalars(select(Post.slug).where(Post.slug.like(f"{base}%"))))
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"
