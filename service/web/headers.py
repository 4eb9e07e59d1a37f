"""Headers on every response: a Content-Security-Policy (a fresh nonce for each page's inline scripts), no framing
but the embed form, no sniffing, a strict referrer policy, HSTS on https, and redirects that stay on the site.

Pages are kept rendered in the page memory, so templates write a placeholder where a nonce goes
(`<script nonce="{{ csp_nonce }}">`) and each response that carries one gets a new nonce as it is sent. The
placeholder is a per-process secret: markup that slipped into a page cannot name it to obtain the nonce.
"""
from __future__ import annotations

import re
import secrets
from urllib.parse import urlsplit, urlunsplit

from flask import Flask, Response, current_app, g, request
from flask.sessions import SecureCookieSessionInterface

from ..publishing import publication

FRAMABLE_ENDPOINTS = {"embed.form"}

COMMON = [("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "strict-origin-when-cross-origin")]
# Pages: their own styles and scripts, publishers' images from anywhere on https, forms posted only here.
PAGE_POLICY = ("default-src 'self'; script-src 'self'{nonce}; style-src 'self'; img-src 'self' https:; "
               "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors {ancestors}")
CLOSED_PAGE_POLICY = PAGE_POLICY.format(nonce="", ancestors="'none'")  # most pages: no inline script, no framing
OTHER_POLICY = "default-src 'none'; frame-ancestors 'none'"  # JSON, feeds, scripts: nothing to load or frame
HSTS = ("Strict-Transport-Security", "max-age=31536000")  # not includeSubDomains: the domain may host other sites
_UNSAFE_IN_LOCATION = re.compile(r"[\x00-\x20\\]")  # browsers drop or read these as "/": "/\t/host", "/\\host"


def register(app: Flask) -> None:
    app.url_map.merge_slashes = False  # "/p//slug" is not found, never redirected to a URL built from the Host
    placeholder = f"csp-nonce-{secrets.token_hex(16)}"
    app.jinja_env.globals["csp_nonce"] = placeholder
    app.extensions["csp_placeholder"] = placeholder.encode()
    app.after_request(add_headers)
    app.session_interface = SessionInterface()


def add_headers(response: Response) -> Response:
    """Views never set these headers themselves, so they are appended without a look-up each."""
    framable = request.endpoint in FRAMABLE_ENDPOINTS or g.get("framable")
    if response.mimetype == "text/html":
        nonce = _fill_in_nonce(response)
        if nonce or framable:
            ancestors = " ".join(["'self'", *publication.embed_origins()]) if framable else "'none'"
            policy = PAGE_POLICY.format(nonce=f" 'nonce-{nonce}'" if nonce else "", ancestors=ancestors)
        else:
            policy = CLOSED_PAGE_POLICY
    else:
        policy = OTHER_POLICY
    response.headers.extend(COMMON)
    response.headers.add("Content-Security-Policy", policy)
    if not framable:
        response.headers.add("X-Frame-Options", "DENY")
    if current_app.config["SECURE_COOKIES"]:  # BASE_URL is https
        response.headers.add(*HSTS)
    if response.location:
        response.location = on_site(response.location)
    return response


def _fill_in_nonce(response: Response) -> str | None:
    """A new nonce in place of the placeholder, if the page has one; a page without inline scripts needs none."""
    if response.direct_passthrough or not response.is_sequence:
        return None
    placeholder = current_app.extensions["csp_placeholder"]
    body = response.get_data()
    if placeholder not in body:
        return None
    nonce = secrets.token_urlsafe(16)
    response.set_data(body.replace(placeholder, nonce.encode()))
    return nonce


def on_site(location: str) -> str:
    """A redirect goes to BASE_URL's origin or to a path on the site, never to a host the request named.

    Werkzeug builds its own redirects (a missing trailing slash, say) from the request's Host header."""
    base = urlsplit(current_app.config["BASE_URL"])
    parts = urlsplit(location)
    if (parts.scheme, parts.netloc) == (base.scheme, base.netloc):
        return location
    if not parts.scheme and not parts.netloc and location.startswith("/") and not location.startswith("//") \
            and not _UNSAFE_IN_LOCATION.search(location):
        return location
    path = "/" + _UNSAFE_IN_LOCATION.sub("", parts.path).lstrip("/")
    return urlunsplit(("", "", path, parts.query, ""))


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
