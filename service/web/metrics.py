"""Prometheus metrics: requests and latency per endpoint, posts and subscribers counted at scrape time."""
from __future__ import annotations

import time

from flask import Flask, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from ..extensions import db
from ..models import Post, Subscriber


class _ContentCollector:
    """Posts and subscribers by status, counted when Prometheus scrapes."""

    def __init__(self, app: Flask):
        self.app = app

    def collect(self):
        with self.app.app_context():
            posts = GaugeMetricFamily("keepreading_posts", "Posts by visibility and state", labels=["visibility", "published"])
            for visibility, published, count in db.session.execute(
                select(Post.visibility, Post.published, func.count()).group_by(Post.visibility, Post.published)
            ):
                posts.add_metric([visibility, str(bool(published)).lower()], count)
            subscribers = GaugeMetricFamily("keepreading_subscribers", "Subscribers by status", labels=["status"])
            for status, count in db.session.execute(select(Subscriber.status, func.count()).group_by(Subscriber.status)):
                subscribers.add_metric([status], count)
            db.session.remove()
        yield posts
        yield subscribers


def register(app: Flask) -> None:
    registry = CollectorRegistry()
    requests = Counter("keepreading_http_requests", "HTTP requests", ["method", "endpoint", "status"], registry=registry)
    latency = Histogram("keepreading_http_request_seconds", "HTTP request latency", ["endpoint"], registry=registry)
    registry.register(_ContentCollector(app))
    app.extensions["metrics_registry"] = registry

    @app.before_request
    def start_timer():
        g.request_started = time.perf_counter()

    @app.after_request
    def observe(response):
        endpoint = request.endpoint or "unknown"
        requests.labels(request.method, endpoint, str(response.status_code)).inc()
        if "request_started" in g:
            latency.labels(endpoint).observe(time.perf_counter() - g.request_started)
        return response
