"""Publishing posts: create, edit, schedule, delete, list; HTML and teaser rendered once on save."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from flask import g, has_request_context
from slugify import slugify
from sqlalchemy import func, select, tuple_

from ..errors import Conflict, NotFound, ValidationError
from ..extensions import db
from ..models import GATED_VISIBILITIES, VISIBILITIES, Post, PublicationSettings, utcnow
from . import content, memory, publication

SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
FIELDS = {"title", "body", "visibility", "published", "slug", "scheduled_at"}
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
TEASER_WARNING_SHARE = 0.5  # a gated teaser past half of the words is "most of it"
# The four access modes as the publisher reads them (README "Access modes").
VISIBILITY_LABELS = {
    "public": "Everyone",
    "subscribers": "Subscribers",
    "popup": "Everyone, with a subscribe pop-up",
    "metered": "Metered",
}


def create(title, body, visibility=None, published=False, slug=None) -> Post:
    """A new post; without a visibility, the publication's default for new posts."""
    visibility = publication.settings().default_visibility if visibility is None else visibility
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
    if "body" in fields or "visibility" in fields:
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


@dataclass(frozen=True)
class Gate:
    """A published post as the reading path first asks after it (its page may be kept for the reader's access)."""

    id: int
    slug: str
    visibility: str

    @property
    def is_gated(self) -> bool:
        return self.visibility in GATED_VISIBILITIES


def gate(slug: str) -> Gate:
    """From the page memory; a post read for it is kept for this request, for the page that follows."""
    return memory.remember(("gate", slug), lambda: _gate(get_published(slug)))


def _gate(post: Post) -> Gate:
    if has_request_context():
        g.setdefault("posts_read", {})[post.id] = post  # the session's identity map holds rows only weakly
    return Gate(post.id, post.slug, post.visibility)


def published_by_id(post_id: int) -> Post:
    post = g.get("posts_read", {}).get(post_id) if has_request_context() else None
    post = post or db.session.get(Post, post_id)
    if post is None or not post.published:
        raise NotFound("No such article.")
    return post


@dataclass(frozen=True)
class Listed:
    """A line of the "Latest posts" list."""

    id: int
    slug: str
    title: str
    published_at: datetime | None  # set on every published post


def latest(excluding: int | None = None, count: int = 5) -> list[Listed]:
    """The newest published posts but one, for the list beside an article."""
    newest = memory.remember(("latest", count + 1), lambda: [
        Listed(*row) for row in db.session.execute(
            select(Post.id, Post.slug, Post.title, Post.published_at).where(Post.published.is_(True))
            .order_by(Post.published_at.desc(), Post.id.desc()).limit(count + 1))])
    return [each for each in newest if each.id != excluding][:count]


def published(limit: int | None = None) -> list[Post]:
    query = select(Post).where(Post.published.is_(True)).order_by(Post.published_at.desc(), Post.id.desc())
    return list(db.session.scalars(query.limit(limit)))


def in_sitemap() -> list[tuple[str, datetime]]:
    """(slug, updated_at) of every published post: the sitemap reads no post bodies."""
    return [(row.slug, row.updated_at) for row in db.session.execute(
        select(Post.slug, Post.updated_at).where(Post.published.is_(True))
        .order_by(Post.published_at.desc(), Post.id.desc()))]


@dataclass(frozen=True)
class ArchivePage:
    """One page of the archive, newest first, with the cursors of the pages beside it (None: there is none)."""

    posts: list[Post]
    newer: str | None
    older: str | None


def cursor(post: Post) -> str:
    """A post's place in the archive, `<microseconds since 1970>-<id>`: a link to the page before or after it
    stays right while posts are added, edited or deleted."""
    moment = post.published_at or EPOCH
    moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return f"{(moment - EPOCH) // timedelta(microseconds=1)}-{post.id}"


def _place(value: str) -> tuple[datetime, int]:
    try:
        micros, post_id = (int(part) for part in value.split("-", 1))
        return EPOCH + timedelta(microseconds=micros), post_id
    except (ValueError, OverflowError, OSError):
        raise NotFound("No such page of the archive.") from None


def archive_page(before: str | None = None, after: str | None = None, size: int = 20) -> ArchivePage:
    """The `size` published posts older than `before` (or newer than `after`, or the newest): a keyset page, so
    page 500 costs what page 1 does."""
    place = tuple_(Post.published_at, Post.id)
    query = select(Post).where(Post.published.is_(True))
    if after:
        rows = list(db.session.scalars(query.where(place > _place(after))
                                       .order_by(Post.published_at, Post.id).limit(size + 1)))
        more_newer, rows = len(rows) > size, rows[:size][::-1]
        more_older = bool(rows) and _exists(query.where(place < (rows[-1].published_at, rows[-1].id)))
    else:
        if before:
            query = query.where(place < _place(before))
        rows = list(db.session.scalars(query.order_by(Post.published_at.desc(), Post.id.desc()).limit(size + 1)))
        more_older, rows = len(rows) > size, rows[:size]
        more_newer = bool(before) and bool(rows) and _exists(
            select(Post).where(Post.published.is_(True), place > (rows[0].published_at, rows[0].id)))
    if (before or after) and not rows:
        raise NotFound("No such page of the archive.")
    return ArchivePage(rows, cursor(rows[0]) if more_newer else None, cursor(rows[-1]) if more_older else None)


def _exists(query) -> bool:
    return db.session.scalar(select(query.exists())) or False


def every(title_contains: str | None = None) -> list[Post]:
    """Every post, newest first; only those whose title contains the words given, when given."""
    query = select(Post).order_by(Post.created_at.desc(), Post.id.desc())
    if title_contains and title_contains.strip():
        query = query.where(func.lower(Post.title).contains(title_contains.strip().lower(), autoescape=True))
    return list(db.session.scalars(query))


def preview(title, body, visibility=None, slug=None) -> Post:
    """A post as it would be saved, rendered but never stored: for the editor's preview."""
    visibility = publication.settings().default_visibility if visibility is None else visibility
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


def teaser_warning(post: Post) -> str | None:
    """Said to the publisher when a gated post's teaser gives most of it away (a late <!--more-->)."""
    share = content.shown_share(post.teaser_html, post.body_html)
    if not post.is_gated or share <= TEASER_WARNING_SHARE:
        return None
    kind = "subscriber-only" if post.for_subscribers_only else "metered"
    return (f"The teaser shows {share:.0%} of this {kind} post to everyone; "
            "move <!--more--> earlier to keep more of it for subscribers.")


def _render(post: Post) -> None:
    post.body_html = content.render(post.body)
    post.teaser_html = content.teaser(post.body, publication.settings().teaser_words, gated=post.is_gated)


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
        "visibility": "visibility must be one of " + ", ".join(f"'{each}'" for each in VISIBILITIES),
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
