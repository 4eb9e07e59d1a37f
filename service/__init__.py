"""keepreading: newsletter subscriptions and a paywall beside a publisher's blog."""
from __future__ import annotations

import os
from typing import Any, Mapping

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from . import config as settings_module


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    _private_files()
    instance = settings_module.instance_path()
    settings_module.make_instance(instance)
    app = Flask(__name__, instance_path=str(instance))
    app.config.update(settings_module.load(instance, config))
    from . import logs

    logs.configure(app)
    if app.config["PROXY_COUNT"]:
        count = app.config["PROXY_COUNT"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=count, x_proto=count, x_host=count)  # type: ignore[method-assign]  # Flask's documented way
    _init_extensions(app)
    from .publishing import memory

    memory.init_app(app)
    _register_blueprints(app)
    from . import commands, errors
    from .web import access_log, headers, metrics

    access_log.register(app)
    errors.register(app)
    headers.register(app)
    metrics.register(app)
    commands.register(app)
    return app


def _private_files() -> None:
    """Whatever this process creates (database, broker, outbox mails with live tokens, journal, beat schedule)
    is readable by its owner only: the umask covers files made by libraries we do not open ourselves."""
    os.umask(os.umask(0o077) | 0o077)


def _init_extensions(app: Flask) -> None:
    from . import models  # noqa: F401  (tables registered on the metadata)
    from .extensions import celery_init_app, csrf, db, limiter, migrate

    db.init_app(app)
    migrate.init_app(app, db)
    app.config.setdefault("RATELIMIT_STORAGE_URI", app.config["REDIS_URL"] or "memory://")
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", False)
    limiter._key_prefix = ""  # the limiter is module-global: each app (a test's, say) brings its own prefix
    limiter.init_app(app)
    # Limits live only on the views that need them (signup, sign-in), whose decorators check them;
    # with no default, application or blueprint limits the per-request middleware check is pure cost.
    app.before_request_funcs[None].remove(limiter._check_request_limit)
    csrf.init_app(app)
    celery_init_app(app)
    from . import tasks  # noqa: F401  (registers the tasks on the Celery app)


def _register_blueprints(app: Flask) -> None:
    from .extensions import csrf
    from .studio import audience  # noqa: F401  (adds the dashboard and subscriber pages to the studio blueprint)
    from .studio import views as studio
    from .web import account, api, embed, ops, reader

    app.register_blueprint(reader.bp)
    app.register_blueprint(account.bp)
    app.register_blueprint(embed.bp)
    app.register_blueprint(api.bp, url_prefix="/api/v1")
    app.register_blueprint(ops.bp)
    app.register_blueprint(studio.bp, url_prefix="/studio")
    csrf.exempt(api.bp)
    csrf.exempt(ops.bp)
