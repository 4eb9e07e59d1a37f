"""The admin posts API: auth, create/list/get/patch/delete, validation, slugs, the OpenAPI document."""
import pytest

from .conftest import ADMIN_TOKEN


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Basic {ADMIN_TOKEN}"},
    {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
    {"Authorization": "Bearer "},
])
def test_api_refuses_without_the_right_token(client, headers):
    for method, path in [("get", "/api/v1/posts"), ("post", "/api/v1/posts"), ("get", "/api/v1/posts/x"),
                         ("patch", "/api/v1/posts/x"), ("delete", "/api/v1/posts/x"), ("get", "/api/v1/settings")]:
        response = getattr(client, method)(path, headers=headers, json={"title": "t", "body": "b"})
        assert response.status_code == 401, (method, path)
        assert response.get_json()["error"] == "unauthorized"
        assert "Bearer" in response.headers["WWW-Authenticate"]


def test_api_is_closed_when_no_admin_token_is_configured(app, client):
    app.config["ADMIN_TOKEN"] = None
    assert client.get("/api/v1/posts", headers={"Authorization": "Bearer None"}).status_code == 401
    assert client.get("/api/v1/posts", headers={"Authorization": "Bearer "}).status_code == 401


def test_create_returns_201_with_slug_and_url(admin):
    response = admin.post("/posts", json={"title": "Night Ferry, Revisited!", "body": "Hello *world*.",
                                          "visibility": "public", "published": True})
    assert response.status_code == 201
    body = response.get_json()
    assert body["slug"] == "night-ferry-revisited"
    assert body["url"] == "http://localhost/p/night-ferry-revisited"
    assert body["visibility"] == "public" and body["published"] is True
    assert body["published_at"] is not None


def test_defaults_are_subscribers_and_draft(admin):
    body = admin.post("/posts", json={"title": "Quiet", "body": "x"}).get_json()
    assert body["visibility"] == "subscribers"
    assert body["published"] is False and body["published_at"] is None


def test_list_get_patch_delete(admin):
    admin.publish(title="One")
    admin.publish(title="Two", visibility="public")
    listed = admin.get("/posts").get_json()["posts"]
    assert {post["slug"] for post in listed} == {"one", "two"}

    assert admin.get("/posts/one").get_json()["title"] == "One"
    patched = admin.patch("/posts/one", json={"title": "One, edited", "visibility": "public", "slug": "one-edited"})
    assert patched.status_code == 200
    assert patched.get_json()["slug"] == "one-edited"
    assert admin.get("/posts/one").status_code == 404
    assert admin.get("/posts/one-edited").get_json()["visibility"] == "public"

    assert admin.delete("/posts/one-edited").status_code == 204
    assert admin.get("/posts/one-edited").status_code == 404
    assert admin.delete("/posts/one-edited").status_code == 404


def test_unpublishing_hides_the_post(admin, client):
    admin.publish(title="Brief", visibility="public")
    assert client.get("/p/brief").status_code == 200
    admin.patch("/posts/brief", json={"published": False})
    assert client.get("/p/brief").status_code == 404
    assert b"Brief" not in client.get("/").data


def test_patch_rerenders_the_body(admin, client):
    admin.publish(title="Edit me", body="old words", visibility="public")
    admin.patch("/posts/edit-me", json={"body": "new **words**"})
    assert b"new <strong>words</strong>" in client.get("/p/edit-me").data


@pytest.mark.parametrize("payload, field", [
    ({"body": "no title"}, "title"),
    ({"title": "no body"}, "body"),
    ({"title": "", "body": "x"}, "title"),
    ({"title": "   ", "body": "x"}, "title"),
    ({"title": 5, "body": "x"}, "title"),
    ({"title": "t", "body": ["x"]}, "body"),
    ({"title": "t", "body": "x", "visibility": "secret"}, "visibility"),
    ({"title": "t", "body": "x", "published": "yes"}, "published"),
    ({"title": "t", "body": "x", "slug": "Not A Slug"}, "slug"),
    ({"title": "t", "body": "x", "slug": "../etc"}, "slug"),
    ({"title": "x" * 301, "body": "x"}, "title"),
])
def test_validation_errors_name_the_field(admin, payload, field):
    response = admin.post("/posts", json=payload)
    assert response.status_code == 422
    assert response.get_json()["field"] == field


def test_bad_json_is_a_clear_error(admin):
    response = admin.post("/posts", data="{not json", content_type="application/json")
    assert response.status_code in (400, 422)
    assert response.get_json()["error"] in ("invalid", "bad_request")
    assert admin.post("/posts", json=["a", "list"]).status_code == 422


def test_patch_rejects_unknown_fields(admin):
    admin.publish(title="Fixed")
    response = admin.patch("/posts/fixed", json={"author": "me"})
    assert response.status_code == 422 and response.get_json()["field"] == "author"


def test_generated_slugs_never_collide(admin):
    slugs = [admin.publish(title="Same Title")["slug"] for _ in range(3)]
    assert slugs == ["same-title", "same-title-2", "same-title-3"]


def test_explicit_slug_collision_is_409(admin):
    admin.publish(title="First", slug="taken")
    response = admin.post("/posts", json={"title": "Second", "body": "x", "slug": "taken"})
    assert response.status_code == 409 and response.get_json()["field"] == "slug"
    admin.publish(title="Third")
    assert admin.patch("/posts/third", json={"slug": "taken"}).status_code == 409


def test_gated_body_is_not_served_without_token(client, admin):
    admin.publish(title="Members only", body="the hidden ending")
    for path in ("/api/v1/posts", "/api/v1/posts/members-only"):
        response = client.get(path)
        assert response.status_code == 401
        assert b"hidden ending" not in response.data


def test_openapi_describes_every_admin_route(app, client):
    spec = client.get("/api/v1/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, item in spec["paths"].items()
                  for method in item if method != "parameters"}
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/") and rule.endpoint != "api.spec":
            path = rule.rule.removeprefix("/api/v1").replace("<", "{").replace(">", "}")
            path = path.replace("{int:", "{").replace("{path:", "{")
            served |= {(path, method) for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert served, "no admin routes found"
    assert served <= documented, served - documented
    assert documented <= served, documented - served
