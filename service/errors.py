"""Domain errors, and the one handler that maps them to HTTP as HTML or JSON."""
from __future__ import annotations

import contextlib
import functools
import html
import logging
import math
import time
from datetime import datetime, timedelta, timezone

import sqlalchemy.exc
from flask import Flask, current_app, g, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, TooManyRequests

from .extensions import db, limiter

log = logging.getLogger(__name__)


class DomainError(Exception):
    status = 400
    code = "error"
    template = "error.html"

    def __init__(self, message: str = "", field: str | None = None):
        super().__init__(message or self.__doc__)
        self.message = message or (self.__doc__ or "").strip()
        self.field = field


class ValidationError(DomainError):
    """The input is not valid."""

    status = 422
    code = "invalid"


class NotFound(DomainError):
    """Not found."""

    status = 404
    code = "not_found"


class Conflict(DomainError):
    """That conflicts with something that exists."""

    status = 409
    code = "conflict"


class InvalidToken(DomainError):
    """This link is not valid."""

    status = 400
    code = "invalid_token"
    template = "invalid_link.html"  # with the form that gets a new one

    def __init__(self, purpose: str = ""):
        super().__init__()
        self.purpose = purpose


class TokenExpired(InvalidToken):
    """This link has expired."""

    code = "expired_token"
    template = "expired.html"

    def __init__(self, purpose: str = "", payload=None):
        super().__init__(purpose)
        self.payload = payload


class LinkUsed(InvalidToken):
    """This link has already been used."""

    code = "used_token"
    template = "used.html"


def wants_json() -> bool:
    if request.path.startswith("/api/"):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]


def clock_time(seconds_from_now: float) -> str:
    """When, in words a reader anywhere can use: "09:41 UTC" (rounded up to the minute)."""
    moment = datetime.now(timezone.utc) + timedelta(seconds=seconds_from_now)
    if moment.second or moment.microsecond:
        moment = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return moment.strftime("%H:%M UTC")


def retry_after() -> int:
    """Seconds until the limit this request ran into lets the next one through."""
    current = limiter.current_limit
    if current is None:
        return 60
    return max(1, math.ceil(current.window[0] - time.time()))  # window[0]: when it resets (reset_at rounds up)


def show_form_errors_on(template: str, **context) -> None:
    """A field error in this request is shown next to its field on `template` (HTML answers only)."""
    g.form_page = (template, context)


DATABASE_AWAY = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.TimeoutError)


def database_away(error: Exception):
    """The database cannot be reached (a restart, a failover): 503 with Retry-After, and nothing half
    written (the request's transaction is rolled back). The page needs no database: no templates' context."""
    log.warning("database unavailable: %s", str(error).splitlines()[0][:300] if str(error) else type(error).__name__)
    with contextlib.suppress(Exception):
        db.session.rollback()
    message = "We could not reach our database for a moment. Nothing was saved: please try again in a minute."
    if wants_json():
        response = jsonify(error="unavailable", message=message, retry_after=30)
    else:
        name = html.escape(current_app.config.get("PUBLICATION_NAME") or "")
        response = current_app.make_response(
            f'<!doctype html><html lang="en"><meta charset="utf-8"><meta name="robots" content="noindex">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>Please try again · {name}</title>'
            f'<main><h1>Please try again in a minute</h1><p role="status">{html.escape(message)}</p></main></html>')
    response.status_code = 503
    response.headers["Retry-After"] = "30"
    response.headers["Cache-Control"] = "no-store"
    return response


def _database_safe(handler):
    """An error page whose rendering needs the database (the templates' context reads it) answers 503 when it is away."""
    @functools.wraps(handler)
    def wrapped(error):
        try:
            return handler(error)
        except DATABASE_AWAY as away:
            return database_away(away)
    return wrapped


def register(app: Flask) -> None:
    for away in DATABASE_AWAY:
        app.register_error_handler(away, database_away)

    @app.teardown_appcontext
    def release_session(_error) -> None:
        """Runs before Flask-SQLAlchemy's own teardown: a connection the server dropped fails its rollback, which
        must not turn the answer already made into a bare 500."""
        try:
            db.session.remove()
        except Exception as trouble:
            log.warning("database session not released cleanly: %s", type(trouble).__name__)
            with contextlib.suppress(Exception):
                db.session.registry.clear()

    @app.errorhandler(DomainError)
    @_database_safe
    def domain_error(error: DomainError):
        if wants_json():
            body = {"error": error.code, "message": error.message}
            if error.field:
                body["field"] = error.field
            return jsonify(body), error.status
        if error.field and "form_page" in g:
            template, context = g.form_page
            return render_template(template, error=error, form=request.form, **context), error.status
        return render_template(error.template, error=error), error.status

    @app.errorhandler(TooManyRequests)
    @_database_safe
    def too_many_requests(error: TooManyRequests):
        seconds = retry_after()
        minutes = max(1, math.ceil(seconds / 60))
        message = (f"Too many tries from your network for now. Please try again after {clock_time(seconds)} "
                   f"(in {minutes} minute{'s' if minutes != 1 else ''}).")
        if wants_json():
            response = jsonify(error="too_many_requests", message=message, retry_after=seconds)
        else:
            response = app.make_response(render_template("try_later.html", message=message))
        response.status_code = 429
        response.headers["Retry-After"] = str(seconds)
        return response

    @app.errorhandler(HTTPException)
    @_database_safe
    def http_error(error: HTTPException):
        if wants_json():
            return jsonify(error=error.name.lower().replace(" ", "_"), message=error.description), error.code
        return render_template("error.html", error=error), error.code
