"""Settings from KEEPREADING_* variables (the environment, else the instance's keepreading.env), with embedded
defaults; where the instance folder is."""
from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, overload

from dotenv import dotenv_values, set_key
from flask.sansio.scaffold import find_package

PREFIX = "KEEPREADING_"
# Settings recorded in the instance folder (`make run` writes development mode and its BASE_URL there),
# so a command started from any shell or folder runs against the same service as the server.
SETTINGS_FILE = "keepreading.env"
MIN_SECRET_BYTES = 32


class ConfigError(RuntimeError):
    """The configuration cannot run: the message says what to set."""


@overload
def _env(name: str) -> str | None: ...
@overload
def _env(name: str, default: str) -> str: ...
def _env(name: str, default: str | None = None) -> str | None:
    """KEEPREADING_<name>: from the process environment, else from the instance's settings file."""
    value = os.environ.get(PREFIX + name)
    if value in (None, "") and name != "INSTANCE_PATH":
        value = _recorded(instance_path() / SETTINGS_FILE).get(PREFIX + name)
    return value if value not in (None, "") else default


def instance_path() -> Path:
    """The instance folder, the same whichever folder a process starts in: KEEPREADING_INSTANCE_PATH, else
    Flask's convention (<checkout>/instance beside the package, <prefix>/var/keepreading-instance installed)."""
    configured = _env("INSTANCE_PATH")
    return Path(configured).expanduser().resolve() if configured else _conventional_instance()


@lru_cache(maxsize=1)
def _conventional_instance() -> Path:
    prefix, package_folder = find_package(__name__.partition(".")[0])
    if prefix is None:
        return Path(package_folder) / "instance"
    return Path(prefix) / "var" / "keepreading-instance"


def make_instance(instance: Path) -> None:
    """Create the instance folder readable by its owner only (it holds the database, secrets, live tokens)."""
    instance.mkdir(mode=0o700, parents=True, exist_ok=True)
    status = instance.stat()
    if status.st_mode & 0o077 and status.st_uid == os.geteuid():  # one made before this rule: close it now
        instance.chmod(0o700)


def record(instance: Path, **settings: str) -> None:
    """Write settings into the instance's settings file, for every later process (the environment still wins)."""
    make_instance(instance)
    path = instance / SETTINGS_FILE
    path.touch(mode=0o600)
    for name, value in settings.items():
        set_key(path, PREFIX + name, value, quote_mode="never")


def _recorded(path: Path) -> dict[str, str | None]:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return {}
    return _read_settings(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _read_settings(path: Path, _mtime: int, _size: int) -> dict[str, str | None]:
    return dotenv_values(path)


def _persistent_secret(instance: Path, filename: str, make) -> str:
    """Generate a value once and keep it in the instance folder (development only)."""
    path = instance / filename
    if path.exists():
        return path.read_text().strip()
    value = make()
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process of this instance made it first
        return path.read_text().strip()
    with os.fdopen(descriptor, "w") as stream:
        stream.write(value + "\n")
    return value


def load(instance: Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Build the app config: defaults, then the environment, then overrides."""
    overrides = dict(overrides or {})
    environment = overrides.get("ENV") or _env("ENV", "production")
    testing = bool(overrides.get("TESTING"))
    development = environment == "development" or testing
    config: dict[str, Any] = {
        "ENV": environment,
        "SECRET_KEY": _env("SECRET_KEY"),
        "SECRET_KEY_FALLBACKS": _split(_env("SECRET_KEY_FALLBACKS", "")),
        "SQLALCHEMY_DATABASE_URI": _env("DATABASE_URL", f"sqlite:///{instance / 'keepreading.sqlite'}"),
        "BROKER_URL": _env("BROKER_URL", f"sqla+sqlite:///{instance / 'broker.sqlite'}"),
        "CELERY_QUEUE": _env("CELERY_QUEUE", "celery"),
        # The embedded broker (SQLite) is polled: a worker takes its next task this long after the last.
        "BROKER_POLLING_INTERVAL": float(_env("BROKER_POLLING_INTERVAL", "0.1")),
        "REDIS_URL": _env("REDIS_URL"),
        "SMTP_URL": _env("SMTP_URL"),
        # Messages a second across every worker (a token bucket in Redis when REDIS_URL is set, else per
        # process): the provider's sending rate. Unset or 0: as fast as the server takes them.
        "SEND_RATE": float(_env("SEND_RATE", "0")),
        # A connection is closed (QUIT) and a new one opened after this many messages (0: kept while it lasts).
        "SMTP_MESSAGES_PER_CONNECTION": int(_env("SMTP_MESSAGES_PER_CONNECTION", "0")),
        # SMTP connections each digest batch sends on at once: more hide a distant server's round trips.
        "SMTP_CONNECTIONS": int(_env("SMTP_CONNECTIONS", "1")),
        "MAIL_FROM": _env("MAIL_FROM"),
        "BASE_URL": _env("BASE_URL", "http://127.0.0.1:5000").rstrip("/"),
        "ADMIN_TOKEN": _env("ADMIN_TOKEN"),
        "METRICS_TOKEN": _env("METRICS_TOKEN"),  # Bearer token for /metrics (the admin token works too)
        "PUBLICATION_NAME": _env("PUBLICATION_NAME", "The Slow Harbour"),
        "EMBED_ORIGINS": _split(_env("EMBED_ORIGINS", "")),
        "SIGNUP_RATE_LIMIT": _env("SIGNUP_RATE_LIMIT", "10/minute;100/hour"),
        # Mails (not requests) one mailbox may get a day from anonymous signup and sign-in requests, and
        # from renewals of its own expired links (README "Rate limits").
        "ADDRESS_RATE_LIMIT": _env("ADDRESS_RATE_LIMIT", "3/day"),
        "RENEW_RATE_LIMIT": _env("RENEW_RATE_LIMIT", "5/day"),
        # Keeps the limits of installations (or test runs) that share one Redis apart.
        "RATELIMIT_KEY_PREFIX": _env("RATE_LIMIT_PREFIX", "kr"),
        "CONFIRM_COOLDOWN": int(_env("CONFIRM_COOLDOWN", "600")),
        "PROXY_COUNT": int(_env("PROXY_COUNT", "0")),
        "UNSUBSCRIBE_MAILTO": _env("UNSUBSCRIBE_MAILTO"),
        "CONFIRM_MAX_AGE": int(_env("CONFIRM_MAX_AGE", str(48 * 3600))),
        "SIGNIN_MAX_AGE": int(_env("SIGNIN_MAX_AGE", str(3600))),
        "ARTICLE_LINK_MAX_AGE": int(_env("ARTICLE_LINK_MAX_AGE", str(30 * 24 * 3600))),
        "READER_SESSION_MAX_AGE": 365 * 24 * 3600,
        # An article link read without a session: the browser may read other gated posts this long.
        "READING_PASS_MAX_AGE": int(_env("READING_PASS_MAX_AGE", str(24 * 3600))),
        # Metered articles are counted per browser over a rolling window of this many seconds (a signed cookie).
        "METER_WINDOW": 30 * 24 * 3600,
        "DIGEST_BATCH_SIZE": int(_env("DIGEST_BATCH_SIZE", "1000")),
        # A digest's HTML stays under this many bytes: Gmail clips a message's HTML past about 102 KB, so past the
        # limit the rest of a post becomes "Continue reading" with its signed link.
        "DIGEST_HTML_LIMIT": int(_env("DIGEST_HTML_LIMIT", "100000")),
        # A claimed delivery belongs to its worker this long; a live batch renews it (a heartbeat every third of
        # it), so after a worker dies the recovery beat (every RECOVERY_CHECK_SECONDS) hands its rows to another.
        "DELIVERY_LEASE": float(_env("DELIVERY_LEASE", "30")),
        "RECOVERY_CHECK_SECONDS": float(_env("RECOVERY_CHECK_SECONDS", "15")),
        # Seconds an SMTP connect, write or read may block before the send counts as failed (socket timeout).
        "SMTP_TIMEOUT": float(_env("SMTP_TIMEOUT", "10")),
        # Per-recipient delivery rows older than this many days are pruned (the runs keep their counts); 0: never.
        "DELIVERY_RETENTION_DAYS": int(_env("DELIVERY_RETENTION_DAYS", "90")),
        # Transactional emails (confirm, sign-in, welcome) claimed by a worker are its own this long.
        "OUTBOX_LEASE": float(_env("OUTBOX_LEASE", "300")),
        "DIGEST_MAX_ATTEMPTS": int(_env("DIGEST_MAX_ATTEMPTS", "6")),
        # Retries wait DIGEST_RETRY_DELAY * 2**n seconds (with jitter), at most DIGEST_RETRY_MAX_DELAY,
        # which stays below the Redis visibility_timeout (extensions.celery_settings).
        "DIGEST_RETRY_DELAY": float(_env("DIGEST_RETRY_DELAY", "30")),
        "DIGEST_RETRY_MAX_DELAY": float(_env("DIGEST_RETRY_MAX_DELAY", "1800")),
        "PAGE_CACHE_SECONDS": float(_env("PAGE_CACHE_SECONDS", "2")),
        # The studio: a session ends after this long unused, and after STUDIO_SESSION_MAX_AGE in any case.
        "STUDIO_IDLE_TIMEOUT": int(_env("STUDIO_IDLE_TIMEOUT", str(2 * 3600))),
        "STUDIO_SESSION_MAX_AGE": int(_env("STUDIO_SESSION_MAX_AGE", str(7 * 24 * 3600))),
        "STUDIO_SIGNIN_RATE_LIMIT": _env("STUDIO_SIGNIN_RATE_LIMIT", "10/minute;100/hour"),  # per IP
        "STUDIO_ACCOUNT_RATE_LIMIT": _env("STUDIO_ACCOUNT_RATE_LIMIT", "5/minute;30/hour"),  # per staff address
        "STUDIO_LINK_MAX_AGE": int(_env("STUDIO_LINK_MAX_AGE", str(15 * 60))),
        "STUDIO_INVITE_MAX_AGE": int(_env("STUDIO_INVITE_MAX_AGE", str(7 * 24 * 3600))),
        "PUBLISH_CHECK_SECONDS": float(_env("PUBLISH_CHECK_SECONDS", "60")),  # how often beat publishes due posts
        "MAX_CONTENT_LENGTH": 64 * 1024,
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
        "WTF_CSRF_TIME_LIMIT": None,
    }
    config.update(overrides)
    _finish_secrets(config, instance, development)
    config["SECURE_COOKIES"] = config["BASE_URL"].startswith("https://")
    config.setdefault("SESSION_COOKIE_SAMESITE", "Lax")  # the session carries the CSRF secret of the forms
    config.setdefault("SESSION_COOKIE_SECURE", config["SECURE_COOKIES"])
    config["MAIL_FROM"] = config["MAIL_FROM"] or f'{config["PUBLICATION_NAME"]} <newsletter@localhost>'
    return config


def _finish_secrets(config: dict[str, Any], instance: Path, development: bool) -> None:
    if not config["SECRET_KEY"]:
        if not development:
            raise ConfigError(
                "KEEPREADING_SECRET_KEY is not set: refusing to start in production "
                "(set it, or KEEPREADING_ENV=development for local use)"
            )
        config["SECRET_KEY"] = _persistent_secret(instance, "secret_key", lambda: secrets.token_hex(32))
    if not development:
        _require_strong("KEEPREADING_SECRET_KEY", config["SECRET_KEY"])
        for key in config["SECRET_KEY_FALLBACKS"]:
            # An old key still verifies tokens: a weak one lets anyone forge them as well as a weak current key.
            _require_strong("a key in KEEPREADING_SECRET_KEY_FALLBACKS", key)
    if not config["ADMIN_TOKEN"]:
        if not development:
            config["ADMIN_TOKEN"] = None  # the admin API stays closed
        else:
            config["ADMIN_TOKEN"] = _persistent_secret(instance, "admin_token", lambda: secrets.token_urlsafe(24))


def _require_strong(name: str, key: str) -> None:
    size = len(key.encode())
    if size < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{name} is {size} bytes: production needs at least {MIN_SECRET_BYTES} random bytes "
            "(e.g. the output of: python3 -c 'import secrets; print(secrets.token_hex(32))')"
        )


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]
