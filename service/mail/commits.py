"""A commit sent ahead of its answer: the outbox's mark on PostgreSQL, written just before the final "." of its mail; and
`cork`/`uncork`, which hold such a record in the kernel until the "." is written (the send journal uses them too)."""
from __future__ import annotations

import contextlib
import os
import select
import socket
from typing import cast

import psycopg
from psycopg import pq
from psycopg.pq.abc import PGconn, PGresult
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ..extensions import db

TCP_CORK = getattr(socket, "TCP_CORK", None)  # Linux


class CommitUnconfirmed(Exception):
    """The COMMIT's answer was an error, or never came: the transaction may or may not have committed."""


class HeldCommit:
    """A COMMIT written to PostgreSQL's connection, held in the kernel until `release`; `settle` reads its answer."""

    def __init__(self, session: Session, connection: psycopg.Connection):
        self.session = session
        self.connection = connection
        self.corked: socket.socket | None = _cork(connection.pgconn)

    def release(self) -> None:
        """Let the kernel send the COMMIT (if this fails, it sends it within 200 ms anyway, and at once on close)."""
        corked, self.corked = self.corked, None
        uncork(corked)

    def settle(self) -> None:
        """Read the COMMIT's answer, and end the session's transaction on it (psycopg finds libpq idle and sends
        nothing); CommitUnconfirmed when it was an error or the connection was lost."""
        self.release()
        try:
            answer = _last_result(self.connection.pgconn)
        except psycopg.Error as trouble:
            self._abandon()
            raise CommitUnconfirmed(str(trouble)) from trouble
        if answer is None or answer.status != pq.ExecStatus.COMMAND_OK or answer.command_status != b"COMMIT":
            self._abandon()
            error = answer.error_message.decode(errors="replace").strip() if answer is not None else ""
            raise CommitUnconfirmed(error or "no COMMIT in the answer")
        self.session.commit()

    def _abandon(self) -> None:
        # A failed COMMIT leaves libpq idle (the rollback sends nothing); a lost connection makes SQLAlchemy drop it.
        with contextlib.suppress(DBAPIError):
            self.session.rollback()


def holds_commits() -> bool:
    """Whether the database's COMMIT can be written ahead of the "." and its answer read after it (PostgreSQL
    through psycopg). SQLite commits inside the worker's own process instead: see handovers."""
    return db.session.get_bind().dialect.driver == "psycopg"


def send() -> HeldCommit:
    """Commit the session's transaction so that the mail's "." can follow with no database round trip between.

    On PostgreSQL the COMMIT is written into the kernel before the "." and not waited for: the kernel delivers
    what a process wrote even if it dies, so a worker killed after the "." still commits, and one killed before
    the COMMIT was written leaves the row claimed, to be sent again. The kernel holds the COMMIT back
    (TCP_CORK) until `release`, called once the "." is written: sending it wakes PostgreSQL's backend, which a
    busy machine often runs at once in the worker's place, leaving the worker off the CPU, its mail marked and
    its "." unwritten, for up to a millisecond. What is left is a few microseconds with no I/O between the two
    writes (measured with the SIGKILL test, 5 kills a run on 2 busy cores: a mail lost in every run with the
    answer awaited before the ".", in 5 runs of 29 with the COMMIT sent at once, 2 of 44 with it held).
    `settle` reads the answer. PostgreSQL only (holds_commits)."""
    session = db.session()
    session.flush()
    connection = session.connection()
    held = HeldCommit(session, cast(psycopg.Connection, connection.connection.dbapi_connection))
    try:
        _write(held.connection.pgconn, b"COMMIT")
    except psycopg.Error as trouble:  # the COMMIT never reached the kernel whole: nothing was committed
        held.release()
        with contextlib.suppress(DBAPIError):
            session.rollback()
        raise DBAPIError.instance("COMMIT", None, trouble, psycopg.Error) from None
    return held


def _cork(pgconn: PGconn) -> socket.socket | None:
    try:
        return cork(pgconn.socket)
    except psycopg.Error:
        return None


def cork(fileno: int) -> socket.socket | None:
    """A connection's socket (a duplicate descriptor), told to hold what is written until `uncork`; None when it
    cannot (a Unix socket, a system without TCP_CORK): what is written then goes at once. A process that dies
    corked still has what it wrote sent, as its sockets close. Used for a record written just before a mail's
    final ".": sent at once, it wakes the server's process, which on a busy machine may run in the sender's place
    and leave the "." unwritten for up to a millisecond (the send journal's Redis, PostgreSQL's COMMIT)."""
    if TCP_CORK is None:
        return None
    try:
        sock = socket.socket(fileno=os.dup(fileno))
    except OSError:
        return None
    with contextlib.suppress(OSError):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, TCP_CORK, 1)
            return sock
    sock.close()
    return None


def uncork(corked: socket.socket | None) -> None:
    """Let the kernel send what `cork` held (if this fails, it sends it within 200 ms anyway, and at once on close)."""
    if corked is not None:
        with corked, contextlib.suppress(OSError):
            corked.setsockopt(socket.IPPROTO_TCP, cast(int, TCP_CORK), 0)


def _write(pgconn: PGconn, query: bytes) -> None:
    """Send `query` whole (psycopg keeps libpq non-blocking), reading what the server says meanwhile, as
    psycopg's own sends do."""
    pgconn.send_query(query)
    while pgconn.flush():
        readable, _, _ = select.select([pgconn.socket], [pgconn.socket], [])
        if readable:
            pgconn.consume_input()


def _last_result(pgconn: PGconn) -> PGresult | None:
    """Wait for the answer to the query sent, and return its last result."""
    last = None
    while True:
        while pgconn.is_busy():
            select.select([pgconn.socket], [], [])
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            return last
        last = result
