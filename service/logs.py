"""Logging for the web, the worker and the CLI alike: one JSON object per line (readable lines in development),
request or task ids on every line, and never a token or a password.

`configure(app)` runs in create_app, which every entry point calls (gunicorn's workers, `celery -A worker`,
`keepreading ...`); without it the service's own info lines were dropped (Python's last-resort handler
prints warnings only).
"""
from __future__ import annotations

import contextvars
import logging
import re
import sys
from typing import Callable

from celery import signals
from flask import Flask
from gunicorn import glogging
from pythonjsonlogger.json import JsonFormatter

# What the line is about: the request (id) in the web, the task (name, id, its ids) in the worker.
_context: contextvars.ContextVar[dict | None] = contextvars.ContextVar("keepreading_log_context", default=None)

_SIGNED_TAIL = re.compile(r"\.[\w-]{4,}+\.[\w-]{20,}+")
# (a cheap test that the pattern may match, the pattern, its replacement): every line passes through these.
_SECRETS: list[tuple[Callable[[str], object], re.Pattern[str], str]] = [
    # Links whose last segment is a token: confirm, sign-in, unsubscribe, renew, and the studio's invitations.
    (lambda text: "/" in text,
     re.compile(r"(/(?:confirm|signin|unsubscribe|renew/[a-z]+|invite|invitation|password|reset)/)[^/?#\s\"'<>\\]+"),
     r"\1[redacted]"),
    (lambda text: "t=" in text, re.compile(r"([?&](?:t|token)=)[^&#\s\"'<>\\]+"), r"\1[redacted]"),  # digest links
    (lambda text: "://" in text,
     re.compile(r"(\b[a-z][a-z0-9+.-]*+://[^:/@\s\"'\\]*+:)[^@/\s\"'\\]++@", re.IGNORECASE), r"\1[redacted]@"),
    (lambda text: "earer" in text or "EARER" in text, re.compile(r"(\bBearer\s+)[^\s\"'\\]+", re.IGNORECASE),
     r"\1[redacted]"),
    # itsdangerous' signed values (payload.timestamp.signature) wherever else they turn up
    (_SIGNED_TAIL.search, re.compile(r"[\w-]{8,}+\.[\w-]{4,}+\.[\w-]{20,}+"), "[redacted]"),
]
# In development the links of the emails written to files are logged on purpose: that is how you open them.
_DEVELOPMENT_LINK_LOGGERS = ("service.mail.transports",)
_HANDLER_NAME = "keepreading"


def redact(text: str) -> str:
    for may_match, pattern, replacement in _SECRETS:
        if may_match(text):
            text = pattern.sub(replacement, text)
    return text


def bind(**fields) -> contextvars.Token:
    """Add fields to every line logged in this request or task, until `unbind`."""
    return _context.set({**(_context.get() or {}), **fields})


def unbind(token: contextvars.Token) -> None:
    _context.reset(token)


class _WithContext(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_context.get() or {}).items():
            setattr(record, name, value)
        return True


class JsonLines(JsonFormatter):
    """A JSON object per line, the whole line redacted (message, fields, traceback alike)."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s",
                         rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class ReadableLines(logging.Formatter):
    """Development: plain lines, redacted but for the links of emails written to files."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return line if record.name.startswith(_DEVELOPMENT_LINK_LOGGERS) else redact(line)


def configure(app: Flask) -> None:
    """Install the one handler on the root logger (again for each app: the last app's mode wins)."""
    development = app.config.get("ENV") == "development" and not app.config.get("TESTING")
    root = logging.getLogger()
    handler = next((each for each in root.handlers if each.get_name() == _HANDLER_NAME), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(_HANDLER_NAME)
        handler.addFilter(_WithContext())
        root.addHandler(handler)
    handler.setFormatter(ReadableLines() if development else JsonLines())
    root.setLevel(logging.INFO)
    # Werkzeug's request lines carry whole URLs, tokens included; the app logs each request itself.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    _connect_worker_signals()


def _connect_worker_signals() -> None:
    # A receiver of setup_logging tells Celery the logging is configured: it leaves the root logger alone.
    signals.setup_logging.connect(_celery_leaves_logging_alone, weak=False, dispatch_uid="keepreading-logging")
    signals.task_prerun.connect(_task_started, weak=False, dispatch_uid="keepreading-task-log")
    signals.task_postrun.connect(_task_finished, weak=False, dispatch_uid="keepreading-task-log")


def _celery_leaves_logging_alone(**_) -> None:
    pass


_task_tokens: dict[str, contextvars.Token] = {}


def _task_started(task_id=None, task=None, args=(), **_) -> None:
    ids = [arg for arg in args or () if isinstance(arg, int)]  # tasks take ids: they say what the task works on
    _task_tokens[task_id] = bind(task=getattr(task, "name", None), task_id=task_id, task_args=ids)


def _task_finished(task_id=None, **_) -> None:
    token = _task_tokens.pop(task_id, None)
    if token is not None:
        try:
            unbind(token)
        except ValueError:  # set in another context (a thread pool): nothing of it is left here
            pass


class GunicornLogger(glogging.Logger):
    """gunicorn's own lines (its errors, and access lines if turned on) as the same redacted JSON."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                handler.setFormatter(JsonLines())
