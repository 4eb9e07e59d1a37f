"""Running the project's entry points as a user would: console scripts, `make`, gunicorn, Celery, in processes."""
from __future__ import annotations

import os
import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STRONG_SECRET = "a-test-secret-that-is-long-enough-0123456789"
# What a source checkout holds that the entry points use (a copy of it is a checkout at another path).
CHECKOUT_PARTS = ("service", "emails", "wsgi.py", "worker.py", "Makefile", "pyproject.toml", "README.md")


def script(name: str) -> str:
    """A console script of the test's venv (`keepreading`, `celery`, `gunicorn`)."""
    return str(BIN / name)


def environment(**settings: str) -> dict[str, str]:
    """This process's environment without its KEEPREADING_* settings, plus `settings` (KEEPREADING_ prefixed)."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("KEEPREADING_") or name.startswith("KEEPREADING_TEST_")}
    env.update({f"KEEPREADING_{name}": value for name, value in settings.items()})
    return env


def copy_checkout(destination: Path) -> Path:
    """The parts of this checkout the entry points use, copied to `destination` (symlinks kept as links)."""
    destination.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "instance")
    for part in CHECKOUT_PARTS:
        source = ROOT / part
        if source.is_dir():
            shutil.copytree(source, destination / part, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(source, destination / part)
    return destination


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check, timeout: float, message: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} within {timeout}s")
        time.sleep(interval)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def descendants(pid: int) -> set[int]:
    """Every living process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, queue = set(), [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.add(child)
            queue.append(child)
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent's wait() counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Browser:
    """urllib with a cookie jar: a reader's browser against a real server."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))

    def request(self, path: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, str]:
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers or {})
        try:
            with self.opener.open(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
