"""The wheel as an operator installs it: built from a copy of the source, installed into a fresh venv, it holds
every page, email template, static file, migration and deploy file, finds its instance by the installed
convention, and sends a confirmation mail."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import urllib.parse
import zipfile
from pathlib import Path

import pytest

from .entrypoints import ROOT, STRONG_SECRET, Browser, answers, copy_checkout, environment, free_port, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built offline with this venv's setuptools, from a copy (the build leaves build/ and *.egg-info behind)."""
    folder = tmp_path_factory.mktemp("wheel")
    source = copy_checkout(folder / "source")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--wheel-dir", str(folder / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    return next((folder / "dist").glob("keepreading-*.whl"))


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding the project only as installed from the wheel; its dependencies are this venv's
    (a .pth line), so the test needs no network."""
    venv = tmp_path_factory.mktemp("installed") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, timeout=300)
    return venv


def test_the_wheel_holds_every_file_of_the_package(wheel):
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    expected = {str(Path(folder, name).relative_to(ROOT)) for folder, _, names in os.walk(ROOT / "service", followlinks=True)
                for name in names if "__pycache__" not in folder and not name.endswith(".pyc")}
    assert sorted(expected - shipped) == []
    assert {"service/emails/confirm.txt", "service/emails/confirm.html", "service/deploy/keepreading.env.example",
            "service/deploy/systemd/keepreading-beat.service", "service/templates/embed.js"} <= shipped
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(next(name for name in shipped if name.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in metadata


def test_an_installed_wheel_sends_a_confirmation_mail(venv, mailbox, tmp_path):
    python = str(venv / "bin" / "python")
    port = free_port()
    anywhere = tmp_path / "anywhere"
    anywhere.mkdir()
    env = environment(SECRET_KEY=STRONG_SECRET, SMTP_URL=mailbox.url, BASE_URL=f"http://127.0.0.1:{port}")
    env.pop("PYTHONPATH", None)

    def run(*arguments: str) -> str:
        result = subprocess.run(arguments, cwd=anywhere, env=env, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    imported_from = Path(run(python, "-c", "import service; print(service.__file__)"))
    assert imported_from.is_relative_to(venv) and not imported_from.is_relative_to(ROOT)
    run(str(venv / "bin" / "keepreading"), "db", "upgrade")  # the migrations came with the wheel
    instance = venv / "var" / "keepreading-instance"  # Flask's convention for an installed package
    assert (instance / "keepreading.sqlite").exists()

    started = []
    try:
        for name, command, extra in [
            ("worker", ["-m", "celery", "-A", "service.deploy.worker", "worker", "--concurrency", "1", "--without-gossip",
                        "--without-mingle", "--without-heartbeat", "-n", f"wheel-{os.getpid()}@%h"], {}),
            ("web", ["-m", "gunicorn", "-c", "python:service.deploy.gunicorn_conf", "service.deploy.wsgi:app"],
             {"GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port} --workers 1"}),
        ]:
            with open(tmp_path / f"{name}.log", "wb") as log:
                started.append(subprocess.Popen([python, *command], cwd=anywhere, env={**env, **extra}, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True))
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: answers(f"{base}/healthz"), 60, f"gunicorn did not answer: {(tmp_path / 'web.log').read_text()}")
        assert answers(f"{base}/") and answers(f"{base}/static/style.css")
        form = urllib.parse.urlencode({"email": "wheel@example.org", "website": "", "next": "/"}).encode()
        assert Browser(base).request("/subscribe", data=form)[0] == 200
        mail = mailbox.wait_for(1, timeout=90)[0]
    finally:
        for process in started:
            os.killpg(process.pid, signal.SIGTERM)
        for process in started:
            process.wait(timeout=60)
    assert mail.to == "wheel@example.org"
    assert f"{base}/confirm/" in mail.text
    assert "style=" in mail.html  # the HTML template, its CSS inlined
    assert list(anywhere.iterdir()) == []
