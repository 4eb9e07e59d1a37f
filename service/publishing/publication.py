"""The publisher's settings row, read once per request."""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask import current_app, g, has_request_context
from sqlalchemy import update as sql_update
from sqlalchemy.dialects import postgresql, sqlite

from ..errors import ValidationError
from ..extensions import db
from ..models import DIGEST_CONTENTS, VISIBILITIES, PublicationSettings
from . import memory

EDITABLE = {
    "name": str,
    "default_frequency": str,
    "send_hour": int,
    "send_weekday": int,
    "timezone": str,
    "teaser_words": int,
    "blocked_domains": str,
    "embed_origins": str,
    "default_visibility": str,
    "popup_scroll_percent": int,
    "popup_delay_seconds": int,
    "popup_snooze_days": int,
    "free_articles": int,
    "digest_content": str,
}
LISTS = ("blocked_domains", "embed_origins")
PROBLEMS = {
    "default_visibility": "default_visibility must be one of " + ", ".join(VISIBILITIES),
    "popup_scroll_percent": "popup_scroll_percent must be a share of the article from 1 to 100",
    "popup_delay_seconds": "popup_delay_seconds must be from 0 (scrolling only) to 3600",
    "popup_snooze_days": "popup_snooze_days must be from 1 to 365",
    "free_articles": "free_articles must be from 0 to 100",
    "digest_content": "digest_content must be 'full' or 'teaser'",
}  # also taken as JSON lists, kept as comma-separated text


DEFAULTS = dict(default_frequency="weekly", send_hour=8, send_weekday=0, timezone="UTC", teaser_words=120,
                blocked_domains="", default_visibility="subscribers", popup_scroll_percent=50,
                popup_delay_seconds=45, popup_snooze_days=7, free_articles=3, digest_content="full")
# the row `db upgrade` inserts (migration 9c2f4b7e1d35) and the one `settings()` inserts when a schema made
# by create_all (the tests) has none


def settings() -> PublicationSettings:
    if has_request_context() and "publication" in g:
        return g.publication
    row = db.session.get(PublicationSettings, 1)
    if row is None:
        ensure_row()
        row = db.session.get(PublicationSettings, 1)
        assert row is not None
    if has_request_context():
        g.publication = row
    return row


def ensure_row() -> None:
    """Insert the settings row unless it is there: idempotent, so the first concurrent requests on an empty
    database (the migration inserts it; a schema made otherwise may lack it) do not race to a UNIQUE error."""
    dialect = postgresql if db.session.get_bind().dialect.name == "postgresql" else sqlite
    db.session.execute(dialect.insert(PublicationSettings).values(id=1, **DEFAULTS)
                       .on_conflict_do_nothing(index_elements=["id"]))
    db.session.commit()


def lock() -> None:
    """Serialise digest runs and publishing: the settings row is written (row lock on PostgreSQL, the
    write lock on SQLite) so a run's cutoff and a post's published_at are ordered by commit."""
    settings()
    db.session.execute(sql_update(PublicationSettings).where(PublicationSettings.id == 1).values(id=1))


def name() -> str:
    return memory.remember("publication-name", lambda: settings().name or current_app.config["PUBLICATION_NAME"])


@dataclass(frozen=True)
class Reading:
    """The settings the reading path asks on every article view, kept in the page memory."""

    free_articles: int  # metered articles a browser may read in full per rolling 30 days
    popup_scroll_percent: int  # the pop-up opens once this share of the article is scrolled...
    popup_delay_seconds: int  # ...or after this long on the page (0: scrolling only), whichever comes first
    popup_snooze_days: int  # and stays closed this long in a browser that closed it


def reading() -> Reading:
    return memory.remember("reading-settings", _reading)


def _reading() -> Reading:
    row = settings()
    return Reading(row.free_articles, row.popup_scroll_percent, row.popup_delay_seconds, row.popup_snooze_days)


def blocked_domains() -> frozenset[str]:
    return memory.remember("blocked-domains", _blocked_domains)


def _blocked_domains() -> frozenset[str]:
    return frozenset(part.lower() for part in _split(settings().blocked_domains or ""))


def zone() -> ZoneInfo:
    """The publisher's time zone: send hours, schedules and the studio's clocks are read in it."""
    return ZoneInfo(settings().timezone)


def embed_origins() -> list[str]:
    """Origins allowed to frame the signup form: the studio's setting, else KEEPREADING_EMBED_ORIGINS."""
    return memory.remember("embed-origins", _embed_origins)


def _embed_origins() -> list[str]:
    text = settings().embed_origins
    if text is None:
        return list(current_app.config["EMBED_ORIGINS"])
    return _split(text)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


def as_dict(row: PublicationSettings | None = None) -> dict:
    row = row or settings()
    return {
        "name": name(),
        "default_frequency": row.default_frequency,
        "send_hour": row.send_hour,
        "send_weekday": row.send_weekday,
        "timezone": row.timezone,
        "teaser_words": row.teaser_words,
        "blocked_domains": sorted(blocked_domains()),
        "embed_origins": embed_origins(),
        "default_visibility": row.default_visibility,
        "popup_scroll_percent": row.popup_scroll_percent,
        "popup_delay_seconds": row.popup_delay_seconds,
        "popup_snooze_days": row.popup_snooze_days,
        "free_articles": row.free_articles,
        "digest_content": row.digest_content,
    }


def update(changes: dict) -> PublicationSettings:
    """Validate and apply the publisher's changes (posts.update_settings also recuts the teasers)."""
    row = settings()
    changes = {field: ",".join(map(str, value)) if field in LISTS and isinstance(value, list) else value
               for field, value in changes.items()}
    for field, value in changes.items():
        _check(field, value)
        setattr(row, field, _stored(field, value))
    db.session.commit()
    return row


def _stored(field: str, value):
    """Embed origins are kept as browsers compare them in frame-ancestors (scheme://host[:port])."""
    if field == "embed_origins":
        return ",".join(_origin(each) for each in _split(value))
    return value


def _check(field: str, value) -> None:
    kind = EDITABLE.get(field)
    if kind is None:
        raise ValidationError(f"unknown setting {field!r}", field=field)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValidationError(f"{field} must be a {kind.__name__}", field=field)
    rules = {
        "default_frequency": lambda v: v in ("daily", "weekly"),
        "send_hour": lambda v: 0 <= v <= 23,
        "send_weekday": lambda v: 0 <= v <= 6,
        "teaser_words": lambda v: 10 <= v <= 2000,
        "timezone": _is_zone,
        "name": lambda v: 0 < len(v.strip()) <= 200,
        "default_visibility": lambda v: v in VISIBILITIES,
        "popup_scroll_percent": lambda v: 1 <= v <= 100,
        "popup_delay_seconds": lambda v: 0 <= v <= 3600,
        "popup_snooze_days": lambda v: 1 <= v <= 365,
        "free_articles": lambda v: 0 <= v <= 100,
        "digest_content": lambda v: v in DIGEST_CONTENTS,
    }
    if field in rules and not rules[field](value):
        raise ValidationError(PROBLEMS.get(field, f"{field} has an invalid value"), field=field)


def _origin(value: str) -> str:
    parts = urlsplit(value.strip().rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query or parts.fragment:
        raise ValidationError(f"{value!r} is not an origin like https://blog.example", field="embed_origins")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _is_zone(value: str) -> bool:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True
