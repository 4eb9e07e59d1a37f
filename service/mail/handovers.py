"""The outbox's hand-overs where the database commits in the worker's own process (SQLite): each mail's row id
appended to a file of this process's just before the final "." of its DATA, its row marked sent in the
database once the server has answered.

Marked before the ".", a worker killed inside SQLite's commit (the WAL written, synced, its index updated)
lost that mail; marked after it, one killed between the "." and the commit would send it twice. One append
(a single write(2), which the kernel keeps when the process dies) is the hand-over's record instead, and a
row claimed again after its lease ran out is marked sent, not sent again, when a record names it: only a kill
in the few microseconds between the append and the "." loses a mail, as on PostgreSQL (see commits.send).

Each process appends to its own file (instance/journal/outbox-<pid>-<random>.log) and holds a shared flock on
it while it lives; it empties the file whenever every mail it recorded is marked in the database. `sweep`
(the outbox's flush, every minute) deletes the files of processes that are gone once no unsent row needs them.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path

FOLDER = "journal"
PATTERN = "outbox-*.log"


class Handovers:
    """This process's file of hand-overs: `record` before the ".", `marked` once the database says sent."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.fd: int | None = None
        self.pid = 0
        self.unmarked: set[int] = set()  # recorded (and not retracted) but not yet marked sent in the database

    def record(self, outbox_id: int) -> None:
        self._append(f"{outbox_id}\n")
        self.unmarked.add(outbox_id)

    def retract(self, outbox_id: int) -> None:
        """The server refused the mail after its "." after all: no longer a hand-over."""
        self._append(f"-{outbox_id}\n")
        self.unmarked.discard(outbox_id)

    def marked(self, outbox_id: int) -> None:
        self.unmarked.discard(outbox_id)

    def tidy(self) -> None:
        """Empty the file when the database holds every hand-over it names (a drain's end)."""
        if self.fd is not None and self.pid == os.getpid() and not self.unmarked:
            os.ftruncate(self.fd, 0)  # O_APPEND: the next record starts the file again

    def _append(self, line: str) -> None:
        data = line.encode()
        if os.write(self._open(), data) != len(data):  # a full disk can take part of it
            raise OSError(f"outbox hand-over journal: short write to {self.folder}")

    def _open(self) -> int:
        if self.fd is None or self.pid != os.getpid():  # a forked pool process starts a file of its own
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"outbox-{os.getpid()}-{secrets.token_hex(4)}.log"
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_SH)  # held while this process lives: `sweep` leaves the file alone
            self.fd, self.pid, self.unmarked = fd, os.getpid(), set()
        return self.fd


_journals: dict[Path, Handovers] = {}


def of_process(instance_path: str) -> Handovers:
    folder = Path(instance_path) / FOLDER
    if folder not in _journals:
        _journals[folder] = Handovers(folder)
    return _journals[folder]


def _read(path: Path) -> set[int]:
    """The ids a file holds as handed over (a retraction cancels its record)."""
    held: set[int] = set()
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().split():
            with contextlib.suppress(ValueError):
                if line.startswith("-"):
                    held.discard(int(line[1:]))
                else:
                    held.add(int(line))
    return held


def recorded(instance_path: str, outbox_ids: Iterable[int]) -> set[int]:
    """Which of these rows some process (alive or dead) handed over to the mail server."""
    wanted = set(outbox_ids)
    if not wanted:
        return set()
    found: set[int] = set()
    for path in (Path(instance_path) / FOLDER).glob(PATTERN):
        found |= _read(path) & wanted
    return found


def sweep(instance_path: str, unsent: Callable[[set[int]], set[int]], stale_after: float) -> int:
    """Delete the files of processes that are gone (no flock held) whose hand-overs are all marked sent
    (`unsent` names those still waiting), or that are older than `stale_after` seconds; how many went."""
    removed = 0
    for path in (Path(instance_path) / FOLDER).glob(PATTERN):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its process is alive
            held = _read(path)
            if not held or not unsent(held) or time.time() - os.fstat(fd).st_mtime > stale_after:
                path.unlink(missing_ok=True)
                removed += 1
        finally:
            os.close(fd)
    return removed
