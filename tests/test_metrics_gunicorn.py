"""/metrics under a real gunicorn with several worker processes: every scrape, whichever worker answers, is exact."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import ADMIN_TOKEN, wait_until
from .helpers import Reader
from .mailbox import _free_port
from .test_ops import samples, value

ROOT = Path(__file__).resolve().parent.parent
SIGNED = "eyJhIjoxfQ.ZZ9xYw.abcdefghijklmnopqrstuvwxyz012"  # shaped like a token
pytestmark = pytest.mark.slow


class Gunicorn:
    """`gunicorn -c service/deploy/gunicorn_conf.py wsgi:app` with `workers` processes, on a port of its own."""

    def __init__(self, env: dict[str, str], workers: int, log: Path):
        self.url = f"http://127.0.0.1:{_free_port()}"
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("KEEPREADING_", "PROMETHEUS_"))}
        self.command = [sys.executable, "-m", "gunicorn", "-c", "service/deploy/gunicorn_conf.py", "--workers",
                        str(workers), "--bind", self.url.removeprefix("http://"), "--access-logfile", "-", "wsgi:app"]
        self.env, self.log = {**environment, **env}, log

    def __enter__(self) -> "Gunicorn":
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=output,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: self.status("/healthz") == 200, 60, "gunicorn did not answer")
        return self

    def __exit__(self, *exc) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=30)

    def status(self, path: str) -> int | None:
        try:
            return self.get(path).status
        except urllib.error.HTTPError as answer:
            return answer.code
        except (urllib.error.URLError, ConnectionError):
            return None

    def get(self, path: str, headers: dict | None = None):
        with urllib.request.urlopen(urllib.request.Request(self.url + path, headers=headers or {}), timeout=10) as answer:
            answer.body = answer.read()
            return answer

    def scrape(self) -> dict:
        return samples(self.get("/metrics", {"Authorization": f"Bearer {ADMIN_TOKEN}"}).body.decode())


def test_counts_are_exact_across_workers_and_outlive_the_workers_that_counted(app, client, backend, tmp_path):
    Reader(client, "counted@example.org").subscribe()
    folder = tmp_path / "metrics"
    env = {**backend.env, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    with Gunicorn(env, workers=3, log=tmp_path / "gunicorn.log") as server:
        with ThreadPoolExecutor(12) as pool:
            assert set(pool.map(lambda _: server.get("/").status, range(90))) == {200}
        for _ in range(12):
            found = server.scrape()
            assert value(found, "keepreading_http_requests_total", endpoint="reader.archive", method="GET", status="200") == 90
            assert value(found, "keepreading_subscribers", status="pending") == 1
        # Every process that counted something dies; gunicorn starts others, which must read the dead ones' counts.
        counted = {int(path.stem.rsplit("_", 1)[1]) for path in folder.glob("*.db")}
        for pid in counted:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: server.status("/healthz") == 200, 60, "gunicorn did not start new workers")
        for _ in range(6):
            found = server.scrape()
            assert value(found, "keepreading_http_requests_total", endpoint="reader.archive", method="GET", status="200") == 90
        alive = {int(path.stem.rsplit("_", 1)[1]) for path in folder.glob("counter_*.db")} - counted
        assert alive, "the scrapes were answered by new workers"
        for path in (f"/unsubscribe/{SIGNED}", f"/p/harbour?t={SIGNED}"):
            assert server.status(path) in (400, 404)
    text = (tmp_path / "gunicorn.log").read_text()
    records = [json.loads(line) for line in text.splitlines() if line.strip()]  # gunicorn's lines and the app's: all JSON
    assert {"gunicorn.error", "gunicorn.access"} <= {record["logger"] for record in records}
    assert sum(record.get("route") == "/" for record in records) == 90
    assert SIGNED not in text and "ZZ9xYwabcdefghij" not in text
    assert sum("/unsubscribe/[redacted]" in record["message"] for record in records) == 2  # the app's line, gunicorn's
