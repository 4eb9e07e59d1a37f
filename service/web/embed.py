"""The embeddable signup form (/embed, framable by EMBED_ORIGINS only) and the script that places it (/embed.js)."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, current_app, make_response, render_template, request

from ..readers.addresses import safe_next, source_text

bp = Blueprint("embed", __name__)


@bp.get("/embed")
def form():
    page = render_template("embed.html", source=source_text(request.args.get("source")),
                           next_url=safe_next(request.args.get("next")))
    response = make_response(page)
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/embed.js")
def script():
    base_url = current_app.config["BASE_URL"]
    parts = urlsplit(base_url)
    body = render_template("embed.js", base_url=base_url, origin=f"{parts.scheme}://{parts.netloc}")
    response = make_response(body)
    response.headers["Content-Type"] = "application/javascript; charset=utf-8"
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response
