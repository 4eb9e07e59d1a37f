"""The factory, configuration from the environment, security headers, health and metrics."""
import pytest

from service import create_app
from service.config import ConfigError


@pytest.fixture
def bare_env(monkeypatch, tmp_path):
    """No KEEPREADING_* variables but an instance folder of the test's own."""
    import os

    for name in list(os.environ):
        if name.startswith("KEEPREADING_") and not name.startswith("KEEPREADING_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KEEPREADING_INSTANCE_PATH", str(tmp_path))
    return monkeypatch


def test_production_refuses_to_start_without_secret(bare_env):
    with pytest.raises(ConfigError, match="KEEPREADING_SECRET_KEY is not set"):
        create_app()


def test_refusal_message_is_one_line(bare_env):
    with pytest.raises(ConfigError) as caught:
        create_app()
    assert "\n" not in str(caught.value)


def test_cli_refuses_with_the_message(bare_env):
    from click.testing import CliRunner

    from service.cli import group

    result = CliRunner().invoke(group(), ["posts", "list"])
    assert result.exit_code != 0
    assert "KEEPREADING_SECRET_KEY" in str(result.exception) + result.output


def test_development_generates_a_secret_once_and_keeps_it(bare_env, tmp_path):
    bare_env.setenv("KEEPREADING_ENV", "development")
    first = create_app()
    second = create_app()
    assert first.config["SECRET_KEY"] == second.config["SECRET_KEY"]
    assert len(first.config["SECRET_KEY"]) >= 32
    assert (tmp_path / "secret_key").exists()
    assert first.config["ADMIN_TOKEN"] == second.config["ADMIN_TOKEN"]


def test_embedded_defaults(bare_env, tmp_path):
    bare_env.setenv("KEEPREADING_SECRET_KEY", "s" * 32)
    app = create_app()
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'keepreading.sqlite'}"
    assert app.config["BROKER_URL"].startswith("sqla+sqlite:///")
    assert app.config["SMTP_URL"] is None
    assert app.config["BASE_URL"] == "http://127.0.0.1:5000"
    assert app.config["ADMIN_TOKEN"] is None  # production without a token: the admin API stays closed
    assert app.config["SECURE_COOKIES"] is False


def test_settings_from_environment(bare_env):
    bare_env.setenv("KEEPREADING_SECRET_KEY", "current-key-" + "c" * 32)
    bare_env.setenv("KEEPREADING_SECRET_KEY_FALLBACKS", f"{'o' * 32}, {'p' * 32}")
    bare_env.setenv("KEEPREADING_DATABASE_URL", "postgresql+psycopg://u@db.example/kr")
    bare_env.setenv("KEEPREADING_BROKER_URL", "redis://cache.example:6379/1")
    bare_env.setenv("KEEPREADING_BASE_URL", "https://news.example.org/")
    bare_env.setenv("KEEPREADING_PUBLICATION_NAME", "Tide Notes")
    bare_env.setenv("KEEPREADING_EMBED_ORIGINS", "https://blog.example.org,https://other.example")
    bare_env.setenv("KEEPREADING_PROXY_COUNT", "1")
    app = create_app()
    assert app.config["SECRET_KEY_FALLBACKS"] == ["o" * 32, "p" * 32]
    assert app.config["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://u@db.example/kr"
    assert app.config["BROKER_URL"] == "redis://cache.example:6379/1"
    assert app.config["BASE_URL"] == "https://news.example.org"
    assert app.config["SECURE_COOKIES"] is True
    assert app.config["MAIL_FROM"] == "Tide Notes <newsletter@localhost>"
    assert app.config["EMBED_ORIGINS"] == ["https://blog.example.org", "https://other.example"]
    celery = app.extensions["celery"]
    assert celery.conf.broker_url == "redis://cache.example:6379/1"
    assert celery.conf.task_acks_late and celery.conf.task_reject_on_worker_lost
    assert celery.conf.broker_transport_options["visibility_timeout"] >= 3600


def test_overrides_win_over_environment(bare_env):
    bare_env.setenv("KEEPREADING_SECRET_KEY", "from-env")
    app = create_app({"SECRET_KEY": "from-test", "TESTING": True})
    assert app.config["SECRET_KEY"] == "from-test"


@pytest.mark.parametrize("path", ["/", "/feed.xml", "/healthz", "/api/v1/posts", "/no-such-page"])
def test_security_headers_on_every_response(client, path):
    response = client.get(path)
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Referrer-Policy"]


def test_not_found_is_html_for_browsers_and_json_for_api(client):
    page = client.get("/p/nowhere", headers={"Accept": "text/html"})
    assert page.status_code == 404 and page.mimetype == "text/html"
    api = client.get("/api/v1/posts/nowhere", headers={"Authorization": "Bearer test-admin-token"})
    assert api.status_code == 404 and api.get_json()["error"] == "not_found"


def test_healthz_reports_database_and_broker(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"database": "ok", "broker": "ok", "status": "ok"}


def test_healthz_names_the_failed_broker(app, client):
    app.extensions["celery"].conf.broker_url = "redis://127.0.0.1:1/0"
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["database"] == "ok"
    assert body["broker"] != "ok"
    assert body["status"] == "failing: broker"


def test_healthz_names_the_failed_database(backend, monkeypatch, tmp_path):
    for name, value in backend.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KEEPREADING_DATABASE_URL", f"sqlite:///{tmp_path}/missing-folder/x.sqlite")
    response = create_app({"TESTING": True}).test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["status"] == "failing: database"


def test_metrics_count_requests_posts_and_subscribers(client, admin):
    admin.publish(title="Counted", visibility="public")
    client.get("/")
    text = client.get("/metrics", headers=admin.headers).get_data(as_text=True)
    assert 'keepreading_http_requests_total{endpoint="reader.archive",method="GET",status="200"} 1.0' in text
    assert 'keepreading_posts{published="true",visibility="public"} 1.0' in text
    assert "keepreading_http_request_seconds_bucket" in text
    assert "# TYPE keepreading_subscribers gauge" in text
