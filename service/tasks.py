"""Celery tasks: thin wrappers that call domain functions with ids."""
from __future__ import annotations

from celery import shared_task


@shared_task(name="service.tasks.ping")
def ping(value: str) -> str:
    """Round-trip check used by the health tests and the Celery smoke test."""
    from .web import health

    return health.record_ping(value)


@shared_task(bind=True, name="service.tasks.send_outbox_email", max_retries=60)
def send_outbox_email(self, outbox_id: int) -> bool:
    """Send this transactional email (confirm, sign-in, welcome) from the outbox table, and every other one
    due now on the same connection (a burst of signups goes out at the mail server's pace, not the queue's).
    True when anything was sent. While the database is away (a restart) try again every 5 s rather than
    leave the mail to the next flush."""
    from sqlalchemy.exc import OperationalError

    from .mail import outbox

    try:
        return outbox.drain(outbox_id) > 0
    except OperationalError as trouble:
        raise self.retry(countdown=5, exc=trouble) from None


@shared_task(name="service.tasks.answer_signin_request")
def answer_signin_request(outbox_id: int) -> bool:
    """Decide in the background what a sign-in request gets (a link, a confirmation, nothing) and send it."""
    from .readers import subscriptions

    return subscriptions.answer_signin_request(outbox_id)


@shared_task(name="service.tasks.flush_outbox")
def flush_outbox() -> int:
    """Beat: queue again the outbox emails a broker outage or an SMTP failure left unsent; forget mailbox
    budgets spent longer ago than they count."""
    from .mail import outbox
    from .readers import abuse

    abuse.forget_spent_budgets()
    return outbox.flush()


@shared_task(name="service.tasks.dispatch_digests")
def dispatch_digests() -> dict:
    """Beat: create the digest runs due now, hand out claims whose worker died, close settled runs."""
    from .digests import runs

    return runs.dispatch()


@shared_task(name="service.tasks.recover_digests")
def recover_digests() -> dict:
    """Beat, every RECOVERY_CHECK_SECONDS: hand the claims of a dead worker to another, close settled runs."""
    from .digests import runs

    return runs.recover_and_finish()


@shared_task(name="service.tasks.prune_deliveries")
def prune_deliveries() -> int:
    """Beat, hourly: delete per-recipient delivery rows past DELIVERY_RETENTION_DAYS (runs keep their counts)."""
    from .digests import runs

    return runs.prune()


@shared_task(name="service.tasks.sweep_studio_sessions")
def sweep_studio_sessions() -> int:
    """Beat, hourly: delete studio sessions past STUDIO_IDLE_TIMEOUT or STUDIO_SESSION_MAX_AGE."""
    from .studio import staff

    return staff.sweep_sessions()


@shared_task(name="service.tasks.publish_scheduled_posts")
def publish_scheduled_posts() -> list[str]:
    """Beat: publish the posts whose scheduled time has come (their digest follows the usual cadence)."""
    from .publishing import posts

    return posts.publish_due()


@shared_task(bind=True, name="service.tasks.send_digest_batch", max_retries=None,
             acks_late=True, reject_on_worker_lost=True)
def send_digest_batch(self, digest_id: int, first_id: int, last_id: int) -> None:
    """Send one id range of a digest run; retried with backoff while recipients were refused for now."""
    from sqlalchemy.exc import OperationalError

    from .digests import sending

    try:
        delay = sending.send_batch(digest_id, first_id, last_id, attempt=self.request.retries)
    except OperationalError as trouble:  # the database away (a restart, a full disk): its rows wait for this retry
        raise self.retry(countdown=5, exc=trouble) from None
    if delay is not None:
        raise self.retry(countdown=delay)


@shared_task(name="service.tasks.roll_up_stats")
def roll_up_stats() -> dict:
    """Beat: bring the dashboard's daily counts up to date (the open days again, newly finished runs)."""
    from .studio import stats

    return stats.roll_up()
