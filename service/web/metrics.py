"""Prometheus metrics: HTTP requests and latency counted in every web process, the rest read from the database.

Under gunicorn each worker is a process of its own: with PROMETHEUS_MULTIPROC_DIR set before prometheus_client
is imported (service/deploy/gunicorn_conf.py does it), every worker writes its counts to files there and a
scrape, whichever worker answers it, adds up all of them.
"""
from __future__ import annotations

import hmac
import os
import time

from flask import Flask, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

from .database_metrics import DatabaseCollector

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # anything else counts as "other"


def register(app: Flask) -> None:
    registry = CollectorRegistry()
    shared = bool(os.environ.get(MULTIPROCESS_DIR))
    if shared:
        multiprocess.MultiProcessCollector(registry)
    in_process = None if shared else registry  # shared counts reach the registry through the files only
    requests = Counter("keepreading_http_requests", "HTTP requests", ["method", "endpoint", "status"], registry=in_process)
    latency = Histogram("keepreading_http_request_seconds", "HTTP request latency", ["endpoint"], registry=in_process)
    registry.register(DatabaseCollector(app))
    app.extensions["metrics_registry"] = registry

    @app.before_request
    def start_timer():
        g.request_started = time.perf_counter()

    @app.after_request
    def observe(response):
        endpoint = request.endpoint or "unknown"
        method = request.method if request.method in METHODS else "other"
        requests.labels(method, endpoint, str(response.status_code)).inc()
        if "request_started" in g:
            latency.labels(endpoint).observe(time.perf_counter() - g.request_started)
        return response


def allowed(authorization: str) -> bool:
    """A Bearer METRICS_TOKEN or ADMIN_TOKEN; with neither set, metrics stay closed."""
    scheme, _, given = authorization.partition(" ")
    tokens = [token for token in (current_app.config.get("METRICS_TOKEN"), current_app.config.get("ADMIN_TOKEN")) if token]
    # Every token is compared, in constant time, so the answer's timing says nothing about which was close.
    matches = [hmac.compare_digest(given.strip().encode(), token.encode()) for token in tokens]
    return scheme.lower() == "bearer" and any(matches)


def scrape() -> tuple[bytes, str]:
    return generate_latest(current_app.extensions["metrics_registry"]), CONTENT_TYPE_LATEST


def worker_exited(pid: int) -> None:
    """gunicorn's child_exit hook: a dead worker's live gauges go; its counts stay in the totals."""
    if os.environ.get(MULTIPROCESS_DIR):
        multiprocess.mark_process_dead(pid)
