"""The instance folder and the `keepreading` script: one instance wherever a process starts, private files,
strong production secrets, a help that needs nothing, errors in one line."""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from service import config, create_app
from service.config import ConfigError

from .entrypoints import ROOT, STRONG_SECRET, copy_checkout, environment, script


@pytest.fixture
def bare_env(monkeypatch, tmp_path):
    """No KEEPREADING_* variables but an instance folder of the test's own."""
    for name in list(os.environ):
        if name.startswith("KEEPREADING_") and not name.startswith("KEEPREADING_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KEEPREADING_INSTANCE_PATH", str(tmp_path / "instance"))
    return monkeypatch


def keepreading(*arguments: str, cwd: Path, **settings: str) -> subprocess.CompletedProcess:
    """The real console script, as a user runs it."""
    return subprocess.run([script("keepreading"), *arguments], cwd=cwd, env=environment(**settings),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("key", ["x", "s" * 31, "é" * 15])
def test_production_refuses_a_short_secret_key_in_one_line(bare_env, key):
    bare_env.setenv("KEEPREADING_SECRET_KEY", key)
    with pytest.raises(ConfigError) as caught:
        create_app()
    message = str(caught.value)
    assert "KEEPREADING_SECRET_KEY" in message and "at least 32" in message and "\n" not in message


def test_production_refuses_a_short_fallback_key(bare_env):
    bare_env.setenv("KEEPREADING_SECRET_KEY", STRONG_SECRET)
    bare_env.setenv("KEEPREADING_SECRET_KEY_FALLBACKS", f"{'o' * 32},old")
    with pytest.raises(ConfigError, match="a key in KEEPREADING_SECRET_KEY_FALLBACKS is 3 bytes"):
        create_app()


def test_production_accepts_32_bytes(bare_env):
    bare_env.setenv("KEEPREADING_SECRET_KEY", "é" * 16)
    bare_env.setenv("KEEPREADING_SECRET_KEY_FALLBACKS", "o" * 32)
    assert create_app().config["SECRET_KEY"] == "é" * 16


def test_the_instance_follows_the_package_not_the_working_directory(bare_env, tmp_path):
    bare_env.delenv("KEEPREADING_INSTANCE_PATH")
    bare_env.chdir(tmp_path)
    assert config.instance_path() == ROOT / "instance"  # Flask's convention for a source checkout
    bare_env.setenv("KEEPREADING_INSTANCE_PATH", str(tmp_path / "elsewhere"))
    assert config.instance_path() == tmp_path / "elsewhere"


def test_settings_recorded_in_the_instance_apply_and_the_environment_wins(bare_env, tmp_path):
    instance = tmp_path / "instance"
    config.record(instance, ENV="development", BASE_URL="http://127.0.0.1:5077")
    assert stat.S_IMODE((instance / config.SETTINGS_FILE).stat().st_mode) == 0o600
    app = create_app()  # no secret in the environment: development mode came from the file
    assert app.config["ENV"] == "development" and app.config["BASE_URL"] == "http://127.0.0.1:5077"
    bare_env.setenv("KEEPREADING_BASE_URL", "https://news.example.org")
    assert create_app().config["BASE_URL"] == "https://news.example.org"
    config.record(instance, BASE_URL="http://127.0.0.1:5078")  # rewritten in place, other lines kept
    assert (instance / config.SETTINGS_FILE).read_text().splitlines() == [
        "KEEPREADING_ENV=development", "KEEPREADING_BASE_URL=http://127.0.0.1:5078"]


def test_files_the_service_creates_are_private(tmp_path):
    """Started with a permissive umask, the CLI still leaves the instance folder 0700 and its files 0600;
    a folder made world-readable before is closed too."""
    instance = tmp_path / "instance"
    instance.mkdir(mode=0o755)
    instance.chmod(0o755)
    (tmp_path / "list.csv").write_text("email,name,status,subscribed_at\nreader@example.org,R,confirmed,2020-01-01\n")
    (tmp_path / "post.md").write_text("News for the reader.")
    settings = {"INSTANCE_PATH": str(instance), "ENV": "development"}
    for command in (["db", "upgrade"], ["subscribers", "import", "list.csv"],
                    ["posts", "add", "--title", "News", "--file", "post.md", "--publish"], ["digest", "send"]):
        result = subprocess.run([script("keepreading"), *command], cwd=tmp_path, env=environment(**settings),
                                capture_output=True, text=True, timeout=120, umask=0o022)
        assert result.returncode == 0, result.stderr
    made = sorted(path.name for path in instance.iterdir())
    assert {"keepreading.sqlite", "secret_key", "admin_token", "broker.sqlite"} <= set(made), made
    assert stat.S_IMODE(instance.stat().st_mode) == 0o700
    readable = {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in instance.rglob("*")
                if path.stat().st_mode & 0o077}
    assert readable == {}


def test_help_lists_every_command_without_a_secret_and_creates_nothing(bare_env, tmp_path):
    commands = set(create_app({"TESTING": True}).cli.commands)
    folder = tmp_path / "empty"
    folder.mkdir()
    instance = tmp_path / "not-yet"
    result = keepreading("--help", cwd=folder, INSTANCE_PATH=str(instance))
    assert result.returncode == 0 and result.stderr == ""
    listed = {line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert commands <= listed, commands - listed
    assert {"posts", "digest", "subscribers", "demo", "db"} <= listed
    assert not instance.exists() and list(folder.iterdir()) == []


def test_a_configuration_error_is_one_line_without_a_traceback(tmp_path):
    result = keepreading("posts", "list", cwd=tmp_path, INSTANCE_PATH=str(tmp_path / "instance"))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "Error: KEEPREADING_SECRET_KEY is not set: refusing to start in production "
        "(set it, or KEEPREADING_ENV=development for local use)"]


def test_a_database_error_is_one_line_without_a_traceback(tmp_path):
    result = keepreading("posts", "list", cwd=tmp_path, INSTANCE_PATH=str(tmp_path / "instance"), ENV="development")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "no such table" in lines[0] and "keepreading db upgrade" in lines[0], result.stderr


def test_make_clean_keeps_the_instance_and_make_wipe_deletes_it(tmp_path):
    checkout = copy_checkout(tmp_path / "checkout")
    for made in ("instance/secret_key", "instance/keepreading.sqlite", "venv/bin/python", "build/lib/x"):
        (checkout / made).parent.mkdir(parents=True, exist_ok=True)
        (checkout / made).write_text("x")

    def make(target: str) -> None:
        subprocess.run(["make", "--no-print-directory", target, "VENV=venv"], cwd=checkout, check=True,
                       capture_output=True, timeout=60)

    make("clean")
    assert sorted(path.name for path in (checkout / "instance").iterdir()) == ["keepreading.sqlite", "secret_key"]
    assert not (checkout / "venv").exists() and not (checkout / "build").exists()
    make("wipe")
    assert not (checkout / "instance").exists()
