"""Response headers: the Content-Security-Policy and its nonces, HSTS, and redirects that never leave the site."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from flask import render_template_string

from service import create_app
from service.extensions import db
from service.publishing import memory

from .conftest import BASE_URL
from .helpers import Reader, csrf_token, policy

FORGED = "evil.example"
NONCE_ATTRIBUTE = re.compile(rb'<script nonce="([^"]+)"')


# --- Content-Security-Policy ---

@pytest.mark.parametrize("path", ["/", "/p/harbour", "/signin", "/embed", "/confirm/not-a-token", "/no-such-page",
                                  "/unsubscribe/not-a-token"])
def test_every_page_has_a_content_security_policy(client, admin, path):
    admin.publish(title="Harbour", body="Words.\n\n<!--more-->\n\nThe rest.")
    response = client.get(path)
    assert response.mimetype == "text/html"
    found = policy(response)
    assert found["default-src"] == "'self'"
    assert found["script-src"].split()[0] == "'self'" and "'unsafe-inline'" not in found["script-src"]
    assert found["style-src"] == "'self'"
    assert found["object-src"] == "'none'" and found["base-uri"] == "'none'" and found["form-action"] == "'self'"
    assert found["frame-ancestors"] == ("'self'" if path == "/embed" else "'none'")


@pytest.mark.parametrize("path", ["/feed.xml", "/embed.js", "/api/v1/posts", "/healthz"])
def test_other_answers_load_and_frame_nothing(client, path):
    assert policy(client.get(path)) == {"default-src": "'none'", "frame-ancestors": "'none'"}


def test_each_embed_answer_has_its_own_nonce_on_its_inline_script(client):
    first, second = client.get("/embed"), client.get("/embed")
    nonces = []
    for response in (first, second):
        [in_page] = NONCE_ATTRIBUTE.findall(response.data)
        assert f"'nonce-{in_page.decode()}'" in policy(response)["script-src"].split()
        assert b"csp-nonce-" not in response.data
        nonces.append(in_page)
    assert nonces[0] != nonces[1] and len(nonces[0]) >= 16


def test_a_page_from_memory_gets_a_fresh_nonce_each_time(app, client):
    """The page memory keeps the rendered page with the placeholder; each response fills in a nonce of its own."""
    renders = []

    def kept_page():
        renders.append(1)
        return render_template_string('<!doctype html><p>Kept</p><script nonce="{{ csp_nonce }}">1</script>')

    app.add_url_rule("/kept", "kept", lambda: memory.remember("kept-page", kept_page))
    app.extensions["page_memory"].seconds = 60
    for _ in range(2):  # rendered, kept (a settings row written on the way would empty the memory once)
        client.get("/kept")
    rendered = len(renders)
    answers = [client.get("/kept") for _ in range(3)]
    assert rendered in (1, 2) and len(renders) == rendered  # the three answers came from memory
    nonces = [NONCE_ATTRIBUTE.findall(answer.data)[0].decode() for answer in answers]
    assert len(set(nonces)) == 3
    for answer, nonce in zip(answers, nonces, strict=True):
        assert policy(answer)["script-src"] == f"'self' 'nonce-{nonce}'"


def test_a_page_without_inline_scripts_allows_none(client, admin):
    admin.publish(title="Harbour", body="Words.\n\n<!--more-->\n\nThe rest.")
    for path in ("/", "/p/harbour", "/signin"):
        response = client.get(path)
        assert policy(response)["script-src"] == "'self'"
        assert b"<script nonce" not in response.data


# --- HSTS ---

def test_hsts_when_base_url_is_https(another_app):
    secure = another_app(BASE_URL="https://news.example")
    for path in ("/", "/healthz", "/embed.js"):
        assert secure.test_client().get(path, base_url="https://news.example").headers["Strict-Transport-Security"] \
            == "max-age=31536000"


def test_no_hsts_on_plain_http(client):
    assert "Strict-Transport-Security" not in client.get("/").headers


# --- redirects ---

def _on_site(location: str) -> bool:
    """A path on the site, or a URL on BASE_URL's origin."""
    parts, base = urlsplit(location), urlsplit(BASE_URL)
    if parts.scheme or parts.netloc:
        return (parts.scheme, parts.netloc) == (base.scheme, base.netloc)
    return location.startswith("/") and not location.startswith("//") and "\\" not in location


SAMPLE_ARGUMENTS = {"slug": "harbour", "token": "not-a-token", "purpose": "confirm", "filename": "style.css",
                    "subscriber_id": "1"}


def _every_get_path(app) -> list[str]:
    """Each GET route with sample arguments, and the ways Werkzeug would redirect it: slashes doubled, added, left off."""
    paths = set()
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods:
            continue
        path = rule.rule
        for name in rule.arguments:
            path = re.sub(rf"<(?:[^:>]+:)?{name}>", SAMPLE_ARGUMENTS[name], path)
        paths.update({path, path + "/", path.rstrip("/") or "/", "/" + path, path.replace("/", "//", 2)})
    return sorted(paths)


@pytest.fixture
def another_app(app):
    """Apps of other settings on the test's database and environment; their connections closed after."""
    made = []

    def make(**overrides):
        made.append(create_app({"TESTING": True, **overrides}))
        return made[-1]

    yield make
    for each in made:
        with each.app_context():
            for engine in db.engines.values():
                engine.dispose()


@pytest.fixture
def proxied_app(another_app):
    """The app behind one proxy, whose X-Forwarded-* headers it trusts: a forged X-Forwarded-Host reaches it."""
    proxied = another_app(PROXY_COUNT=1)
    proxied.add_url_rule("/folder/", "folder", lambda: "a rule with a trailing slash, as the studio's will be")
    return proxied


def test_no_get_redirects_to_a_forged_host(app, admin, proxied_app):
    app.add_url_rule("/folder/", "folder", lambda: "a rule with a trailing slash, as the studio's will be")
    admin.publish(title="Harbour", body="Words.\n\n<!--more-->\n\nThe rest.")
    redirects = []
    for target, headers in ((app, {}), (proxied_app, {"X-Forwarded-Host": FORGED, "X-Forwarded-Proto": "https"})):
        client = target.test_client()
        for path in _every_get_path(target):
            with client.get(path, base_url=f"http://{FORGED}", headers=headers) as response:
                if response.status_code in (301, 302, 303, 307, 308):
                    redirects.append(path)
                    assert _on_site(response.headers["Location"]), (path, response.headers["Location"])
    assert "/folder" in redirects and "/account" in redirects  # a trailing-slash redirect and the sign-in one


def test_double_slashes_are_not_found_rather_than_redirected(client, admin):
    admin.publish(title="Harbour", body="Words.", visibility="public")
    assert client.get("/p//harbour", base_url=f"http://{FORGED}").status_code == 404
    assert client.get("/p/harbour").status_code == 200


def test_no_post_redirects_to_a_forged_host(app, client, mailbox, own_queue):
    forged = {"base_url": f"http://{FORGED}"}
    reader = Reader(client, "redirected@example.org", mailbox)
    reader.subscribe(next_url="/p/harbour")
    from .test_logging import send_outbox

    send_outbox(app)
    confirm = reader.confirm_link()
    page = client.get(confirm, **forged)
    confirmed = client.post(confirm, data={"csrf_token": csrf_token(page.data)}, **forged)
    assert confirmed.status_code == 303 and confirmed.headers["Location"] == "/p/harbour"
    account = client.get("/account", **forged)
    for action in ("save", "signout"):
        done = client.post("/account", data={"csrf_token": csrf_token(account.data), "action": action,
                                             "frequency": "weekly", "name": ""}, **forged)
        assert done.status_code == 303 and _on_site(done.headers["Location"]), done.headers
    anonymous = client.post("/account", data={"action": "save"}, **forged)
    assert anonymous.status_code in (302, 303, 400) and _on_site(anonymous.headers.get("Location", "/"))


@pytest.fixture
def own_queue(app):
    app.extensions["celery"].conf.task_default_queue = f"kr-headers-{id(app)}"


@pytest.mark.parametrize("location, expected", [
    ("http://evil.example/p/x", "/p/x"),
    ("//evil.example/p/x?y=1", "/p/x?y=1"),
    ("/\\evil.example", "/evil.example"),
    ("/\t/evil.example", "/"),  # urlsplit drops the tab as browsers do: //evil.example
    ("https://localhost/account", "/account"),
    (f"{BASE_URL}/account", f"{BASE_URL}/account"),
    ("/signin?next=%2Faccount", "/signin?next=%2Faccount"),
])
def test_on_site(app, location, expected):
    from service.web.headers import on_site

    with app.test_request_context():
        assert on_site(location) == expected
