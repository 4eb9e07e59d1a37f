"""What a sending worker handed to the mail server, written just before each end-of-data.

A batch marks its deliveries sent in bulk, so a worker killed mid-batch leaves claims whose fate the
database cannot tell. Each message is recorded here (one cheap write, no SQL) right before the final
"." that makes the server take it, so the dispatcher resolves such claims: recorded means handed over
(sent), not recorded means the server never took it (send again). Once a batch has written its
outcomes to the database it forgets their entries, so the journal holds only hand-overs in flight.
Redis when REDIS_URL is set (shared by workers on many machines); otherwise a file in the instance
folder (the single-machine default).
"""
from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

from flask import current_app

from ..mail import commits
from ..models import Digest

if TYPE_CHECKING:
    import redis
    from redis.connection import Connection

TTL = 14 * 24 * 3600
_clients: dict[str, redis.Redis] = {}
log = logging.getLogger(__name__)


class JournalError(OSError):
    """The journal could not take a record: the batch stops sending (an OSError, like a lost SMTP connection)."""


def for_run(digest: Digest) -> "RedisJournal | FileJournal":
    config = current_app.config
    name = f"{digest.id}-{int(digest.created_at.timestamp() * 1_000_000)}"
    if config.get("REDIS_URL"):
        return RedisJournal(config["REDIS_URL"], f"keepreading:{config['CELERY_QUEUE']}:journal:{name}")
    return FileJournal(Path(current_app.instance_path) / "journal" / f"digest-{name}.log")


class RedisJournal:
    def __init__(self, url: str, key: str):
        if url not in _clients:
            import redis

            _clients[url] = redis.Redis.from_url(url)
        self.client = _clients[url]
        self.key = key
        self.fresh = True
        self.connection: Connection | None = None  # held for the batch: a record is one write, no pool or retry layers
        self.unread = 0  # replies of records not read yet
        self.corked: socket.socket | None = None  # the record held back until the "." is written

    def record(self, delivery_id: int) -> Callable[[], None]:
        """Write SADD (and EXPIRE the first time) without waiting for the answer: the final "." follows at once,
        so a worker killed between the two dies in a few microseconds of no I/O, not in a Redis round trip
        (the window through which a killed worker's mail could be recorded yet never handed over).
        The kernel holds the record (TCP_CORK, see mail.commits.cork) until the returned `release` runs, once
        the "." is written, and delivers it even if the process dies; `settle` reads the answers."""
        commands = [("SADD", self.key, delivery_id)] + ([("EXPIRE", self.key, TTL)] if self.fresh else [])
        try:
            self.settle()
            if self.connection is None:
                self.connection = self.client.connection_pool.get_connection()
                self.connection.connect()
            if self.connection._sock is not None:
                self.corked = commits.cork(self.connection._sock.fileno())
            self.connection.send_packed_command(self.connection.pack_commands(commands))
        except Exception as trouble:
            self._broken()
            raise JournalError(f"send journal: {trouble}") from trouble
        self.unread += len(commands)
        self.fresh = False
        return self.release

    def release(self) -> None:
        corked, self.corked = self.corked, None
        commits.uncork(corked)

    def settle(self) -> None:
        """Read the answers of the records written so far."""
        self.release()
        try:
            while self.unread:
                assert self.connection is not None
                self.connection.read_response()
                self.unread -= 1
        except Exception as trouble:
            self._broken()
            raise JournalError(f"send journal: {trouble}") from trouble

    def _broken(self) -> None:
        self.release()
        if self.connection is not None:
            self.connection.disconnect()  # a reply may be left unread: never hand it back as it is
            self.client.connection_pool.release(self.connection)
            self.connection = None
        self.unread = 0
        self.fresh = True

    def retract(self, delivery_id: int) -> None:
        try:
            self.settle()
            self.client.srem(self.key, delivery_id)
        except Exception as trouble:
            raise JournalError(f"send journal: {trouble}") from trouble

    def forget(self, delivery_ids: list[int]) -> None:
        """Entries the database now holds as sent: dropped, so the set holds only hand-overs in flight (the
        key's TTL drops them if Redis is away now)."""
        try:
            for start in range(0, len(delivery_ids), 1000):
                self.client.srem(self.key, *delivery_ids[start:start + 1000])
        except Exception as trouble:
            log.warning("send journal: entries not forgotten (%s); they expire with the key", trouble)

    def recorded(self, delivery_ids: list[int]) -> set[int]:
        if not delivery_ids:
            return set()
        # redis-py types a command's reply as "awaitable or value" for its sync and async clients alike
        flags = cast("list[int]", self.client.smismember(self.key, delivery_ids))
        return {delivery_id for delivery_id, flag in zip(delivery_ids, flags, strict=True) if flag}

    def drop(self) -> None:
        try:
            self.client.delete(self.key)
        except Exception as trouble:
            log.warning("send journal: not dropped (%s); it expires", trouble)

    def close(self) -> None:
        try:
            self.settle()
        except JournalError:
            pass
        if self.connection is not None:
            self.client.connection_pool.release(self.connection)
            self.connection = None


class FileJournal:
    """Appends of a few bytes with O_APPEND: atomic between processes, kept by the OS if the process dies."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def _write(self, line: str) -> None:
        try:
            if self.fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            data = line.encode()
            if os.write(self.fd, data) != len(data):  # a full disk can take part of it
                raise OSError("short write")
        except OSError as trouble:
            raise JournalError(f"send journal: {trouble}") from trouble

    def settle(self) -> None:
        """Each record is written whole before it returns."""

    def record(self, delivery_id: int) -> None:
        self._write(f"{delivery_id}\n")

    def retract(self, delivery_id: int) -> None:
        self._write(f"-{delivery_id}\n")

    def forget(self, delivery_ids: list[int]) -> None:
        """A file on disk costs no memory: its lines go with the run (drop)."""

    def recorded(self, delivery_ids: list[int]) -> set[int]:
        if not self.path.exists():
            return set()
        held: set[int] = set()
        for line in self.path.read_text().split():
            if line.startswith("-"):
                held.discard(int(line[1:]))
            elif line:
                held.add(int(line))
        return held.intersection(delivery_ids)

    def drop(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
