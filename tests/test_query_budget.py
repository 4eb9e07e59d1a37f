"""Regression guard for issue 5: SQL statements and Celery messages per digest run do not grow with its
recipients, so a change that adds a query (or a task) per reader fails here, whatever the machine's speed.

The digest runs in this process: the fan-out as `digest send` runs it (its batch tasks are published to
a queue of this test's own that no worker reads), then each published batch through the task's domain
function, into the test mailbox.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

from celery.signals import before_task_publish
from sqlalchemy import event

from service.digests import runs, sending
from service.extensions import db
from service.publishing import posts

from .test_digests import per_recipient, seed

# Statements a run of up to DIGEST_BATCH_SIZE recipients may take, on SQLite and PostgreSQL alike
# (measured: fan-out 11; sending 7 for the batch, whose last statement finishes the run, plus 4 for one
# `--wait` settle that then finds nothing left to recover). The bounds leave room for a small change,
# never for one statement per recipient (1,000 here).
FAN_OUT_BUDGET = 20
BATCH_BUDGET = 15


@dataclass
class Tally:
    statements: list[str] = field(default_factory=list)
    published: list[tuple] = field(default_factory=list)  # (routing key, task args)

    @property
    def batches(self) -> list[tuple]:
        return [tuple(args) for _, args in self.published]


@contextmanager
def counting():
    """Every SQL statement the app's engine runs, and every Celery message published, while inside."""
    tally = Tally()
    engine = db.engine

    def on_statement(conn, cursor, statement, parameters, context, executemany):
        tally.statements.append(statement)

    def on_publish(sender=None, body=None, routing_key=None, **_):
        tally.published.append((routing_key, body[0]))

    event.listen(engine, "before_cursor_execute", on_statement)
    before_task_publish.connect(on_publish, weak=False)
    try:
        yield tally
    finally:
        event.remove(engine, "before_cursor_execute", on_statement)
        before_task_publish.disconnect(on_publish)


def digest_run(recipients: int) -> tuple[Tally, Tally]:
    """Seed `recipients` readers and one post, then send a digest: the (fan-out, sending) tallies."""
    seed(recipients)
    posts.create("Budget", "Words for the teaser.\n\n<!--more-->\n\nThe rest.", "subscribers", True)
    db.session.commit()
    with counting() as fan_out:
        digest = runs.send_now()
        digest_id = digest.id
    with counting() as sending_tally:
        for batch in fan_out.batches:
            assert sending.send_batch(*batch) is None
        summary = runs.settle(digest_id)
    assert summary["counts"]["sent"] == recipients and summary["finished_at"] is not None
    return fan_out, sending_tally


def test_statements_and_messages_do_not_grow_with_recipients(app, backend, mailbox, own_queue):
    """1,000 then 2,000 readers, each run in one batch: the very same number of statements and one message."""
    app.config["DIGEST_BATCH_SIZE"] = 5000
    tallies = {}
    for recipients in (1000, 2000):
        with app.app_context():
            backend.clean()
            tallies[recipients] = digest_run(recipients)
        mailbox.wait_for(recipients)
        mailbox.clear()
    for fan_out, sending_tally in tallies.values():
        assert len(fan_out.published) == 1 and fan_out.published[0][0] == own_queue
        assert len(fan_out.statements) <= FAN_OUT_BUDGET, fan_out.statements
        assert len(sending_tally.statements) <= BATCH_BUDGET, sending_tally.statements
    (small_fan_out, small_sending), (large_fan_out, large_sending) = tallies[1000], tallies[2000]
    assert len(large_fan_out.statements) == len(small_fan_out.statements)
    assert len(large_sending.statements) == len(small_sending.statements)


def test_a_run_costs_a_few_statements_and_one_message_per_batch(app, mailbox, own_queue):
    """With 1,000-recipient batches, 2,500 readers: three batch messages, each batch a few statements."""
    app.config["DIGEST_BATCH_SIZE"] = 1000
    with app.app_context():
        fan_out, sending_tally = digest_run(2500)
    assert [last - first + 1 for _, (_, first, last) in fan_out.published] == [1000, 1000, 500]
    assert len(fan_out.statements) <= FAN_OUT_BUDGET + 3 * 2  # a keyset step, an INSERT, an id page per extra range
    assert len(sending_tally.statements) <= 3 * BATCH_BUDGET
    counts = per_recipient(mailbox)
    assert len(counts) == 2500 and set(counts.values()) == {1}
