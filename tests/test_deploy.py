"""The shipped production setup: settings documented where an operator looks (drift checks), declared
dependencies, gunicorn's shipped settings under stalled clients, and the systemd units' commands running
subscribe -> confirm -> digest on PostgreSQL and Redis over real HTTP and SMTP."""
from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import tomllib
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from dotenv import dotenv_values

from .conftest import REDIS_URL, create_postgres_database, drop_postgres_database, need_server, postgres_problem, redis_problem
from .entrypoints import BIN, ROOT, STRONG_SECRET, Browser, answers, environment, free_port, script, wait_for
from .helpers import csrf_token

DEPLOY = ROOT / "service" / "deploy"
ENV_EXAMPLE = DEPLOY / "keepreading.env.example"
SETTING_LINE = re.compile(r"^(#\s*)?KEEPREADING_([A-Z0-9_]+)=(.*)$")
UNKNOWN = object()


def settings_in_config() -> dict[str, object]:
    """Each KEEPREADING_<name> service/config.py reads through _env, with its default (UNKNOWN when computed)."""
    found: dict[str, object] = {}
    for node in ast.walk(ast.parse((ROOT / "service" / "config.py").read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_env"
                and node.args and isinstance(node.args[0], ast.Constant)):
            found[node.args[0].value] = _value(node.args[1]) if len(node.args) > 1 else None
    return found


def _value(node: ast.expr) -> object:
    try:  # constants and arithmetic on them, e.g. str(48 * 3600); anything naming a variable is UNKNOWN
        return eval(compile(ast.Expression(node), "config.py", "eval"), {"__builtins__": {}, "str": str})
    except Exception:
        return UNKNOWN


def env_example_lines() -> list[tuple[str, str, bool]]:
    """(name, value, commented) for each KEEPREADING_ line of the example settings file."""
    return [(match[2], match[3], bool(match[1])) for line in ENV_EXAMPLE.read_text().splitlines()
            if (match := SETTING_LINE.match(line))]


def readme_settings() -> list[str]:
    """The names in the first column of README's settings table (under "Running it for real")."""
    section = (ROOT / "README.md").read_text().split("## Running it for real", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [name for row in rows for name in re.findall(r"`([A-Z0-9_]+)`", row.split("|")[1])]


def test_the_drift_checks_read_the_files():
    assert {"SECRET_KEY", "DATABASE_URL", "DIGEST_BATCH_SIZE", "INSTANCE_PATH"} <= set(settings_in_config())
    assert settings_in_config()["CONFIRM_MAX_AGE"] == str(48 * 3600)
    assert "PAGE_CACHE_SECONDS" in readme_settings() and ("ENV", "production", True) in env_example_lines()


def test_every_setting_is_in_the_env_example_once():
    names = [name for name, _, _ in env_example_lines()]
    assert sorted(set(settings_in_config()) - set(names)) == []
    assert sorted(set(names) - set(settings_in_config())) == []  # nothing the code no longer reads
    assert sorted(name for name in set(names) if names.count(name) > 1) == []


def test_every_setting_is_in_readme_once():
    names = readme_settings()
    assert sorted(set(settings_in_config()) - set(names)) == []
    assert sorted(set(names) - set(settings_in_config())) == []
    assert sorted(name for name in set(names) if names.count(name) > 1) == []


def test_the_env_example_shows_the_defaults_the_code_uses():
    defaults = settings_in_config()
    shown = {name: value for name, value, commented in env_example_lines() if commented}
    wrong = {name: (value, defaults[name]) for name, value in shown.items()
             if defaults.get(name, UNKNOWN) is not UNKNOWN and value != (defaults[name] or "")}
    assert wrong == {}


def test_the_env_example_is_plain_key_value_lines_for_systemd_and_dotenv():
    for line in ENV_EXAMPLE.read_text().splitlines():
        assert line == "" or line.startswith("#") or re.fullmatch(r"KEEPREADING_[A-Z0-9_]+=[^'\"]*", line), line
    parsed = dotenv_values(ENV_EXAMPLE)
    assert parsed["KEEPREADING_MAIL_FROM"] == "The Slow Harbour <newsletter@news.example.org>"


def test_every_third_party_import_in_service_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_normal(re.match(r"[A-Za-z0-9_.-]+", requirement)[0]) for requirement in project["dependencies"]}
    providers = importlib.metadata.packages_distributions()
    undeclared = {}
    for path in (ROOT / "service").rglob("*.py"):
        for module in _imported_top_level(path) - set(sys.stdlib_module_names) - {"service"}:
            distributions = {_normal(name) for name in providers.get(module, [module])}
            if not distributions & declared:
                undeclared.setdefault(module, set()).add(str(path.relative_to(ROOT)))
    assert undeclared == {}


def _imported_top_level(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _shipped_gunicorn_setting(name: str):
    """Read in a process of its own: importing the settings sets PROMETHEUS_MULTIPROC_DIR, as gunicorn's master needs."""
    code = f"from service.deploy import gunicorn_conf; print(repr(gunicorn_conf.{name}))"
    return ast.literal_eval(subprocess.check_output([sys.executable, "-c", code], cwd=ROOT, text=True))


def test_gunicorn_with_the_shipped_settings_serves_while_clients_stall(tmp_path):
    """The bare `gunicorn wsgi:app` (one sync worker) served nobody while one client sent half a request."""
    threads = _shipped_gunicorn_setting("threads")
    port = free_port()
    env = {**environment(SECRET_KEY=STRONG_SECRET, INSTANCE_PATH=str(tmp_path / "instance")),
           "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port}"}
    url = f"http://127.0.0.1:{port}/static/style.css"
    with open(tmp_path / "gunicorn.log", "wb") as log:
        web = subprocess.Popen([script("gunicorn"), "-c", "python:service.deploy.gunicorn_conf", "service.deploy.wsgi:app"],
                               cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    stalled: list[socket.socket] = []
    try:
        wait_for(lambda: answers(url), 60, "gunicorn did not answer")
        # Fewer than one process's threads: wherever the kernel hands them, every process keeps a free thread.
        for _ in range(threads - 1):
            stalled.append(socket.create_connection(("127.0.0.1", port)))
            stalled[-1].sendall(b"GET /static/style.css HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the rest
        # served long before the stalled clients' 30 s timeout, which the bare setup would have waited out
        with urllib.request.urlopen(url, timeout=15) as response:
            assert response.status == 200 and b"{" in response.read()
    finally:
        for connection in stalled:
            connection.close()
        _stop(web)


# --- the shipped production setup, end to end ---------------------------------------------------------------

def unit_commands(unit: str, key: str) -> list[list[str]]:
    """The unit's ExecStart=/ExecStartPre= commands, run from this venv instead of /opt/keepreading."""
    lines = (DEPLOY / "systemd" / unit).read_text().splitlines()
    return [[part.replace("/opt/keepreading/bin/", f"{BIN}/") for part in shlex.split(line.split("=", 1)[1])]
            for line in lines if line.startswith(f"{key}=")]


def _stop(*processes: subprocess.Popen) -> None:
    """SIGTERM to each process group at once (graceful shutdowns overlap), SIGKILL what outlives a minute."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        os.killpg(process.pid, signal.SIGTERM)
    for process in running:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def production(tmp_path, mailbox):
    """gunicorn, a Celery worker and beat as the systemd units start them, on PostgreSQL and Redis, with the
    example settings file (filled in) in the instance folder, in production mode with a strong secret."""
    need_server("PostgreSQL", postgres_problem())
    need_server("Redis", redis_problem())
    database = create_postgres_database(f"kr_deploy_{os.getpid()}")
    port = free_port()
    instance = tmp_path / "instance"
    instance.mkdir()
    settings = {"SECRET_KEY": STRONG_SECRET, "BASE_URL": f"http://127.0.0.1:{port}", "DATABASE_URL": database,
                "BROKER_URL": REDIS_URL, "REDIS_URL": REDIS_URL, "SMTP_URL": mailbox.url,
                "ADMIN_TOKEN": "deploy-admin-token", "CELERY_QUEUE": f"kr-deploy-{os.getpid()}"}
    _write_settings(instance / "keepreading.env", settings)
    env = environment(INSTANCE_PATH=str(instance))  # the venv's own instance would be the checkout's
    processes = []
    try:
        for command in unit_commands("keepreading-web.service", "ExecStartPre"):
            subprocess.run(command, cwd=instance, env=env, check=True, capture_output=True, timeout=120)
        starts = {"web": (unit_commands("keepreading-web.service", "ExecStart")[0], {"GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port}"}),
                  "worker": (unit_commands("keepreading-worker.service", "ExecStart")[0] + ["-n", f"deploy-{os.getpid()}@%h"], {}),
                  "beat": (unit_commands("keepreading-beat.service", "ExecStart")[0], {})}
        for name, (command, extra) in starts.items():
            with open(tmp_path / f"{name}.log", "wb") as log:
                processes.append(subprocess.Popen(command, cwd=instance, env={**env, **extra}, stdout=log,
                                                  stderr=subprocess.STDOUT, start_new_session=True, umask=0o022))
        logs = {name: tmp_path / f"{name}.log" for name in starts}
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/healthz"), 60, "gunicorn did not answer /healthz")
        wait_for(lambda: " ready." in logs["worker"].read_text(), 60, "the worker did not start")
        wait_for(lambda: "beat: Starting" in logs["beat"].read_text(), 60, "beat did not start")
        yield {"base_url": f"http://127.0.0.1:{port}", "instance": instance, "processes": processes, "logs": logs}
    finally:
        _stop(*processes)
        drop_postgres_database(database)


def _write_settings(path: Path, settings: dict[str, str]) -> None:
    """The example file as an operator fills it in: its lines kept, the chosen values set."""
    lines, chosen = [], dict(settings)
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = SETTING_LINE.match(line)
        if match and match[2] in chosen:
            line = f"KEEPREADING_{match[2]}={chosen.pop(match[2])}"
        lines.append(line)
    lines += [f"KEEPREADING_{name}={value}" for name, value in chosen.items()]
    path.touch(mode=0o600)  # as README's installation does
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_the_shipped_production_setup_runs_subscribe_confirm_and_digest(production, mailbox):
    reader = Browser(production["base_url"])
    admin = {"Authorization": "Bearer deploy-admin-token", "Content-Type": "application/json"}
    assert reader.request("/")[0] == 200
    form = urllib.parse.urlencode({"email": "deployed@example.org", "website": "", "next": "/"}).encode()
    assert reader.request("/subscribe", data=form)[0] == 200

    confirmation = mailbox.wait_for(1, timeout=60)[0]
    assert confirmation.to == "deployed@example.org"
    link = next(url for url in re.findall(r"https?://[^\s\"'<>]+", confirmation.text) if "/confirm/" in url)
    path = link.removeprefix(production["base_url"])
    status, page = reader.request(path)
    assert status == 200
    status, _ = reader.request(path, data=urllib.parse.urlencode({"csrf_token": csrf_token(page)}).encode())
    assert status == 200
    status, body = reader.request("/api/v1/subscribers?status=confirmed", headers=admin)
    assert status == 200 and "deployed@example.org" in body

    post = {"title": "Deployed harbour notes", "body": "Words from production.", "visibility": "subscribers", "published": True}
    assert reader.request("/api/v1/posts", data=json.dumps(post).encode(), headers=admin)[0] == 201
    status, body = reader.request("/api/v1/digests", data=b"{}", headers=admin)
    assert status == 202 and json.loads(body)["recipients"] == 1
    digest = wait_for(lambda: [m for m in mailbox.to("deployed@example.org") if "Deployed harbour notes" in m.text], 60,
                      "the digest did not arrive")
    assert len(digest) == 1 and digest[0].message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    instance = production["instance"]
    assert all(process.poll() is None for process in production["processes"])  # web, worker and beat still up
    assert any(instance.glob("celerybeat-schedule*"))  # beat keeps its schedule in the instance
    assert stat.S_IMODE(instance.stat().st_mode) == 0o700
    assert {p.name: oct(p.stat().st_mode) for p in instance.rglob("*") if p.stat().st_mode & 0o077} == {}
