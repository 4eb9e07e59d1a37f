"""Reader sessions end on the server: sign-out (everywhere), unsubscribing and deletion revoke every copy of
the cookie, at once in this process."""
from __future__ import annotations

from service.readers.access import COOKIE

from .conftest import BASE_URL
from .flows import GATED_TAIL, account_email_shown, confirmed_subscriber, publish_gated, signed_in_by_mail
from .helpers import Reader


def reader_with_a_post(app, client, mailbox, email="ada@example.org") -> tuple[Reader, str, str]:
    """A confirmed reader signed in by a mailed link; (the reader, their cookie, a gated post's path)."""
    with app.app_context():
        post = publish_gated("Harbour lights")
        confirmed_subscriber(email)
    reader = Reader(client, email, mailbox)
    cookie = signed_in_by_mail(reader)
    assert GATED_TAIL in client.get(post).get_data(as_text=True)
    return reader, cookie, post


def browser_with(app, cookie: str):
    """Another browser holding a copy of a session cookie (stolen, synced, or left on a shared computer)."""
    browser = app.test_client()
    browser.set_cookie(COOKIE, cookie)
    return browser


def test_a_signed_out_cookie_reads_nothing_and_opens_no_account(app, client, mailbox, worker):
    reader, cookie, post = reader_with_a_post(app, client, mailbox)
    assert reader.account_post(action="signout").status_code == 303
    copy = browser_with(app, cookie)
    assert GATED_TAIL not in copy.get(post).get_data(as_text=True)
    assert account_email_shown(copy) is None


def test_sign_out_everywhere_ends_the_other_browsers_sessions(app, client, mailbox, worker):
    reader, _, post = reader_with_a_post(app, client, mailbox)
    laptop = Reader(app.test_client(), reader.email, mailbox)
    signed_in_by_mail(laptop, mails_before=1)
    account = client.get("/account").get_data(as_text=True)
    assert reader.account_post(action="signout").status_code == 303
    assert GATED_TAIL not in laptop.client.get(post).get_data(as_text=True)
    assert account_email_shown(laptop.client) is None
    assert "Sign out everywhere" in account  # what the button says it does


def test_unsubscribing_ends_every_session(app, client, mailbox, worker):
    reader, cookie, post = reader_with_a_post(app, client, mailbox)
    unsubscribe = reader.mails(1)[0].message["List-Unsubscribe"].strip("<>")[len(BASE_URL):]
    provider = app.test_client(use_cookies=False)
    assert provider.post(unsubscribe, data="List-Unsubscribe=One-Click",
                         content_type="application/x-www-form-urlencoded").status_code == 200
    for browser in (client, browser_with(app, cookie)):
        assert GATED_TAIL not in browser.get(post).get_data(as_text=True)
        assert account_email_shown(browser) is None


def test_a_revoked_session_stops_reading_in_this_process_at_once(app, client, mailbox, worker):
    """The page memory keeps a reader's status for PAGE_CACHE_SECONDS: the revoking commit must clear it."""
    app.extensions["page_memory"].seconds = 3600
    reader, cookie, post = reader_with_a_post(app, client, mailbox)
    copy = browser_with(app, cookie)
    assert GATED_TAIL in copy.get(post).get_data(as_text=True)  # now remembered under this cookie
    assert reader.account_post(action="signout").status_code == 303
    assert GATED_TAIL not in copy.get(post).get_data(as_text=True)
