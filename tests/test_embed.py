"""The embeddable form: framing allowed for EMBED_ORIGINS on /embed only, the script, and cross-site posts."""
from __future__ import annotations

from .helpers import outbox_rows, policy, subscriber


def test_embed_is_framable_only_by_the_listed_origins(client, app):
    app.config["EMBED_ORIGINS"] = ["https://blog.example", "https://www.blog.example"]
    answer = client.get("/embed?source=https://blog.example/post")
    assert answer.status_code == 200
    assert policy(answer)["frame-ancestors"] == "'self' https://blog.example https://www.blog.example"
    assert "X-Frame-Options" not in answer.headers
    assert b'name="website"' in answer.data and b'value="https://blog.example/post"' in answer.data
    for path in ("/", "/signin", "/account", "/embed.js"):
        other = client.get(path)
        assert other.headers["X-Frame-Options"] == "DENY", path
        assert policy(other)["frame-ancestors"] == "'none'", path


def test_embed_without_origins_is_same_origin_only(client):
    assert policy(client.get("/embed"))["frame-ancestors"] == "'self'"


def test_embed_script(client, app):
    answer = client.get("/embed.js", base_url="http://evil.example")
    assert answer.status_code == 200 and answer.mimetype == "application/javascript"
    body = answer.get_data(as_text=True)
    assert '"http://localhost"' in body and "evil" not in body
    assert "data-keepreading-frame" in body and 'addEventListener("message"' in body


def test_plain_form_posted_cross_site_from_the_embed(app):
    browser = app.test_client(use_cookies=False)  # a third-party iframe: no cookies, no CSRF token
    answer = browser.post("/subscribe", data={"email": "embed@example.org", "embed": "1", "website": "",
                                              "source": "https://blog.example/post"},
                          headers={"Origin": "https://blog.example"})
    assert answer.status_code == 200 and b"Check your inbox" in answer.data
    assert "X-Frame-Options" not in answer.headers  # the result page shows inside the iframe
    row = subscriber(app, "embed@example.org")
    assert row.consent_source == "https://blog.example/post"
    assert [r.kind for r in outbox_rows(app)] == ["confirm"]


def test_embed_errors_show_in_the_frame(app):
    answer = app.test_client().post("/subscribe", data={"email": "nope", "embed": "1", "source": "https://b.example/"})
    assert answer.status_code == 422 and b'id="embed-error"' in answer.data
    assert b'value="https://b.example/"' in answer.data
    assert "X-Frame-Options" not in answer.headers
