"""keepreading backup and restore on the embedded default: an online copy taken while readers sign up,
restored into a fresh instance, holds a consistent snapshot of every table."""
from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from sqlalchemy import text

from service import create_app
from service.extensions import db
from service.publishing import posts


def rows(path: str, table: str) -> list[tuple]:
    with sqlite3.connect(path) as connection:
        found = connection.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
    connection.close()
    return found


def test_backup_during_writes_restores_into_a_fresh_instance(app, backend, runner, tmp_path, monkeypatch):
    if backend.name != "sqlite":
        result = runner.invoke(args=["backup", str(tmp_path / "copy.sqlite")])
        assert result.exit_code != 0 and "pg_dump" in result.output
        return
    with app.app_context():
        live = db.engine.url.database
        slug = posts.create("First light", "Words for everyone.", "public", True).slug
    stop, written = threading.Event(), [0]

    def sign_up():  # a writer of its own, as the web server would be, committing a row at a time
        with sqlite3.connect(live, timeout=30) as connection:
            while not stop.is_set():
                connection.execute("INSERT INTO subscribers (email, name, status, frequency, created_at, token_key) "
                                   "VALUES (?, '', 'pending', 'default', '2026-01-01', 'k')",
                                   (f"writer{written[0]}@example.com",))
                connection.commit()
                written[0] += 1
        connection.close()

    writer = threading.Thread(target=sign_up)
    writer.start()
    try:
        while written[0] < 200:
            time.sleep(0.01)
        copy = tmp_path / "copy.sqlite"
        result = runner.invoke(args=["backup", str(copy)])
        at_backup = written[0]
        time.sleep(0.2)
    finally:
        stop.set()
        writer.join()
    assert result.exit_code == 0, result.output
    assert copy.stat().st_mode & 0o077 == 0
    backed_up, source = rows(str(copy), "subscribers"), rows(live, "subscribers")
    # a snapshot: a prefix of the rows the writer committed, taken while it went on writing
    assert 200 <= len(backed_up) <= at_backup + 1 < len(source)
    assert backed_up == source[:len(backed_up)]

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    monkeypatch.setenv("KEEPREADING_INSTANCE_PATH", str(fresh))
    monkeypatch.setenv("KEEPREADING_DATABASE_URL", f"sqlite:///{fresh / 'keepreading.sqlite'}")
    other = create_app({"TESTING": True})
    with other.app_context():
        db.create_all()  # an instance of its own, already holding something the restore replaces
        db.session.execute(text("INSERT INTO subscribers (email, name, status, frequency, created_at, token_key) "
                                "VALUES ('stranger@example.com', '', 'pending', 'default', '2026-01-01', 'k')"))
        db.session.commit()
    refused = other.test_cli_runner().invoke(args=["restore", str(tmp_path / "not-a-backup.txt")])
    assert refused.exit_code != 0
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    refused = other.test_cli_runner().invoke(args=["restore", "--yes", str(tmp_path / "junk.sqlite")])
    assert refused.exit_code == 1 and "not a keepreading backup" in refused.output
    with other.app_context():  # a refused restore leaves the database alone
        assert db.session.scalar(text("SELECT email FROM subscribers")) == "stranger@example.com"
    result = other.test_cli_runner().invoke(args=["restore", "--yes", str(copy)])
    assert result.exit_code == 0, result.output
    restored = str(fresh / "keepreading.sqlite")
    for table in ("subscribers", "posts"):
        assert rows(restored, table) == rows(str(copy), table)
    with other.app_context():  # the restored instance serves
        assert db.session.scalar(text("SELECT count(*) FROM subscribers")) == len(backed_up)
    assert other.test_client().get(f"/p/{slug}").status_code == 200


@pytest.mark.parametrize("command", ["backup", "restore"])
def test_backup_commands_are_listed(command):
    from service.commands import every_command

    assert command in {found.name for found in every_command()}
