"""Headers on every response: no framing (but the embed form), no sniffing, a strict referrer policy."""
from __future__ import annotations

from flask import Flask, Response, current_app, g, request

FRAMABLE_ENDPOINTS = {"embed.form"}


def register(app: Flask) -> None:
    app.after_request(add_headers)


def add_headers(response: Response) -> Response:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
    if request.endpoint in FRAMABLE_ENDPOINTS or g.get("framable"):
        origins = " ".join(current_app.config["EMBED_ORIGINS"]) or "'none'"
        ancestors = f"'self' {origins}" if origins != "'none'" else "'self'"
        headers["Content-Security-Policy"] = f"frame-ancestors {ancestors}"
    else:
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Content-Security-Policy", "frame-ancestors 'none'")
    return response


def allow_framing() -> None:
    """This answer belongs inside the embed iframe (the embed form's own result page)."""
    g.framable = True


def private(response: Response) -> Response:
    """For pages that depend on who is reading: never shared by a cache."""
    response.headers["Cache-Control"] = "private, no-cache"
    response.vary.add("Cookie")
    return response
