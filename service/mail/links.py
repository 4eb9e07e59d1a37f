"""Links that leave the site (emails, embeds): always built from BASE_URL, never from a request's Host."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import current_app

from .. import tokens
from ..models import Subscriber
from ..publishing import publication


def external(endpoint: str, **values) -> str:
    """BASE_URL + the route's path; works in a worker, where there is no request."""
    path = current_app.url_map.bind("localhost").build(endpoint, values)
    return current_app.config["BASE_URL"] + path


def unsubscribe_url(subscriber: Subscriber) -> str:
    return external("account.unsubscribe", token=tokens.make("unsubscribe", subscriber))


def list_headers(subscriber: Subscriber) -> dict[str, str]:
    """RFC 2369 / RFC 8058 headers every mail to a subscriber carries: one-click unsubscribe and the list's id."""
    targets = [f"<{unsubscribe_url(subscriber)}>"]
    mailto = current_app.config.get("UNSUBSCRIBE_MAILTO")
    if mailto:
        targets.append(f"<mailto:{mailto}?subject=unsubscribe>")
    host = urlsplit(current_app.config["BASE_URL"]).hostname or "localhost"
    return {
        "List-Unsubscribe": ", ".join(targets),
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "List-Id": f"{publication.name()} <keepreading.{host}>",
    }
