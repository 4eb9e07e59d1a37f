"""Recommended gunicorn settings: `gunicorn -c python:service.deploy.gunicorn_conf service.deploy.wsgi:app`.

Command-line flags and GUNICORN_CMD_ARGS override anything here (e.g. `--bind 0.0.0.0:8000`, `--workers 8`).
Run it behind a reverse proxy (nginx, Caddy) that buffers requests and responses: a slow or stalled client
then costs the proxy a connection, not one of gunicorn's threads.

The hooks at the end make /metrics exact across workers (prometheus-client's multiprocess mode: each worker
writes its counts to files in one folder and every scrape adds them up) and gunicorn's own log lines JSON
like the app's, with tokens redacted.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from service.config import instance_path


def _cores() -> int:
    """CPUs this process may run on (a container's or systemd's CPU set, not the whole machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# Local only: the reverse proxy on this machine forwards to it.
bind = "127.0.0.1:8000"

# One process per core plus one; threads inside each let a request waiting on the database, Redis or a slow
# client not hold the whole process, as the default single sync worker did (one slow client stalled
# every request for up to `timeout` seconds). Views are mostly CPU-bound Python, so more threads than
# this buys little (measured with `make bench` on two cores: bench/gunicorn.conf.py).
worker_class = "gthread"
workers = _cores() + 1
threads = 4

# A worker whose main loop is silent this long is killed and replaced (the gthread main loop keeps
# answering while its threads wait, so this catches a hung process, not a slow request).
timeout = 30
# On SIGTERM (systemd stop, deploy), requests in flight get this long to finish.
graceful_timeout = 30
# Idle keep-alive connections from the proxy are closed after this many seconds.
keepalive = 5

# Import the app once in the master, before forking: a configuration error stops the start at once
# with its one-line message, and the workers share the imported code's memory. The app opens no
# connection at import time (pools connect lazily, in each worker). Reloading code needs a restart
# (systemctl restart), not SIGHUP.
preload_app = True

# X-Forwarded-Proto/-For are trusted only from these addresses: the proxy on this machine. With a proxy
# on another host, set its address here or in the FORWARDED_ALLOW_IPS environment variable, and
# KEEPREADING_PROXY_COUNT to the number of proxies, so the app takes client IPs (rate limits,
# consent records) from X-Forwarded-For. Never "*" when clients can reach gunicorn directly.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# gunicornc's control socket (gunicorn >= 25.1) in this installation's private instance folder, not the
# user's ~/.gunicorn/gunicorn.ctl, which every gunicorn of the user shares (and systemd's unit keeps read-only).
control_socket = str(instance_path() / "gunicorn.ctl")

# Errors to stderr (journald under systemd); the access log is the proxy's (or `--access-logfile -`).
errorlog = "-"
accesslog = None
loglevel = "info"

# prometheus_client reads this when it is first imported, so it is set here, in the master, before the app
# is loaded; the workers inherit it. An operator may name the folder; otherwise a private temporary one.
# The folder must exist now: with preload_app the app (and its metrics) load before any server hook runs.
_TEMPORARY = "keepreading-metrics-"
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=_TEMPORARY)
Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(mode=0o700, parents=True, exist_ok=True)

# gunicorn's own lines (errors, and access lines if turned on) in the app's JSON, tokens in URLs redacted.
logger_class = "service.logs.GunicornLogger"


def on_starting(server) -> None:
    """Counts start at zero with each start of gunicorn (not on a reload): files of an earlier run go."""
    for leftover in Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"):
        leftover.unlink()


def child_exit(server, worker) -> None:
    """A worker is gone: its live gauges go with it; the requests it counted stay in the totals."""
    from service.web.metrics import worker_exited

    worker_exited(worker.pid)


def on_exit(server) -> None:
    """The temporary folder made above goes when gunicorn stops; a folder the operator named stays."""
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    if folder.parent == Path(tempfile.gettempdir()) and folder.name.startswith(_TEMPORARY):
        shutil.rmtree(folder, ignore_errors=True)
