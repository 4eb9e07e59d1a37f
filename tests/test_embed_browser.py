"""A real browser (Debian's Chromium via Playwright) subscribes through /embed.js placed on another origin."""
from __future__ import annotations

import os
import threading

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Response

from .conftest import need_server
from .helpers import Reader, subscriber

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.slow


class Served:
    """A WSGI app on a real 127.0.0.1 port, in a thread, for the length of a test."""

    def __init__(self, wsgi_app):
        self.server = make_server("127.0.0.1", 0, wsgi_app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Served":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def publisher_site(keepreading_url: str):
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>A publisher's blog</title></head>
<body><h1>My blog</h1><p>Get new posts by email:</p>
<script src="{keepreading_url}/embed.js" data-keepreading></script>
<p id="after">The end.</p></body></html>"""

    def wsgi(environ, start_response):
        return Response(page, mimetype="text/html")(environ, start_response)

    return wsgi


@pytest.fixture
def chromium():
    need_server("Chromium", None if os.path.exists(CHROMIUM) else f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_embedded_form_on_another_origin_sends_the_confirmation(app, mailbox, worker, chromium):
    from playwright.sync_api import expect

    with Served(app) as keepreading:
        with Served(publisher_site(keepreading.url)) as blog:
            app.config.update(BASE_URL=keepreading.url, EMBED_ORIGINS=[blog.url])
            page = chromium.new_page()
            page.goto(blog.url + "/")
            frame_element = page.locator("iframe[data-keepreading-frame]")
            expect(frame_element).to_be_visible()
            form = page.frame_locator("iframe[data-keepreading-frame]")
            form.locator("input[name=email]").fill("browser@example.org")
            form.locator("button[type=submit]").click()
            expect(form.locator("[role=status]")).to_contain_text("Check your inbox")
            assert frame_element.evaluate("frame => frame.style.height").endswith("px")
            page.close()

    [mail] = Reader(None, "browser@example.org", mailbox).mails(1)
    assert mail.message["Subject"].startswith("Confirm your subscription")
    assert subscriber(app, "browser@example.org").consent_source == blog.url + "/"
