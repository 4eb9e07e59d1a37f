"""`keepreading db upgrade` builds the schema the models describe, on an empty PostgreSQL or SQLite database."""
import os

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from service import create_app
from service.extensions import db

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
