"""`make run` as a user runs it, in a checkout (a copy of this one, at another path): README's commands from
another folder and shell work on its instance as printed, its files are private, a taken port is one line,
and stopping it leaves nothing running."""
from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from .entrypoints import Browser, alive, answers, command_line, copy_checkout, descendants, environment, free_port, script, wait_for

pytestmark = pytest.mark.slow
BANNER = "keepreading is serving"


class MakeRun:
    """`make run` in a checkout, on its own port; `settings` are KEEPREADING_* variables (none by default)."""

    def __init__(self, checkout: Path, log: Path, **settings: str):
        self.checkout = checkout
        self.log = log
        self.port = free_port()
        self.env = {**environment(**settings), "PYTHONPATH": str(checkout), "PORT": str(self.port)}
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        # This venv is installed already: -o keeps make from reinstalling it.
        return ["make", "--no-print-directory", "-o", f"{sys.prefix}/.installed", "run", f"VENV={sys.prefix}"]

    def start(self) -> "MakeRun":
        with open(self.log, "wb") as output:
            # A session of its own, as a terminal gives a foreground job: Ctrl-C is SIGINT to its process group.
            self.process = subprocess.Popen(self.command(), cwd=self.checkout, env=self.env, stdout=output,
                                            stderr=subprocess.STDOUT, start_new_session=True, umask=0o022)
        wait_for(lambda: self.ready() or self.process.poll() is not None, 120, f"make run did not come up: {self.output()}")
        assert self.process.poll() is None, self.output()
        return self

    def ready(self) -> bool:
        output = self.output()
        return (BANNER in output and " ready." in output and "beat: Starting" in output
                and answers(f"http://127.0.0.1:{self.port}/healthz"))

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    return copy_checkout(tmp_path_factory.mktemp("elsewhere") / "keepreading")


@pytest.fixture(scope="module")
def served(checkout):
    """`make run` on the embedded default, exactly as README says: no variable set."""
    server = MakeRun(checkout, checkout.parent / "make-run.log").start()
    yield server
    server.stop()


def test_readme_commands_from_another_folder_work_on_the_served_instance(served, checkout, tmp_path):
    folder = tmp_path / "somewhere-else"
    folder.mkdir()
    (folder / "notes.md").write_text("A harbour note.\n\n<!--more-->\n\nThe rest, for subscribers.\n")
    (folder / "list.csv").write_text("email,name,status,subscribed_at\nreader@example.org,Reader,confirmed,2020-01-01\n")

    def keepreading(*arguments: str) -> str:
        result = subprocess.run([script("keepreading"), *arguments], cwd=folder, timeout=180,
                                env={**environment(), "PYTHONPATH": str(checkout)}, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "welcome-aboard" in keepreading("posts", "list")  # the demo posts `make run` loaded
    keepreading("subscribers", "import", "list.csv")
    added = keepreading("posts", "add", "--title", "Harbour notes", "--file", "notes.md", "--publish")
    assert added.strip() == f"published: http://127.0.0.1:{served.port}/p/harbour-notes"  # BASE_URL follows PORT
    sent = keepreading("digest", "send", "--wait", "--timeout", "120")
    assert sent.splitlines()[-1] == "sent 1, failed 0, skipped 0"  # queued here, sent by the server's worker
    digest = [path.read_text() for path in (checkout / "instance" / "outbox").glob("*.eml")
              if "reader@example.org" in path.read_text()]
    assert len(digest) == 1 and "Harbour notes" in digest[0]
    assert sorted(path.name for path in folder.iterdir()) == ["list.csv", "notes.md"]  # no second instance


def test_the_served_instance_is_private(served, checkout):
    browser = Browser(f"http://127.0.0.1:{served.port}")
    form = urllib.parse.urlencode({"email": "private@example.org", "website": "", "next": "/"}).encode()
    status, _ = browser.request("/subscribe", data=form)
    assert status == 200
    outbox = checkout / "instance" / "outbox"
    wait_for(lambda: any("private@example.org" in path.read_text() for path in outbox.glob("*.eml")), 60,
             "the confirmation mail was not written")
    instance = checkout / "instance"
    assert stat.S_IMODE(instance.stat().st_mode) == 0o700
    readable = {str(path.relative_to(instance)): oct(stat.S_IMODE(path.stat().st_mode))
                for path in instance.rglob("*") if path.stat().st_mode & 0o077}
    assert readable == {}
    assert {"keepreading.sqlite", "broker.sqlite", "secret_key", "keepreading.env"} <= {p.name for p in instance.iterdir()}


def test_a_taken_port_is_one_line_before_anything_starts(served, checkout, tmp_path):
    second = MakeRun(checkout, tmp_path / "second.log", INSTANCE_PATH=str(tmp_path / "instance"))
    result = subprocess.run(second.command(), cwd=checkout, env={**second.env, "PORT": str(served.port)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if not line.startswith("make")]
    assert ours == [f"keepreading: cannot listen on 127.0.0.1:{served.port} (Address already in use); "
                    f"start on another port, e.g. PORT={served.port + 1} make run"]
    assert result.stdout == "" and not (tmp_path / "instance").exists()


@pytest.mark.parametrize("stop", ["SIGTERM to make", "Ctrl-C"])
def test_stopping_make_run_stops_its_worker_and_beat(checkout, tmp_path, stop):
    server = MakeRun(checkout, tmp_path / "make-run.log", INSTANCE_PATH=str(tmp_path / "instance")).start()
    running = descendants(server.process.pid)
    commands = [command_line(pid) for pid in running]
    assert any(re.search(r"celery .* worker", line) for line in commands), commands
    assert any(re.search(r"celery .*beat", line) for line in commands), commands
    if stop == "Ctrl-C":
        os.killpg(server.process.pid, signal.SIGINT)  # what a terminal sends its foreground job
    else:
        os.kill(server.process.pid, signal.SIGTERM)
    server.process.wait(timeout=60)
    wait_for(lambda: not any(alive(pid) for pid in running), 60,
             f"left running: {[command_line(pid) for pid in running if alive(pid)]}")
