"""Headers on every response: no framing (but the embed form), no sniffing, a strict referrer policy."""
from __future__ import annotations

from flask import Flask, Response, g, request
from flask.sessions import SecureCookieSessionInterface

from ..publishing import publication

FRAMABLE_ENDPOINTS = {"embed.form"}


COMMON = [("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "strict-origin-when-cross-origin")]
NO_FRAMING = [*COMMON, ("X-Frame-Options", "DENY"), ("Content-Security-Policy", "frame-ancestors 'none'")]


def register(app: Flask) -> None:
    app.after_request(add_headers)
    app.session_interface = SessionInterface()


def add_headers(response: Response) -> Response:
    """Views never set these headers themselves, so they are appended without a look-up each."""
    if request.endpoint in FRAMABLE_ENDPOINTS or g.get("framable"):
        ancestors = " ".join(["'self'", *publication.embed_origins()])
        response.headers.extend([*COMMON, ("Content-Security-Policy", f"frame-ancestors {ancestors}")])
    else:
        response.headers.extend(NO_FRAMING)
    return response


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, its serializer built once per set of keys instead of per request."""

    def get_signing_serializer(self, app: Flask):
        keys = (app.secret_key, tuple(app.config["SECRET_KEY_FALLBACKS"] or ()))
        cached = app.extensions.get("session_serializer")
        if cached is None or cached[0] != keys:
            cached = (keys, super().get_signing_serializer(app))
            app.extensions["session_serializer"] = cached
        return cached[1]


def allow_framing() -> None:
    """This answer belongs inside the embed iframe (the embed form's own result page)."""
    g.framable = True


def private(response: Response) -> Response:
    """For pages that depend on who is reading: never shared by a cache."""
    response.headers["Cache-Control"] = "private, no-cache"
    response.vary.add("Cookie")
    return response
