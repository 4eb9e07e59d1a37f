"""A real worker process executes tasks: on the embedded SQLite broker and on Redis."""
from sqlalchemy import select

from service import tasks
from service.extensions import db
from service.models import Event

from .conftest import wait_until


def test_a_real_worker_executes_a_task(app, backend, worker):
    expected = "sqla+sqlite" if backend.name == "sqlite" else "redis://"
    assert app.extensions["celery"].conf.broker_url.startswith(expected)
    with app.app_context():
        tasks.ping.delay("hello from the test")
        event = wait_until(lambda: _ping_event("hello from the test"), 60, "the worker did not run the task")
    assert event.data == {"value": "hello from the test"}


def _ping_event(value):
    event = db.session.scalar(select(Event).where(Event.kind == "ping").order_by(Event.id.desc()))
    db.session.rollback()
    return event if event and event.data.get("value") == value else None


def test_tasks_queued_by_name_are_registered_under_that_name(app):
    """The dispatcher and the outbox queue their tasks by name (they sit below the task module)."""
    from service.digests import runs
    from service.mail import outbox

    registered = app.extensions["celery"].tasks
    assert runs.SEND_BATCH == tasks.send_digest_batch.name and runs.SEND_BATCH in registered
    assert outbox.SEND_TASK == tasks.send_outbox_email.name and outbox.SEND_TASK in registered
