"""One log line per request, with its request id (echoed as X-Request-ID), route, status and duration."""
from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, current_app, g, request

from .. import logs

log = logging.getLogger(__name__)
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:=+-]{1,128}")


def register(app: Flask) -> None:
    app.before_request(start)
    app.after_request(finish)
    app.teardown_request(forget)


def start() -> None:
    g.request_id = request_id()
    g.log_started = time.perf_counter()
    g.log_token = logs.bind(request_id=g.request_id)


def request_id() -> str:
    """The id the trusted proxy in front gave the request, if it looks like one; else a new one."""
    given = request.headers.get("X-Request-ID", "")
    if current_app.config["PROXY_COUNT"] and SANE_REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


def finish(response: Response) -> Response:
    if "request_id" not in g:  # a hook before ours answered (a CSRF refusal, say)
        start()
    response.headers["X-Request-ID"] = g.request_id
    rule = request.url_rule.rule if request.url_rule else None
    duration = round((time.perf_counter() - g.log_started) * 1000, 2)
    path = logs.redact(request.full_path if request.query_string else request.path)
    log.info("%s %s %s", request.method, path, response.status_code,
             extra={"method": request.method, "path": path, "route": rule, "endpoint": request.endpoint,
                    "status": response.status_code, "duration_ms": duration})
    return response


def forget(_error=None) -> None:
    token = g.pop("log_token", None)
    if token is not None:
        try:
            logs.unbind(token)
        except ValueError:  # bound in another context (a streamed response's)
            pass
