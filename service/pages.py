"""A moment's memory for the hot reading path: rendered pages and reader look-ups, per app process.

Entries live PAGE_CACHE_SECONDS (default 2); every write in this process (posts, settings, a
subscriber's status) forgets them all at once, and other processes catch up when entries expire.
"""
from __future__ import annotations

import threading
from itertools import chain
from typing import Callable, Hashable, TypeVar

from cachetools import TTLCache
from flask import Flask, current_app, has_app_context
from sqlalchemy import event, inspect
from sqlalchemy.orm import Session

from .models import Post, PublicationSettings, Subscriber

T = TypeVar("T")
_MISSING = object()


class Memory:
    def __init__(self, seconds: float, size: int = 4096):
        self.cache: TTLCache | None = TTLCache(size, seconds) if seconds > 0 else None
        self.lock = threading.Lock()

    def remember(self, key: Hashable, build: Callable[[], T]) -> T:
        if self.cache is None:
            return build()
        with self.lock:
            value = self.cache.get(key, _MISSING)
        if value is _MISSING:
            value = build()
            with self.lock:
                self.cache[key] = value
        return value

    def forget_all(self) -> None:
        if self.cache is not None:
            with self.lock:
                self.cache.clear()


def init_app(app: Flask) -> None:
    app.extensions["page_memory"] = Memory(app.config["PAGE_CACHE_SECONDS"])


def remember(key: Hashable, build: Callable[[], T]) -> T:
    return current_app.extensions["page_memory"].remember(key, build)


def forget_all() -> None:
    if has_app_context() and "page_memory" in current_app.extensions:
        current_app.extensions["page_memory"].forget_all()


def _changes_what_pages_show(instance, session: Session) -> bool:
    """Posts and settings change pages; a subscriber does when their status or address changes or they go."""
    if isinstance(instance, (Post, PublicationSettings)):
        return True
    if not isinstance(instance, Subscriber) or instance in session.new:
        return False
    if instance in session.deleted:
        return True
    state = inspect(instance)
    return any(state.attrs[name].history.has_changes() for name in ("status", "email"))


@event.listens_for(Session, "after_flush")
def _note_changes(session: Session, _context) -> None:
    if any(_changes_what_pages_show(each, session) for each in chain(session.new, session.dirty, session.deleted)):
        session.info["pages_stale"] = True


@event.listens_for(Session, "after_commit")
def _forget_after_commit(session: Session) -> None:
    if session.info.pop("pages_stale", False):
        forget_all()
