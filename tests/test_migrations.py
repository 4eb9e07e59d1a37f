"""`keepreading db upgrade` builds the schema the models describe, on an empty PostgreSQL or SQLite database,
and upgrades a database in use without losing its rows or the links already mailed."""
import hashlib
import os

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import create_engine, func, inspect, select, text

from service import create_app
from service.extensions import db
from service.models import Event, OutboxEmail, Subscriber

from .conftest import (
    SECRET_KEY,
    create_postgres_database,
    drop_postgres_database,
    need_server,
    postgres_problem,
)


@pytest.fixture
def empty_postgres():
    need_server("PostgreSQL", postgres_problem())
    url = create_postgres_database(f"kr_migrate_{os.getpid()}")
    yield url
    drop_postgres_database(url)


def upgrade_and_compare(url: str, tmp_path, monkeypatch):
    monkeypatch.setenv("KEEPREADING_INSTANCE_PATH", str(tmp_path))
    monkeypatch.setenv("KEEPREADING_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("KEEPREADING_DATABASE_URL", url)
    app = create_app()
    engine = create_engine(url)
    assert inspect(engine).get_table_names() == []
    engine.dispose()
    result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, db.metadata)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    with app.app_context():
        for each in db.engines.values():
            each.dispose()
    return tables, differences


def test_upgrade_on_empty_postgres_matches_the_models(empty_postgres, tmp_path, monkeypatch):
    tables, differences = upgrade_and_compare(empty_postgres, tmp_path, monkeypatch)
    assert {"posts", "subscribers", "digests", "deliveries", "outbox", "events", "publication_settings",
            "alembic_version"} <= tables
    assert differences == []


def test_upgrade_on_empty_sqlite_matches_the_models(tmp_path, monkeypatch):
    tables, differences = upgrade_and_compare(f"sqlite:///{tmp_path / 'fresh.sqlite'}", tmp_path, monkeypatch)
    assert "posts" in tables and "deliveries" in tables
    assert differences == []


def upgrade_a_database_in_use(url: str, tmp_path, monkeypatch) -> None:
    """Rows written at the initial schema, then `db upgrade` to the token keys and epochs."""
    monkeypatch.setenv("KEEPREADING_INSTANCE_PATH", str(tmp_path))
    monkeypatch.setenv("KEEPREADING_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("KEEPREADING_DATABASE_URL", url)
    app = create_app()
    runner = app.test_cli_runner()
    assert runner.invoke(args=["db", "upgrade", "bc471d09d1a8"]).exit_code == 0
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO subscribers (email, name, status, frequency, created_at) "
                                "VALUES ('early@example.org', '', 'confirmed', 'default', '2026-01-01 08:00:00')"))
        early = connection.execute(text("SELECT id FROM subscribers")).scalar_one()
        connection.execute(text("INSERT INTO outbox (kind, subscriber_id, data, created_at, attempts) "
                                f"VALUES ('welcome', {early}, '{{}}', '2026-01-01 08:00:00', 0)"))
        connection.execute(text("INSERT INTO events (kind, subscriber_id, created_at, data) "
                                f"VALUES ('confirmed', {early}, '2026-01-01 08:00:00', '{{}}')"))
    engine.dispose()
    # an unsubscribe link in a digest mailed before the upgrade, as tokens were made then
    fingerprint = hashlib.sha256(b"early@example.org").hexdigest()[:10]
    mailed = URLSafeTimedSerializer(SECRET_KEY, salt="keepreading.unsubscribe").dumps([early, fingerprint])

    result = runner.invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        row = db.session.get(Subscriber, early)
        assert (row.token_key, row.session_epoch, row.link_epoch) == ("", 0, 0)
        assert db.session.scalar(select(func.count()).select_from(OutboxEmail)) == 1  # nothing cascaded away
        assert db.session.scalar(select(Event.subscriber_id)) == early
    answer = app.test_client().post(f"/unsubscribe/{mailed}", data="List-Unsubscribe=One-Click",
                                    content_type="application/x-www-form-urlencoded")
    assert answer.status_code == 200
    with app.app_context():
        assert db.session.get(Subscriber, early).status == "unsubscribed"
        db.session.remove()
        for each in db.engines.values():
            each.dispose()


def test_upgrade_of_postgres_in_use_keeps_rows_and_mailed_links(empty_postgres, tmp_path, monkeypatch):
    upgrade_a_database_in_use(empty_postgres, tmp_path, monkeypatch)


def test_upgrade_of_sqlite_in_use_keeps_rows_and_mailed_links(tmp_path, monkeypatch):
    upgrade_a_database_in_use(f"sqlite:///{tmp_path / 'in-use.sqlite'}", tmp_path, monkeypatch)
