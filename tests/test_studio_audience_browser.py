"""The dashboard and subscriber pages in a real browser (Debian's Chromium via Playwright) against a real server:
a reader subscribes on the site and shows up in the studio, a CSV upload, the actions on a subscriber, axe-core
on every page, screenshots at 390 and 1280 px when KEEPREADING_TEST_SCREENSHOTS names a folder."""
from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from service.extensions import db
from service.models import Delivery, Digest, Subscriber, utcnow
from service.publishing import posts
from service.studio import stats

from .helpers import Reader, link_to
from .studio_helpers import make_staff
from .test_stats import seed_history
from .test_studio_browser import SCREENS, WIDTHS, axe_script, browser, serious_violations, server, sign_in  # noqa: F401

pytestmark = pytest.mark.slow
UPLOAD = ("email,name,status,subscribed_at\n"
          "ada@example.org,Ada,confirmed,2025-01-02T03:04:05Z\n"
          "not-an-email,Bad,confirmed,\n"
          "bob@example.org,Bob,royalty,\n"
          "cy@example.org,Cy,,\n")


def studio_page(browser, server_url: str):  # noqa: F811  (browser is the fixture's value)
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, server_url)
    return page


def test_a_reader_who_subscribes_on_the_site_appears_in_the_studio_with_the_chart_point(
        app, server, browser, mailbox, worker):  # noqa: F811
    from playwright.sync_api import expect

    make_staff(app)
    with app.app_context():
        slug = posts.create("The harbour at dawn", "The gulls first.\n\n<!--more-->\n\nThen the boats.", "subscribers",
                            published=True).slug
    reader = browser.new_context().new_page()
    reader.goto(f"{server.url}/p/{slug}")
    # the subscribe block at the article's end, not the "Stay in touch" box beside it
    form = reader.locator("form", has=reader.locator("#subscribe-email"))
    form.get_by_label("Email address").fill("dawn@example.org")
    form.get_by_role("button", name="Subscribe").click()
    expect(reader.get_by_role("heading", name="Check your inbox")).to_be_visible()
    reader.goto(server.url + link_to(Reader(None, "dawn@example.org", mailbox).mails(1)[0].text, "/confirm/"))
    reader.get_by_role("button", name="Confirm my subscription").click()
    expect(reader.get_by_text("Then the boats.")).to_be_visible()
    with app.app_context():
        stats.roll_up()  # what the roll_up_stats beat task does every minute

    page = studio_page(browser, server.url)
    figures = page.locator(".figures")
    expect(figures.locator(".figure", has_text="Confirmed subscribers").locator("dd")).to_have_text("1")
    expect(figures.locator(".figure", has_text="Confirmation rate").locator("dd.big")).to_have_text("100%")
    chart = page.get_by_role("img", name=re.compile("Signups and confirmations per day"))
    assert "Confirmations: 1 in all" in chart.locator("desc").text_content()
    points = chart.locator("polyline").nth(1).get_attribute("points").split()  # the confirmations' line
    first_y, last_y = (float(point.split(",")[1]) for point in (points[0], points[-1]))
    assert last_y < first_y  # today's point stands above the zero line of the days before
    page.get_by_text("The numbers, day by day").click()
    today = page.locator("details.numbers tbody tr").first
    expect(today.locator("td").nth(1)).to_have_text("1")  # signups
    expect(today.locator("td").nth(2)).to_have_text("1")  # confirmations
    converting = page.locator("section", has=page.get_by_role("heading", name="Which posts convert")).locator("tbody tr")
    expect(converting.first).to_contain_text("The harbour at dawn")
    expect(converting.first.locator("td").nth(2)).to_have_text("100%")

    page.get_by_role("link", name="Subscribers").click()
    page.get_by_role("link", name="dawn@example.org").click()
    expect(page.get_by_role("heading", name="dawn@example.org")).to_be_visible()
    expect(page.locator("section", has=page.get_by_role("heading", name="Consent record"))).to_contain_text(
        "The harbour at dawn")
    expect(page.locator("section", has=page.get_by_role("heading", name="Timeline"))).to_contain_text("Confirmed")


def test_a_csv_is_imported_by_upload_with_a_report_by_line(app, server, browser, tmp_path):  # noqa: F811
    from playwright.sync_api import expect

    make_staff(app)
    upload = tmp_path / "list.csv"
    upload.write_text(UPLOAD, encoding="utf-8")
    page = studio_page(browser, server.url)
    page.goto(server.url + "/studio/subscribers")
    page.get_by_role("link", name="Import a CSV").click()
    page.get_by_label("CSV file (UTF-8)").set_input_files(str(upload))
    page.get_by_role("button", name="Import").click()
    expect(page.get_by_role("status")).to_have_text("Imported 2, unchanged 0, invalid 2.")
    rows = page.locator("table tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("3")
    expect(rows.nth(1)).to_contain_text("royalty")
    page.goto(server.url + "/studio/subscribers?q=ada")
    expect(page.locator("table.subscribers tbody tr")).to_have_count(1)
    expect(page.locator("table.subscribers")).to_contain_text("confirmed")


def test_the_publisher_resends_unsubscribes_and_erases_in_the_browser(app, server, browser, mailbox, worker):  # noqa: F811
    from playwright.sync_api import expect

    make_staff(app)
    Reader(app.test_client(), "pat@example.org").subscribe()
    with app.app_context():
        pat = db.session.scalar(select(Subscriber).where(Subscriber.email == "pat@example.org"))
        pat.last_confirmation_at = utcnow() - timedelta(hours=1)
        db.session.commit()
        pat_id = pat.id
    page = studio_page(browser, server.url)
    page.goto(f"{server.url}/studio/subscribers/{pat_id}")
    page.get_by_role("button", name="Resend the confirmation").click()
    expect(page.get_by_role("status")).to_have_text("A new confirmation email is on its way to pat@example.org.")
    assert len(Reader(None, "pat@example.org", mailbox).mails(2)) == 2
    page.get_by_role("button", name="Resend the confirmation").click()
    expect(page.get_by_role("status")).to_contain_text("less than 10 minutes ago")

    page.get_by_role("button", name="Unsubscribe").click()
    expect(page.get_by_role("status")).to_have_text("pat@example.org is unsubscribed: no more digests.")
    expect(page.locator("h1 + p .status")).to_have_text("unsubscribed")
    expect(page.get_by_role("button", name="Unsubscribe")).to_have_count(0)

    page.get_by_role("button", name="Erase").click()
    expect(page.get_by_role("alert")).to_have_text("Tick the box to confirm the erasure.")
    page.get_by_label("Yes, erase pat@example.org").check()
    page.get_by_role("button", name="Erase").click()
    expect(page.get_by_role("status")).to_contain_text("pat@example.org is erased")
    assert page.url == server.url + "/studio/subscribers"
    with app.app_context():
        assert db.session.get(Subscriber, pat_id) is None


def seed_pages(app) -> dict[str, str]:
    """A year of history, a subscriber with digests, an import report: every page with something to show."""
    with app.app_context():
        for title in ("The harbour at dawn", "Knots for beginners", "Why the ferry is late"):
            posts.create(title, "Words.\n\n<!--more-->\n\nMore words.", "subscribers", published=True)
        seed_history(900, days=300, end=utcnow())
        slugs = [post.slug for post in posts.every()]
        for n, reader in enumerate(db.session.scalars(select(Subscriber)).all()):
            reader.consent_source = f"{app.config['BASE_URL']}/p/{slugs[n % 3]}" if n % 4 else "https://blog.example/x"
            reader.consent_ip, reader.consent_user_agent = "192.0.2.44", "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"
            reader.consent_at = reader.created_at
        first = db.session.scalar(select(Subscriber).order_by(Subscriber.id))
        digests = [Digest(slot=f"weekly:{n}", frequency="weekly", cutoff=utcnow() - timedelta(days=7 * n),
                          created_at=utcnow() - timedelta(days=7 * n), finished_at=utcnow() - timedelta(days=7 * n))
                   for n in range(12, 0, -1)]
        db.session.add_all(digests)
        db.session.flush()
        db.session.execute(insert(Delivery), [
            {"digest_id": digest.id, "subscriber_id": reader_id, "status": "sent" if n % 11 else "failed",
             "attempts": 1, "sent_at": digest.created_at + timedelta(minutes=3) if n % 11 else None,
             "error": None if n % 11 else "451 try again later (gave up)"}
            for n, digest in enumerate(digests) for reader_id in db.session.scalars(select(Subscriber.id).limit(300))])
        db.session.commit()
        first.name = "Hazel Marsh"
        db.session.commit()
        stats.roll_up()
        return {"dashboard": "/studio/", "dashboard-365": "/studio/?days=365", "subscribers": "/studio/subscribers",
                "subscribers-search": "/studio/subscribers?q=h1&status=confirmed",
                "subscriber": f"/studio/subscribers/{first.id}", "import": "/studio/subscribers/import"}


def test_the_pages_have_no_serious_accessibility_violation(app, server, browser, axe_script, tmp_path):  # noqa: F811
    make_staff(app)
    pages = seed_pages(app)
    upload = tmp_path / "list.csv"
    upload.write_text(UPLOAD, encoding="utf-8")
    context = browser.new_context(bypass_csp=True)  # axe is added to each page as a script of its own
    sign_in(context.new_page(), server.url)
    problems = {}
    for width, height in WIDTHS:
        page = context.new_page()
        page.set_viewport_size({"width": width, "height": height})
        for name, path in pages.items():
            assert page.goto(server.url + path).status == 200, name
            if name == "import":
                page.get_by_label("CSV file (UTF-8)").set_input_files(str(upload))
                page.get_by_role("button", name="Import").click()
                page.get_by_role("status").wait_for()
            if name.startswith("dashboard"):
                page.get_by_text("The numbers, day by day").click()  # the table too
            found = serious_violations(page, axe_script)
            if found:
                problems[f"{name} at {width}px"] = found
            if SCREENS:
                Path(SCREENS).mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(Path(SCREENS) / f"{name}-{width}.png"), full_page=True)
        page.close()
    assert problems == {}
