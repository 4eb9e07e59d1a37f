"""The OpenAPI 3 description of the admin API (every /api/v1 route)."""
from __future__ import annotations

ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def _answers(ok: int, schema: dict | None, description: str, *errors: int) -> dict:
    answers = {str(ok): {"description": description, **(_json(schema) if schema else {})}}
    answers["401"] = {"description": "missing or wrong Bearer token", **_json(ERROR)}
    for code in errors:
        answers[str(code)] = {"description": "error", **_json(ERROR)}
    return answers


SLUG = {"name": "slug", "in": "path", "required": True, "schema": {"type": "string"}}
POST = {"$ref": "#/components/schemas/Post"}
POST_INPUT = {"$ref": "#/components/schemas/PostInput"}
NEW_POST = {"$ref": "#/components/schemas/NewPost"}
SETTINGS = {"$ref": "#/components/schemas/Settings"}
SUBSCRIBER = {"$ref": "#/components/schemas/Subscriber"}
STATUS_VALUES = ["pending", "confirmed", "unsubscribed", "bounced", "deleted"]
CSV_COLUMNS = "columns email,name,status,subscribed_at"
VISIBILITY_VALUES = ["public", "subscribers", "popup", "metered"]
VISIBILITY_HELP = ("public: full text for everyone; subscribers: others get the teaser and the subscribe block; "
                   "popup: full text for everyone, and a dismissable subscribe dialog for readers who are not "
                   "subscribed; metered: full text while the browser's free metered articles last "
                   "(free_articles per 30 days), then as subscribers")

PATHS: dict = {
    "/posts": {
        "get": {"summary": "List posts", "responses": _answers(200, {"type": "object", "properties": {"posts": {"type": "array", "items": POST}}}, "posts")},
        "post": {"summary": "Create a post", "requestBody": {"required": True, **_json(NEW_POST)},
                 "responses": _answers(201, POST, "created", 400, 409, 422)},
    },
    "/posts/{slug}": {
        "parameters": [SLUG],
        "get": {"summary": "Get a post", "responses": _answers(200, POST, "the post", 404)},
        "patch": {"summary": "Edit a post", "requestBody": {"required": True, **_json(POST_INPUT)},
                  "responses": _answers(200, POST, "edited", 404, 409, 422)},
        "delete": {"summary": "Delete a post", "responses": _answers(204, None, "deleted", 404)},
    },
    "/settings": {
        "get": {"summary": "Publication settings", "responses": _answers(200, SETTINGS, "settings")},
        "patch": {"summary": "Change publication settings", "requestBody": {"required": True, **_json(SETTINGS)},
                  "responses": _answers(200, SETTINGS, "settings", 422)},
    },
    "/subscribers": {
        "get": {
            "summary": "List subscribers (keyset or numbered pages), or export them all as CSV",
            "parameters": [
                {"name": "status", "in": "query", "schema": {"type": "string", "enum": STATUS_VALUES}},
                {"name": "q", "in": "query", "schema": {"type": "string"},
                 "description": "the start of the address (keyset pages then run from A to Z)"},
                {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 2**62},
                 "description": "keyset page: the subscribers older than this id (pass the previous answer's next_after)"},
                {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 1},
                 "description": "numbered page (with the total); costs more the deeper it is"},
                {"name": "per_page", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 20}},
                {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["json", "csv"]},
                 "description": "csv: every subscriber, " + CSV_COLUMNS},
            ],
            "responses": {
                **_answers(200, None, "", 422),
                "200": {"description": "a page of subscribers (JSON), or every subscriber (CSV)", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/SubscriberPage"}},
                    "text/csv": {"schema": {"type": "string"}}}},
            },
        },
    },
    "/subscribers/import": {
        "post": {
            "summary": "Import subscribers from CSV; invalid rows are reported by line, valid ones kept",
            "description": CSV_COLUMNS + "; status=confirmed rows are imported as confirmed with consent source "
                           "'import'; addresses already known are left unchanged, so re-importing is idempotent.",
            "requestBody": {"required": True, "content": {
                "text/csv": {"schema": {"type": "string"}},
                "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}},
            }},
            "responses": _answers(200, {"$ref": "#/components/schemas/ImportReport"}, "what was imported", 413, 422),
        },
    },
}

POST_FIELDS = {
    "title": {"type": "string", "minLength": 1, "maxLength": 300, "pattern": "\\S", "description": "not only spaces"},
    "body": {"type": "string", "maxLength": 500_000, "description": "Markdown; raw HTML is sanitised"},
    "visibility": {"type": "string", "enum": VISIBILITY_VALUES,
                   "description": VISIBILITY_HELP + ". A new post without it gets the setting default_visibility."},
    "published": {"type": "boolean", "default": False},
    "slug": {"type": "string", "maxLength": 200, "pattern": "^[a-z0-9]+(?:-[a-z0-9]+)*$"},
    "scheduled_at": {"type": ["string", "null"], "format": "date-time",
                     "description": "publish at this future moment (with its offset); null: not scheduled"},
}
SCHEMAS: dict = {
    "Error": {"type": "object", "required": ["error", "message"],
              "properties": {"error": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}},
    "PostInput": {"type": "object", "additionalProperties": False, "properties": POST_FIELDS},
    "NewPost": {"type": "object", "required": ["title", "body"], "properties": POST_FIELDS},
    "Post": {"type": "object", "properties": {
        "slug": {"type": "string"}, "title": {"type": "string"}, "url": {"type": "string", "format": "uri"},
        "visibility": {"type": "string", "enum": VISIBILITY_VALUES, "description": VISIBILITY_HELP},
        "published": {"type": "boolean"},
        "published_at": {"type": ["string", "null"], "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"},
        "body": {"type": "string"}, "scheduled_at": {"type": ["string", "null"], "format": "date-time"},
        "teaser_warning": {"type": ["string", "null"],
                           "description": "set when a subscriber-only post's teaser shows more than half of it"}}},
    "Settings": {"type": "object", "additionalProperties": False, "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "\\S"}, "default_frequency": {"type": "string", "enum": ["daily", "weekly"]},
        "send_hour": {"type": "integer", "minimum": 0, "maximum": 23}, "send_weekday": {"type": "integer", "minimum": 0, "maximum": 6},
        "timezone": {"type": "string", "description": "an IANA time zone name, e.g. Europe/Paris"},
        "teaser_words": {"type": "integer", "minimum": 10, "maximum": 2000},
        "blocked_domains": {"type": "array", "items": {"type": "string"}},
        "embed_origins": {"type": "array", "items": {"type": "string"},
                          "description": "origins allowed to frame the signup form, e.g. https://blog.example"},
        "default_visibility": {"type": "string", "enum": VISIBILITY_VALUES,
                               "description": "the visibility of a new post that names none"},
        "popup_scroll_percent": {"type": "integer", "minimum": 1, "maximum": 100,
                                 "description": "popup posts: the dialog opens once this share of the article is scrolled"},
        "popup_delay_seconds": {"type": "integer", "minimum": 0, "maximum": 3600,
                                "description": "popup posts: ...or after this many seconds on the page, whichever "
                                               "comes first (0: scrolling only)"},
        "popup_snooze_days": {"type": "integer", "minimum": 1, "maximum": 365,
                              "description": "a browser that closed the dialog does not see it again for this many days"},
        "free_articles": {"type": "integer", "minimum": 0, "maximum": 100,
                          "description": "metered posts a browser may read in full per rolling 30 days"},
        "digest_content": {"type": "string", "enum": ["full", "teaser"],
                           "description": "what digests carry of each post: its full text (cut to keep the "
                                          "mail unclipped) or its teaser"}}},
    "Subscriber": {"type": "object", "properties": {
        "id": {"type": "integer"}, "email": {"type": "string", "format": "email"}, "name": {"type": "string"},
        "status": {"type": "string", "enum": STATUS_VALUES},
        "frequency": {"type": "string", "enum": ["default", "daily", "weekly", "off"]},
        "created_at": {"type": "string", "format": "date-time"},
        "confirmed_at": {"type": ["string", "null"], "format": "date-time"},
        "unsubscribed_at": {"type": ["string", "null"], "format": "date-time"}}},
    "SubscriberPage": {"type": "object", "properties": {
        "subscribers": {"type": "array", "items": SUBSCRIBER}, "page": {"type": "integer"},
        "per_page": {"type": "integer"}, "total": {"type": "integer"}, "pages": {"type": "integer"},
        "next_after": {"type": ["integer", "null"], "description": "?after= for the next page; null on the last"}}},
    "ImportReport": {"type": "object", "properties": {
        "imported": {"type": "integer"}, "unchanged": {"type": "integer"},
        "invalid": {"type": "integer", "description": "bad rows; the first 1,000 are listed in errors"},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "line": {"type": "integer"}, "message": {"type": "string"}}}}}},
}


def document(base_url: str) -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "keepreading admin API", "version": "1"},
        "servers": [{"url": base_url + "/api/v1"}],
        "security": [{"bearer": []}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}, "schemas": SCHEMAS},
        "paths": PATHS,
    }

DIGEST = {"$ref": "#/components/schemas/Digest"}
PATHS["/digests"] = {
    "get": {"summary": "List digest runs, newest first, with delivery counts",
            "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}}],
            "responses": _answers(200, {"type": "object", "properties": {"digests": {"type": "array", "items": DIGEST}}}, "runs")},
    "post": {"summary": "Send a digest now to every confirmed subscriber with unseen posts",
             "requestBody": {"required": False, **_json({"type": "object", "properties": {
                 "frequency": {"type": "string", "enum": ["daily", "weekly"],
                               "description": "only subscribers of this cadence (default: every cadence but off)"}}})},
             "responses": _answers(202, DIGEST, "the run, created and queued", 422)},
}
SCHEMAS["Digest"] = {"type": "object", "properties": {
    "id": {"type": "integer"}, "slot": {"type": "string", "description": "daily:<date>, weekly:<date> or manual:<uuid>"},
    "frequency": {"type": ["string", "null"], "enum": ["daily", "weekly", None]},
    "cutoff": {"type": "string", "format": "date-time"}, "created_at": {"type": "string", "format": "date-time"},
    "finished_at": {"type": ["string", "null"], "format": "date-time",
                    "description": "set once no delivery is pending or sending"},
    "recipients": {"type": "integer"},
    "counts": {"type": "object", "properties": {status: {"type": "integer"} for status in
                                                ("pending", "sending", "sent", "failed", "skipped")}}}}

PATHS["/stats"] = {
    "get": {"summary": "The dashboard's figures: daily counts, headline numbers, where signups came from",
            "description": "From the daily counts the roll_up_stats beat task keeps (UTC days; as_of says when).",
            "parameters": [{"name": "days", "in": "query", "schema": {"type": "integer", "minimum": 31, "maximum": 366,
                                                                      "default": 90}}],
            "responses": _answers(200, {"$ref": "#/components/schemas/Stats"}, "the figures")},
}
SCHEMAS["Stats"] = {"type": "object", "properties": {
    "as_of": {"type": ["string", "null"], "format": "date-time"}, "confirmed": {"type": "integer"},
    "change": {"type": "object", "properties": {"7_days": {"type": "integer"}, "30_days": {"type": "integer"}}},
    "confirmation_rate_30_days": {"type": ["number", "null"]},
    "last_30_days": {"type": "object", "additionalProperties": {"type": "integer"}},
    "days": {"type": "array", "items": {"type": "object", "properties": {
        "day": {"type": "string", "format": "date"}, "confirmed": {"type": "integer"}},
        "additionalProperties": {"type": "integer"}}},
    "sources": {"type": "array", "items": {"type": "object", "properties": {
        "source": {"type": "string", "description": "post:<slug>, archive, site, web:<origin>, import, or empty"},
        "label": {"type": "string"}, "signups": {"type": "integer"}, "confirmations": {"type": "integer"}}}}}}
