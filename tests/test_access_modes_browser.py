"""The access modes in a real browser (Debian's Chromium via Playwright) against a real server: the pop-up of popup
posts (scrolling and time open it; "Continue reading" and Esc close it where the reader was; the page behind holds
still; focus is trapped and returned; it stays closed across articles for the set days; subscribing from it mails
one confirmation), a signed-in subscriber who never sees a prompt, axe-core with the dialog open, and screenshots
at 390 and 1280 px when KEEPREADING_TEST_SCREENSHOTS names a folder."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from service.extensions import db
from service.models import Subscriber, utcnow
from service.publishing import posts
from service.readers import access

from . import test_studio_browser as studio
from .helpers import subscriber, wait_outbox_sent
from .test_embed_browser import WATCH_VIOLATIONS, violations
from .test_studio_browser import SCREENS, WIDTHS, serious_violations

pytestmark = pytest.mark.slow
browser, server, axe_script = studio.browser, studio.server, studio.axe_script  # the studio tests' fixtures
T0 = datetime(2026, 5, 4, 8, 0, tzinfo=timezone.utc)
PARAGRAPH = ("The tide came in over the slipway while the ferry waited, and the harbour master wrote the times "
             "on the board in chalk, as he has every morning since the new clock was put up and ignored. ")


def long_body(title: str, paragraphs: int = 30) -> str:
    opening = f"{title}: how the morning starts. Read [the tide notes](/p/tide-notes) first."
    return opening + "\n\n<!--more-->\n\n" + "\n\n".join(f"{n}. {PARAGRAPH * 2}" for n in range(1, paragraphs))


def publish(app, title: str, visibility: str, paragraphs: int = 30) -> str:
    with app.app_context():
        return "/p/" + posts.create(title, long_body(title, paragraphs), visibility, published=True).slug


def reading_settings(app, **values) -> None:
    with app.app_context():
        posts.update_settings(values)


def dialog_open(page) -> bool:
    return page.evaluate("(document.getElementById('invite') || {}).open === true")


def scroll_to_share(page, share: float) -> None:
    """Scroll as a reader does (wheel events), until the window's bottom has passed `share` of the article."""
    for _ in range(60):
        reached = page.evaluate("""() => { const box = document.querySelector('article.post').getBoundingClientRect();
                                           return (innerHeight - box.top) / box.height; }""")
        if reached >= share or dialog_open(page):
            return
        page.mouse.wheel(0, 250)
        page.wait_for_timeout(30)


def poll(page, expression: str):
    """An expression's value once it is set (wait_for_function would need 'unsafe-eval' under the page's CSP)."""
    for _ in range(100):
        value = page.evaluate(expression)
        if value is not None:
            return value
        page.wait_for_timeout(50)
    raise AssertionError(f"{expression} stayed null")


def focus_is_inside(page) -> bool:
    return page.evaluate("document.getElementById('invite').contains(document.activeElement)")


def new_page(browser, width: int = 1280, height: int = 900, **context):
    page = browser.new_context(viewport={"width": width, "height": height}, **context).new_page()
    page.add_init_script(WATCH_VIOLATIONS)
    return page


# --- the pop-up ---

def test_the_invitation_opens_on_scrolling_and_closes_where_the_reader_was(app, server, browser):
    from playwright.sync_api import expect

    reading_settings(app, popup_delay_seconds=0, popup_scroll_percent=50)
    path = publish(app, "Morning at the slipway", "popup")
    page = new_page(browser)
    page.goto(server.url + path)
    dialog = page.locator("dialog#invite")
    page.locator("article .body a").first.focus()  # where focus goes back to
    scroll_to_share(page, 0.3)
    page.wait_for_timeout(200)
    assert not dialog_open(page)  # not before half of the article
    scroll_to_share(page, 0.5)
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("heading", name="Discover more from The Slow Harbour")).to_be_visible()
    where = page.evaluate("scrollY")
    assert where > 500

    page.mouse.wheel(0, 1200)  # the page behind holds still (Jetpack #34933)
    page.keyboard.press("PageDown")
    page.keyboard.press("End")
    page.wait_for_timeout(300)
    assert page.evaluate("scrollY") == where and dialog_open(page)

    dialog.get_by_role("button", name="Continue reading").click()
    expect(dialog).to_be_hidden()
    page.wait_for_timeout(200)
    assert page.evaluate("scrollY") == where  # no jump to the top (Jetpack #34684, #35169)
    assert page.evaluate("document.activeElement.matches('article .body a')")  # focus returned, without scrolling
    assert page.evaluate("document.documentElement.classList.contains('invite-open')") is False
    page.mouse.wheel(0, 400)
    page.wait_for_timeout(200)
    assert page.evaluate("scrollY") > where  # scrolling works again
    assert violations(page) == []
    page.context.close()


def test_time_opens_it_esc_closes_it_and_focus_stays_inside_while_open(app, server, browser):
    from playwright.sync_api import expect

    reading_settings(app, popup_delay_seconds=20, popup_scroll_percent=100)
    path = publish(app, "Waiting for the bread", "popup")
    page = new_page(browser)
    page.clock.install(time=T0)
    page.goto(server.url + path)
    page.mouse.wheel(0, 600)
    page.wait_for_timeout(200)
    where = page.evaluate("scrollY")
    page.clock.run_for(19_000)
    assert not dialog_open(page)
    page.clock.run_for(2_000)
    expect(page.locator("dialog#invite")).to_be_visible()
    assert page.evaluate("document.activeElement.id") == "invite"  # the dialog itself: its title is announced
    names = []
    for _ in range(7):
        page.keyboard.press("Tab")
        assert focus_is_inside(page)
        names.append(page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()"))
    assert names[:3] == ["invite-email", "Subscribe", "Continue reading"] and names[3] == "invite-email"  # round again
    for _ in range(4):
        page.keyboard.press("Shift+Tab")
        assert focus_is_inside(page)
    page.keyboard.press("Escape")
    expect(page.locator("dialog#invite")).to_be_hidden()
    assert page.evaluate("scrollY") == where
    closed_until = int(poll(page, "localStorage.getItem('keepreading.invite.closedUntil')"))
    week_later = int((T0 + timedelta(days=7)).timestamp() * 1000) + 21_000  # the browser's clock was moved 21 s on
    assert week_later <= closed_until < week_later + 60_000  # (and it keeps running)
    page.context.close()


def test_it_stays_closed_on_the_next_article_and_returns_after_the_set_days(app, server, browser):
    from playwright.sync_api import expect

    reading_settings(app, popup_delay_seconds=0, popup_scroll_percent=40, popup_snooze_days=3)
    first, second = publish(app, "Ropes", "popup"), publish(app, "Knots", "popup")
    page = new_page(browser)
    page.clock.install(time=T0)
    page.goto(server.url + first)
    scroll_to_share(page, 0.4)
    expect(page.locator("dialog#invite")).to_be_visible()
    page.get_by_role("button", name="Continue reading").click()

    page.goto(server.url + second)  # another article, a new page load: still closed (Jetpack #38266)
    scroll_to_share(page, 0.9)
    page.wait_for_timeout(300)
    assert not dialog_open(page)
    page.clock.set_system_time(T0 + timedelta(days=2, hours=23))
    page.reload()
    scroll_to_share(page, 0.9)
    page.wait_for_timeout(300)
    assert not dialog_open(page)
    page.clock.set_system_time(T0 + timedelta(days=3, minutes=1))
    page.reload()
    scroll_to_share(page, 0.4)
    expect(page.locator("dialog#invite")).to_be_visible()
    page.context.close()


def test_subscribing_from_the_dialog_mails_one_confirmation_without_leaving_the_page(app, server, browser, mailbox,
                                                                                       worker):
    from playwright.sync_api import expect

    reading_settings(app, popup_delay_seconds=0, popup_scroll_percent=50)
    path = publish(app, "The chandler's list", "popup")
    page = new_page(browser)
    page.goto(server.url + path)
    scroll_to_share(page, 0.5)
    dialog = page.locator("dialog#invite")
    expect(dialog).to_be_visible()
    where = page.evaluate("scrollY")
    dialog.get_by_label("Email address").fill("from.the.dialog@example.org")
    dialog.get_by_role("button", name="Subscribe").click()
    expect(dialog.get_by_role("status")).to_contain_text("Check your inbox to confirm your subscription.")
    assert page.url == server.url + path and page.evaluate("scrollY") == where  # in place: no page load
    expect(dialog.locator("form")).to_be_hidden()
    assert page.evaluate("document.activeElement.textContent.trim()") == "Continue reading"
    [mail] = mailbox.wait_for(1)
    assert mail.to == "from.the.dialog@example.org" and mail.message["Subject"].startswith("Confirm your subscription")
    wait_outbox_sent(app)
    assert len(mailbox.to("from.the.dialog@example.org")) == 1
    assert subscriber(app, "from.the.dialog@example.org").consent_source == server.url + path
    dialog.get_by_role("button", name="Continue reading").click()
    expect(dialog).to_be_hidden()
    assert page.evaluate("scrollY") == where and violations(page) == []
    page.context.close()


def test_a_mistyped_address_is_answered_in_the_dialog(app, server, browser):
    from playwright.sync_api import expect

    reading_settings(app, popup_delay_seconds=1)
    path = publish(app, "Moorings", "popup")
    page = new_page(browser)
    page.goto(server.url + path)
    dialog = page.locator("dialog#invite")
    expect(dialog).to_be_visible(timeout=10_000)
    page.evaluate("document.getElementById('invite-email').type = 'text'")  # past the browser's own check
    dialog.get_by_label("Email address").fill("nobody at all")
    dialog.get_by_role("button", name="Subscribe").click()
    expect(dialog.get_by_role("status")).not_to_be_empty()
    assert "email" in dialog.get_by_role("status").text_content().lower()
    assert page.evaluate("document.activeElement.id") == "invite-email"
    assert dialog.get_by_label("Email address").get_attribute("aria-invalid") == "true"
    page.context.close()


def test_a_signed_in_subscriber_sees_neither_the_pop_up_nor_the_meter(app, server, browser):
    reading_settings(app, popup_delay_seconds=1, free_articles=1)
    popup = publish(app, "Harbour lights", "popup")
    metered = [publish(app, f"Metered letter {n}", "metered", paragraphs=3) for n in range(3)]
    with app.app_context():
        reader = Subscriber(email="signed.in@example.org", status="confirmed", confirmed_at=utcnow())
        db.session.add(reader)
        db.session.commit()
        cookie = access.session_token(reader)
    page = new_page(browser)
    page.context.add_cookies([{"name": "kr_reader", "value": cookie, "url": server.url}])
    page.goto(server.url + popup)
    scroll_to_share(page, 1.0)
    page.wait_for_timeout(1500)
    assert page.locator("dialog").count() == 0 and page.locator("form.subscribe").count() == 0
    assert page.get_by_text("Signed in as signed.in@example.org").is_visible()
    for path in metered:
        page.goto(server.url + path)
        assert "free article" not in page.content() and page.locator(".paywall").count() == 0
    assert not [each for each in page.context.cookies() if each["name"] == "kr_meter"]
    page.context.close()


def test_no_serious_accessibility_violation_with_the_dialog_open(app, server, browser, axe_script):
    from playwright.sync_api import expect

    reading_settings(app, popup_delay_seconds=1)
    path = publish(app, "Tide tables", "popup")
    for width, height in WIDTHS:
        page = new_page(browser, width, height, bypass_csp=True)
        page.goto(server.url + path)
        expect(page.locator("dialog#invite")).to_be_visible(timeout=10_000)
        assert serious_violations(page, axe_script) == []
        page.context.close()


# --- every state, at a phone's and a desktop's width: axe, and screenshots when asked for ---

def test_each_mode_and_state_at_390_and_1280_px(app, server, browser, axe_script):
    from playwright.sync_api import expect

    reading_settings(app, popup_delay_seconds=0, popup_scroll_percent=50, free_articles=2)
    modes = {visibility: publish(app, title, visibility, paragraphs=8) for visibility, title in
             [("public", "A tide clock, wrong on purpose"), ("subscribers", "The ferry that waits for the baker"),
              ("popup", "Four in the morning on the fish quay"), ("metered", "How to read a tide table")]}
    more_metered = [publish(app, f"Chandlery notes {n}", "metered", paragraphs=4) for n in (1, 2)]
    with app.app_context():
        reader = Subscriber(email="rae@example.org", name="Rae", status="confirmed", confirmed_at=utcnow())
        db.session.add(reader)
        db.session.commit()
        cookie = access.session_token(reader)
    problems = {}
    for width, height in WIDTHS:
        page = new_page(browser, width, height, bypass_csp=True)

        def shot(name: str, full_page: bool = True, page=page, width=width) -> None:
            found = serious_violations(page, axe_script)
            if found:
                problems[f"{name} at {width}px"] = found
            if SCREENS:
                Path(SCREENS).mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(Path(SCREENS) / f"{name}-{width}.png"), full_page=full_page)

        for visibility, path in modes.items():
            page.goto(server.url + path)
            expect(page.locator("h1")).to_be_visible()
            shot(f"article-{visibility}")
        page.goto(server.url + modes["popup"])
        scroll_to_share(page, 0.5)
        expect(page.locator("dialog#invite")).to_be_visible()
        shot("popup-dialog-open", full_page=False)
        page.goto(server.url + more_metered[0])
        expect(page.get_by_text("0 of 2 free articles left this month.")).to_be_visible()  # the second of two
        shot("metered-notice", full_page=False)
        page.goto(server.url + more_metered[1])
        expect(page.get_by_text("You have read your 2 free articles this month.")).to_be_visible()
        shot("metered-spent")
        page.goto(server.url + "/")
        expect(page.get_by_role("heading", name="Stay in touch")).to_be_visible()
        shot("archive-stay-in-touch")
        page.context.add_cookies([{"name": "kr_reader", "value": cookie, "url": server.url}])
        page.goto(server.url + modes["subscribers"])
        expect(page.get_by_text("Signed in as rae@example.org")).to_be_visible()
        assert page.locator("form.subscribe").count() == 0
        shot("signed-in-article", full_page=False)
        page.context.close()
    assert problems == {}
