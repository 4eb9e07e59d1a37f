"""A moment's memory for the hot reading path: rendered pages and reader look-ups, per app process.

Entries live PAGE_CACHE_SECONDS (default 2); every write in this process (posts, settings, a
subscriber's status, address or session epoch) forgets them all at once, and other processes catch up
when entries expire: a session revoked in one process may read gated posts in another for up to
PAGE_CACHE_SECONDS more (never the account pages, which look the reader up on every request).
"""
from __future__ import annotations

import threading
import time
from itertools import chain
from typing import Any, Callable, Hashable, TypeVar

from flask import Flask, current_app, has_app_context
from sqlalchemy import event, inspect
from sqlalchemy.orm import Session

from ..models import Post, PublicationSettings, Subscriber

T = TypeVar("T")


class Memory:
    """Values kept `seconds`. When one expires, a single caller rebuilds it while the others keep
    serving the previous value, so a busy page is never rendered by every thread at once."""

    def __init__(self, seconds: float, size: int = 4096, clock: Callable[[], float] = time.monotonic):
        self.seconds, self.size, self.clock = seconds, size, clock
        self.entries: dict[Hashable, tuple[Any, float]] = {}  # key -> (value, fresh until): its key's build made it
        self.rebuilding: set[Hashable] = set()
        self.generation = 0  # moves on every forget_all: a value built before it is not kept
        self.lock = threading.Lock()

    def remember(self, key: Hashable, build: Callable[[], T]) -> T:
        if self.seconds <= 0:
            return build()
        with self.lock:
            entry = self.entries.get(key)
            if entry is not None and (entry[1] > self.clock() or key in self.rebuilding):
                return entry[0]
            self.rebuilding.add(key)
            generation = self.generation
        try:
            value = build()
        finally:
            with self.lock:
                self.rebuilding.discard(key)
        with self.lock:
            if generation == self.generation:
                if len(self.entries) >= self.size:
                    self.entries.clear()
                self.entries[key] = (value, self.clock() + self.seconds)
        return value

    def forget_all(self) -> None:
        with self.lock:
            self.entries.clear()
            self.generation += 1


def init_app(app: Flask) -> None:
    app.extensions["page_memory"] = Memory(app.config["PAGE_CACHE_SECONDS"])


def remember(key: Hashable, build: Callable[[], T]) -> T:
    return current_app.extensions["page_memory"].remember(key, build)


def forget_all() -> None:
    if has_app_context() and "page_memory" in current_app.extensions:
        current_app.extensions["page_memory"].forget_all()


def _changes_what_pages_show(instance: object, session: Session) -> bool:
    """Posts and settings change pages; a subscriber does when their status, address or session epoch (a
    revoked session) changes, or they go."""
    if isinstance(instance, (Post, PublicationSettings)):
        return True
    if not isinstance(instance, Subscriber) or instance in session.new:
        return False
    if instance in session.deleted:
        return True
    state = inspect(instance)
    return any(state.attrs[name].history.has_changes() for name in ("status", "email", "session_epoch"))


@event.listens_for(Session, "after_flush")
def _note_changes(session: Session, _context) -> None:
    if any(_changes_what_pages_show(each, session) for each in chain(session.new, session.dirty, session.deleted)):
        session.info["pages_stale"] = True


@event.listens_for(Session, "after_commit")
def _forget_after_commit(session: Session) -> None:
    if session.info.pop("pages_stale", False):
        forget_all()
