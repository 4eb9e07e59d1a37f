"""A real browser (Debian's Chromium via Playwright): the signup form placed on another origin by /embed.js, and
the reader pages under their Content-Security-Policy, with no violation reported."""
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


# Runs in every frame before its own scripts: each Content-Security-Policy violation is noted where a test can read it.
WATCH_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", function (event) {
  window.__violations.push(event.violatedDirective + " " + (event.blockedURI || "inline"));
});
"""


def watched(page) -> list[str]:
    """The page's console errors (but the 4xx answers the test asks for, and /favicon.ico's), filled as they come;
    violations are read from each frame's document."""
    errors: list[str] = []

    def on_console(message) -> None:
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.add_init_script(WATCH_VIOLATIONS)
    return errors


def violations(page) -> list[str]:
    return [found for frame in page.frames for found in (frame.evaluate("window.__violations || []") or [])]


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
            errors = watched(page)
            page.goto(blog.url + "/")
            frame_element = page.locator("iframe[data-keepreading-frame]")
            expect(frame_element).to_be_visible()
            form = page.frame_locator("iframe[data-keepreading-frame]")
            form.locator("input[name=email]").fill("browser@example.org")
            form.locator("button[type=submit]").click()
            expect(form.locator("[role=status]")).to_contain_text("Check your inbox")
            # the form's inline script ran (its nonce accepted): it told the page its height
            assert frame_element.evaluate("frame => frame.style.height").endswith("px")
            assert violations(page) == [] and errors == []
            page.close()

    [mail] = Reader(None, "browser@example.org", mailbox).mails(1)
    assert mail.message["Subject"].startswith("Confirm your subscription")
    assert subscriber(app, "browser@example.org").consent_source == blog.url + "/"


def test_reader_pages_report_no_policy_violation(app, admin, client, mailbox, chromium):
    from playwright.sync_api import expect

    admin.publish(title="Harbour notes", body="Words for the teaser.\n\n<!--more-->\n\nThe rest, for subscribers.")
    # the access modes' pages (issue 12): the pop-up opens at once, the meter notice, a spent meter
    admin.patch("/settings", json={"popup_delay_seconds": 1, "free_articles": 1})
    admin.publish(title="Invited", body="Words for everyone.\n\nMore of them.", visibility="popup")
    for title in ("Metered one", "Metered two"):
        admin.publish(title=title, body="Words for the teaser.\n\n<!--more-->\n\nThe rest.", visibility="metered")
    with Served(app) as keepreading:
        app.config.update(BASE_URL=keepreading.url)
        page = chromium.new_page()
        errors = watched(page)
        for path in ("/", "/p/harbour-notes", "/signin", "/account", "/embed", "/confirm/not-a-token", "/nowhere",
                     "/p/invited", "/p/metered-one", "/p/metered-two"):
            page.goto(keepreading.url + path)
            assert page.evaluate("getComputedStyle(document.body).fontFamily").startswith("Georgia"), path  # style.css
            if path == "/p/invited":  # its script (a static file) ran: the dialog opened
                expect(page.locator("dialog#invite")).to_be_visible(timeout=10_000)
            assert violations(page) == [], path
        page.goto(keepreading.url + "/p/harbour-notes")
        page.fill("input[name=email]", "reader@example.org")
        page.click("button[type=submit]")
        assert "Check your inbox" in page.content()
        assert violations(page) == [] and errors == []
        # The watch itself works: a script slipped into the page without the nonce is refused and reported.
        page.evaluate("""() => { const s = document.createElement("script");
                                 s.textContent = "window.__ran = true"; document.body.appendChild(s); }""")
        assert page.evaluate("window.__ran === undefined")
        assert violations(page) == ["script-src-elem inline"]
        page.close()
