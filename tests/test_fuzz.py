"""Hostile and random input (issue 9.9): every endpoint answers bad input with a 4xx and a clear message, never a 5xx.

The admin API is fuzzed by schemathesis from its own OpenAPI document (in-process, through the WSGI app, with
the admin token), which also checks that the answers match the document; the public form and JSON endpoints
by hypothesis.
"""
from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import positive_data_acceptance

from .conftest import ADMIN_TOKEN
from .helpers import csrf_token

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.filter_too_much])


@pytest.mark.slow
def test_admin_api_answers_every_generated_request_as_documented(app):
    """Every operation of the document, with generated (valid and invalid) requests: no 5xx, and every answer's
    status, content type and body as the document says."""
    app.config["PROPAGATE_EXCEPTIONS"] = False  # a crash is a 500 answer here, as in production
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:
        @FUZZ
        @given(case=operation.as_strategy())
        def answers_as_documented(case):
            # Every check but "schema-valid data is accepted": a valid time zone or a free slug is more than a
            # JSON schema can say, and their refusals are 4xx answers that name the field.
            case.call_and_validate(headers=AUTH, excluded_checks=[positive_data_acceptance])

        answers_as_documented()


# --- the public endpoints, by hypothesis ---

_text = st.text(st.characters(codec="utf-8"), max_size=300) | st.sampled_from(
    ["", "a@example.org", "A@EXAMPLE.ORG", "x" * 1000, "=cmd|x!A0@example.org", "a\r\nBcc: b@example.org",
     "\x00", "/", "//evil.example", "é@ü.example"])
_json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
                           max_leaves=8)
_fields = st.fixed_dictionaries({}, optional={name: _text for name in ("email", "name", "next", "website", "embed",
                                                                      "source", "action", "frequency", "confirm")})
_json_fields = st.dictionaries(st.sampled_from(["email", "name", "next", "website", "embed", "source"]) | _text,
                               _json_value, max_size=5)
_token = _text | st.sampled_from(["not-a-token", "eyJ.x.y", "WzFd.abc.def", "." * 50])


def _no_server_error(answer) -> None:
    assert answer.status_code < 500, answer.get_data(as_text=True)[:500]


@pytest.fixture
def public(app, client):
    app.config["PROPAGATE_EXCEPTIONS"] = False
    app.config["SIGNUP_RATE_LIMIT"] = "100000/minute"
    return client


@FUZZ
@given(fields=_fields, path=st.sampled_from(["/subscribe", "/signin", "/account"]))
def test_public_forms_never_fail_on_any_fields(public, fields, path):
    form = public.get("/signin")
    _no_server_error(public.post(path, data={**fields, "csrf_token": csrf_token(form.data)}))


@FUZZ
@given(fields=st.fixed_dictionaries({"action": st.sampled_from(["save", "export"]) | _text},
                                    optional={"name": _text, "frequency": _text, "confirm": _text}))
def test_the_account_form_never_fails_on_any_fields(public, app, fields):
    if "reader" not in public.__dict__:
        from .test_account import signed_in

        public.reader = signed_in(public, app, "fuzz@example.org")
    _no_server_error(public.reader.account_post(**fields))


@FUZZ
@given(body=_json_fields | _json_value, accept=st.sampled_from(["application/json", "text/html"]))
def test_subscribe_never_fails_on_any_json(public, body, accept):
    _no_server_error(public.post("/subscribe", json=body, headers={"Accept": accept}))


@FUZZ
@given(raw=st.binary(max_size=300) | st.sampled_from([b"[" * 30000, b'{"email": "\\ud800@example.org"}',
                                                        b'{"name": "\\udfff", "email": "a@example.org"}',
                                                        b"\xff\xfe{}", b'{"email": 1e400}']))
def test_subscribe_never_fails_on_any_bytes(public, raw):
    for content_type in ("application/json", "application/x-www-form-urlencoded", "multipart/form-data"):
        _no_server_error(public.post("/subscribe", data=raw, content_type=content_type,
                                     headers={"Accept": "application/json"}))


@FUZZ
@given(token=_token, purpose=st.sampled_from(["confirm", "signin", "unsubscribe", "renew/confirm", "renew/signin"]),
       method=st.sampled_from(["get", "post"]))
def test_links_never_fail_on_any_token(public, token, purpose, method):
    page = public.get("/signin")
    path = f"/{purpose}/{token.replace('/', '_').replace('?', '_').replace('#', '_')}" if token else f"/{purpose}/x"
    answer = getattr(public, method)(path, data={"csrf_token": csrf_token(page.data), "List-Unsubscribe": "One-Click"})
    _no_server_error(answer)


@FUZZ
@given(query=st.dictionaries(st.sampled_from(["next", "source", "t", "page"]), _text, max_size=3),
       path=st.sampled_from(["/embed", "/signin", "/", "/embed.js"]))
def test_pages_never_fail_on_any_query(public, query, path):
    _no_server_error(public.get(path, query_string=query))


def test_the_reported_crashes_are_clear_4xx(public):
    """The bodies from the report: 30,000 nested `[` and a lone surrogate, to the form and the admin API."""
    deep = "[" * 30000
    for path, headers in (("/subscribe", {"Accept": "application/json"}), ("/api/v1/posts", AUTH)):
        answer = public.post(path, data=deep, content_type="application/json", headers=headers)
        assert answer.status_code == 422 and "nested too deeply" in answer.get_json()["message"]
    for path, body, headers in (("/subscribe", '{"email": "a@example.org", "name": "\\ud800"}', {"Accept": "application/json"}),
                                ("/api/v1/posts", '{"title": "\\ud800", "body": "x"}', AUTH)):
        answer = public.post(path, data=body, content_type="application/json", headers=headers)
        assert answer.status_code == 422, answer.data
        assert answer.get_json()["field"] in ("name", "title") and "Unicode" in answer.get_json()["message"]
    answer = public.patch("/api/v1/settings", data=json.dumps({"name": "\ud800"}), content_type="application/json",
                          headers=AUTH)
    assert answer.status_code == 422
