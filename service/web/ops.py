"""Operations: health check and Prometheus metrics."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import health

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    checks = {"database": health.check_database(), "broker": health.check_broker()}
    failed = sorted(name for name, problem in checks.items() if problem)
    body = {name: (problem or "ok") for name, problem in checks.items()}
    body["status"] = "ok" if not failed else "failing: " + ", ".join(failed)
    return jsonify(body), (503 if failed else 200)


@bp.get("/metrics")
def metrics():
    body = generate_latest(current_app.extensions["metrics_registry"])
    return body, 200, {"Content-Type": CONTENT_TYPE_LATEST}
