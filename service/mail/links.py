"""Links that leave the site (emails, embeds): always built from BASE_URL, never from a request's Host."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

from flask import current_app

from .. import tokens
from ..models import Subscriber
from ..publishing import publication
from . import headers


def external(endpoint: str, **values) -> str:
    """BASE_URL + the route's path; works in a worker, where there is no request."""
    path = current_app.url_map.bind("localhost").build(endpoint, values)
    return current_app.config["BASE_URL"] + path


def unsubscribe_url(subscriber: Subscriber) -> str:
    return external("account.unsubscribe", token=tokens.make("unsubscribe", subscriber))


def list_headers(subscriber: Subscriber) -> list[str]:
    """RFC 2369 / RFC 8058 / RFC 2919 header lines every mail to a subscriber carries: one-click unsubscribe
    and the list's id."""
    return [
        headers.urls("List-Unsubscribe", [unsubscribe_url(subscriber), *unsubscribe_mailto()]),
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        list_id(publication.name()),
    ]


def unsubscribe_mailto() -> list[str]:
    """The `mailto:` unsubscribe target when UNSUBSCRIBE_MAILTO is set (none, or one URL)."""
    mailto = current_app.config.get("UNSUBSCRIBE_MAILTO")
    return [f"mailto:{headers.plain(mailto)}?subject=unsubscribe"] if mailto else []


def list_id(publication_name: str) -> str:
    """`List-Id: <publication> <keepreading.host>`, the host of BASE_URL."""
    host = urlsplit(current_app.config["BASE_URL"]).hostname or "localhost"
    label = re.sub(r"[^a-z0-9.-]+", "-", host).strip(".-") or "localhost"  # an IPv6 or IDN host as a dot-atom
    return headers.list_id(publication_name, f"keepreading.{label}")
