"""Operations: health check and Prometheus metrics."""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from . import health
from .metrics import allowed, scrape

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    failed = health.failing_checks()
    body = {name: ("failing" if name in failed else "ok") for name in ("database", "broker")}
    body["status"] = "failing: " + ", ".join(failed) if failed else "ok"
    return jsonify(body), (503 if failed else 200)


@bp.get("/metrics")
def metrics():
    if not allowed(request.headers.get("Authorization", "")):
        refusal = "a valid Bearer metrics token (or the admin token) is required\n"
        return refusal, 401, {"WWW-Authenticate": 'Bearer realm="metrics"', "Content-Type": "text/plain; charset=utf-8"}
    body, content_type = scrape()
    return body, 200, {"Content-Type": content_type, "Cache-Control": "no-store"}
