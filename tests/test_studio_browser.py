"""The studio in a real browser (Debian's Chromium via Playwright) against a real server, a Celery worker with
beat and the test mailbox; axe-core (from the npm registry, run inside each page) on every studio and reader
page; screenshots at 390 and 1280 px when KEEPREADING_TEST_SCREENSHOTS names a folder."""
from __future__ import annotations

import os
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from service import tokens
from service.digests import runs
from service.extensions import db
from service.mail import outbox
from service.models import Post, Subscriber, utcnow
from service.publishing import posts
from service.studio import staff

from .conftest import need_server, wait_until
from .studio_helpers import PASSWORD, make_staff
from .test_embed_browser import CHROMIUM, CHROMIUM_ARGS, Served
from .workers import WorkerProcess

pytestmark = pytest.mark.slow
AXE_VERSION = "4"
AXE_CACHE = Path(os.environ.get("KEEPREADING_TEST_CACHE") or Path.home() / ".cache" / "keepreading-tests") / "axe"
SCREENS = os.environ.get("KEEPREADING_TEST_SCREENSHOTS")
WIDTHS = [(390, 844), (1280, 900)]  # a phone, a desktop
GATED = "The ferry waits for the baker every morning.\n\n<!--more-->\n\nThe skipper tried once to leave on time."


@pytest.fixture(scope="session")
def axe_script() -> Path:
    """axe-core from the npm registry, installed once into a cache outside the repository."""
    script = AXE_CACHE / "node_modules" / "axe-core" / "axe.min.js"
    if not script.exists():
        need_server("npm", None if shutil.which("npm") else "npm is not installed")
        AXE_CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--prefix", str(AXE_CACHE), "--no-save", "--no-audit", "--no-fund",
                        f"axe-core@{AXE_VERSION}"], check=True, capture_output=True, timeout=300)
    return script


@pytest.fixture
def browser():
    need_server("Chromium", None if os.path.exists(CHROMIUM) else f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def server(app):
    with Served(app) as served:
        app.config.update(BASE_URL=served.url)
        yield served


def sign_in(page, base_url: str, email: str = "editor@example.org") -> None:
    page.goto(base_url + "/studio/")
    assert page.url.startswith(base_url + "/studio/signin")
    page.get_by_label("Email address").first.fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(base_url + "/studio/")


def test_a_publisher_writes_schedules_previews_and_sends_without_a_terminal(app, backend, server, browser, mailbox):
    from playwright.sync_api import expect

    make_staff(app)
    page = browser.new_page()
    sign_in(page, server.url)
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()

    page.get_by_role("link", name="Posts").click()
    page.get_by_role("link", name="Write a post").click()
    page.get_by_label("Title", exact=True).fill("The baker's ferry")
    page.get_by_label("Body").fill(GATED)
    page.get_by_label("Subscribers").check()
    page.get_by_role("button", name="Preview").click()
    expect(page.get_by_role("heading", name="Preview")).to_be_visible()
    expect(page.locator(".preview")).to_contain_text("The skipper tried once")
    page.get_by_role("button", name="Save draft").click()
    expect(page.get_by_role("status")).to_contain_text("Draft saved.")

    page.get_by_role("link", name="See what an anonymous reader sees").click()
    reader_view = page.frame_locator("iframe.reader-frame")
    expect(reader_view.get_by_role("heading", name="Discover more from The Slow Harbour")).to_be_visible()
    expect(reader_view.locator(".teaser")).to_contain_text("The ferry waits for the baker")
    expect(reader_view.locator("body")).not_to_contain_text("The skipper tried once")
    page.get_by_role("link", name="Back to the editor").click()

    beat = WorkerProcess({**backend.env, "KEEPREADING_PUBLISH_CHECK_SECONDS": "1"}, concurrency=1, beat=True,
                         log=backend.folder / "beat-worker.log").start()
    try:
        soon = (utcnow() + timedelta(seconds=8)).replace(microsecond=0, tzinfo=None)
        page.get_by_label("Publish at").fill(soon.isoformat(timespec="seconds"))
        page.get_by_role("button", name="Schedule").click()
        expect(page.get_by_role("status")).to_contain_text("Scheduled for")
        expect(page.locator(".state")).to_contain_text("Scheduled")
        wait_until(lambda: _published(app, "the-baker-s-ferry"), 90, "beat to publish the scheduled post")
    finally:
        beat.stop()
    page.reload()
    expect(page.locator(".state")).to_contain_text("Published")
    anonymous = browser.new_page()
    anonymous.goto(server.url + "/p/the-baker-s-ferry")
    expect(anonymous.get_by_text("Subscribe to keep reading")).to_be_visible()
    anonymous.close()

    page.get_by_role("link", name="Digests").click()
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("dl.headers")).to_contain_text("The baker's ferry")
    expect(page.frame_locator("iframe.mail-frame").locator("body")).to_contain_text("The baker's ferry")
    page.get_by_role("button", name="Send me this as a test").click()
    expect(page.get_by_role("status")).to_contain_text("A test digest is on its way to editor@example.org")
    [mail] = mailbox.wait_for(1)
    assert mail.to == "editor@example.org" and "The baker's ferry" in mail.message["Subject"]

    page.get_by_role("button", name="Sign out").click()
    page.goto(server.url + "/studio/posts")
    assert page.url.startswith(server.url + "/studio/signin")
    page.close()


def _published(app, slug: str) -> bool:
    with app.app_context():
        post = db.session.scalar(select(Post).where(Post.slug == slug))
        done = bool(post and post.published)
        db.session.rollback()
        return done


# --- accessibility and screenshots ---

def seed(app) -> tuple[dict[str, str], dict[str, str], dict[str, str], str]:
    """Content for every page to show; the studio pages (signed in, signed out), the reader pages, a reader's cookie."""
    with app.app_context():
        reader = Subscriber(email="reader@example.org", name="Rae", status="confirmed",
                            confirmed_at=utcnow() - timedelta(days=1))
        pending = Subscriber(email="pending@example.org", status="pending")
        db.session.add_all([reader, pending])
        db.session.commit()
        gated = posts.create("The baker's ferry", GATED, "subscribers", published=True)
        public = posts.create("A tide clock, wrong on purpose", "It runs fast, on purpose.", "public", published=True)
        draft = posts.create("Winter lists", "Draft words.\n\nMore of them.", "subscribers")
        later = posts.create("Spring moorings", "Coming soon.", "subscribers")
        posts.update(later.slug, {"scheduled_at": utcnow() + timedelta(days=2)})
        runs.create_run("manual:screens", None, utcnow())  # a run to list (its batches are not queued)
        invited = staff.add("new-editor@example.org", "Nell")
        links = {kind: urlsplit(outbox.staff_link(kind, invited)).path for kind in ("studio_invite", "studio_signin")}
        cookie = tokens.make("reader", reader.id, reader.email)
        confirm = tokens.make("confirm", pending.id, pending.email, "/")
        slugs = {"gated": gated.slug, "public": public.slug, "draft": draft.slug}
    studio = {
        "dashboard": "/studio/",
        "posts": "/studio/posts",
        "post-new": "/studio/posts/new",
        "post-edit": f"/studio/posts/{slugs['draft']}",
        "post-published": f"/studio/posts/{slugs['gated']}",
        "post-anonymous": f"/studio/posts/{slugs['gated']}/preview",
        "post-delete": f"/studio/posts/{slugs['draft']}/delete",
        "subscribers": "/studio/subscribers",
        "digests": "/studio/digests",
        "digest-preview": "/studio/digests/preview",
        "settings": "/studio/settings",
        "password": "/studio/password",
    }
    signed_out = {"signin": "/studio/signin", "welcome": links["studio_invite"], "signin-link": links["studio_signin"]}
    readers = {
        "archive": "/",
        "article-gated": f"/p/{slugs['gated']}",
        "article-public": f"/p/{slugs['public']}",
        "reader-signin": "/signin",
        "confirm": f"/confirm/{confirm}",
    }
    return studio, signed_out, readers, cookie


def serious_violations(page, axe_script: Path) -> list[str]:
    page.add_script_tag(path=str(axe_script))
    found = page.evaluate("""async () => {
        const result = await axe.run(document, {iframes: false, resultTypes: ['violations']});
        return result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                            nodes: v.nodes.map(n => n.target.join(' '))}));
    }""")
    return [f"{v['id']} ({v['impact']}): {v['help']} at {v['nodes'][:3]}" for v in found
            if v["impact"] in ("serious", "critical")]


def look_at(context, base_url: str, pages: dict[str, str], axe_script: Path, prefix: str) -> dict[str, list[str]]:
    """Each page at each width: axe's serious and critical findings, and a screenshot when asked for."""
    problems = {}
    for width, height in WIDTHS:
        page = context.new_page()
        page.set_viewport_size({"width": width, "height": height})
        for name, path in pages.items():
            answer = page.goto(base_url + path)
            assert answer.status == 200 and not page.url.startswith(base_url + "/studio/signin?"), (name, page.url)
            found = serious_violations(page, axe_script)
            if found:
                problems[f"{name} at {width}px"] = found
            if SCREENS:
                Path(SCREENS).mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(Path(SCREENS) / f"{prefix}{name}-{width}.png"), full_page=True)
        page.close()
    return problems


def test_no_serious_accessibility_violation_on_studio_and_reader_pages(app, server, browser, axe_script):
    make_staff(app)
    studio_pages, signed_out, readers, cookie = seed(app)
    studio = browser.new_context(bypass_csp=True)  # axe is added to each page as a script of its own
    signing_in = studio.new_page()
    sign_in(signing_in, server.url)
    signing_in.close()
    problems = look_at(studio, server.url, studio_pages, axe_script, "studio-")
    studio.close()
    anonymous = browser.new_context(bypass_csp=True)
    problems |= look_at(anonymous, server.url, signed_out, axe_script, "studio-")
    problems |= look_at(anonymous, server.url, readers, axe_script, "reader-")
    anonymous.close()
    reader = browser.new_context(bypass_csp=True)
    reader.add_cookies([{"name": "kr_reader", "value": cookie, "url": server.url}])
    problems |= look_at(reader, server.url, {"account": "/account", "archive-signed-in": "/"}, axe_script, "reader-")
    reader.close()
    assert problems == {}
