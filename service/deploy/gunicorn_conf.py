"""gunicorn settings: `gunicorn -c service/deploy/gunicorn_conf.py wsgi:app`.

This part makes /metrics exact across workers (prometheus-client's multiprocess mode, in which each worker
writes its counts to files in one folder and every scrape adds them up), and makes gunicorn's own log lines
JSON like the app's, with tokens redacted.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# prometheus_client reads this when it is first imported, so it is set here, in the master, before the app
# is loaded; the workers inherit it. An operator may name the folder; otherwise a private temporary one.
_TEMPORARY = "keepreading-metrics-"
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=_TEMPORARY)

# gunicorn's own lines (errors, and access lines if turned on) in the app's JSON, tokens in URLs redacted.
logger_class = "service.logs.GunicornLogger"


def on_starting(server) -> None:
    """Counts start at zero with each start of gunicorn (not on a reload): files of an earlier run go."""
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for leftover in folder.glob("*.db"):
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
