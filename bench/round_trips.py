"""Round trips to PostgreSQL per request, counted from libpq's protocol trace, where one ReadyForQuery ends each.

run.py runs it with the app's settings: `python bench/round_trips.py --method POST --path /subscribe --data
'email=a{n}@example.org'` (`{n}` numbers the requests). It prints one JSON object: the requests, their statuses,
and for each statement (its verb and table) the round trips it took and the service/ functions that issued it.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import IO

from psycopg import pq
from sqlalchemy import event

import service
from service import create_app
from service.extensions import db

# psycopg prepares a statement on its 5th use and later binds it by name: the warm-up makes sure the trace has
# seen each Parse before the counted requests bind what it prepared.
WARM_UP = 20
SERVICE = str(Path(service.__file__).resolve().parent)
MESSAGE = re.compile(r"^(?P<side>[FB])\t\d+\t(?P<kind>\w+)\t?(?P<rest>.*?)(?=^[FB]\t\d+\t|\Z)", re.M | re.S)
QUOTED = re.compile(r'"((?:[^"]|"(?! |$))*)"', re.S)


def label(sql: str) -> str:
    """A statement's verb and table: `SELECT subscribers`, `BEGIN`, `SELECT 1`."""
    table = re.search(r"\b(?:FROM|INTO|UPDATE)\s+\"?(\w+)", sql, re.I)
    words = sql.split()
    if sql.strip(" ;") == "":
        return "empty query ;"
    return f"{words[0].upper()} {table.group(1)}" if table else " ".join(words[:3])


def issuer() -> str:
    """The leaf-most service/ function on the stack, `module.function`, and whether the session's flush (an
    autoflush before a query, or the one before a commit) sent the statement rather than the function's own."""
    frame, flushed = sys._getframe(2), False
    while frame is not None and not frame.f_code.co_filename.startswith(SERVICE):
        flushed = flushed or frame.f_code.co_name == "flush"
        frame = frame.f_back
    if frame is None:
        return "outside service/"
    where = f"{Path(frame.f_code.co_filename).stem}.{frame.f_code.co_name}"
    return f"{where}, flush" if flushed else where


class Traces:
    """One trace file per pooled connection, from its first message; only what is traced after `count()` counts."""

    def __init__(self):
        self.files: list[tuple[pq.abc.PGconn, IO[bytes]]] = []
        self.starts: list[int] = []

    def connected(self, dbapi_connection, _record) -> None:
        trace = tempfile.TemporaryFile("w+b")
        self.files.append((dbapi_connection.pgconn, trace))
        self.starts.append(0)
        self._start(dbapi_connection.pgconn, trace)

    def count(self) -> None:
        for index, (pgconn, trace) in enumerate(self.files):
            pgconn.untrace()  # flushes what libpq buffered
            self.starts[index] = trace.seek(0, 2)
            self._start(pgconn, trace)

    def round_trips(self) -> Counter[str]:
        counted: Counter[str] = Counter()
        for (pgconn, trace), start in zip(self.files, self.starts, strict=True):
            pgconn.untrace()
            trace.seek(0)
            counted += tally(trace.read().decode(errors="replace"), start)
        return counted

    @staticmethod
    def _start(pgconn, trace) -> None:
        pgconn.trace(trace.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)


def tally(text: str, start: int) -> Counter[str]:
    """The statement each ReadyForQuery after byte `start` answered, counted by label."""
    prepared: dict[str, str] = {}
    current, counted = "", Counter[str]()
    start = len(text.encode()[:start].decode(errors="replace"))
    for message in MESSAGE.finditer(text):
        strings = QUOTED.findall(message["rest"])
        if message["side"] == "F" and message["kind"] == "Query" and strings:
            current = strings[0]
        elif message["side"] == "F" and message["kind"] == "Parse" and len(strings) >= 2:
            prepared[strings[0]] = current = strings[1]
        elif message["side"] == "F" and message["kind"] == "Bind" and len(strings) >= 2 and strings[1]:
            current = prepared.get(strings[1], f"prepared {strings[1]}")
        elif message["side"] == "B" and message["kind"] == "ReadyForQuery" and message.start() >= start:
            counted[label(current)] += 1
    return counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--path", required=True)
    parser.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    parser.add_argument("--data", help="the request body; {n} is the request's number")
    parser.add_argument("--requests", type=int, default=100)
    options = parser.parse_args()
    app = create_app()
    traces, issuers = Traces(), defaultdict(set)
    with app.app_context():
        db.engine.dispose()  # every connection from here on is traced from its start
        issuers[label(db.engine.dialect._dialect_specific_select_one)].add("pool pre-ping")
        event.listen(db.engine, "connect", traces.connected)
        event.listen(db.engine, "before_cursor_execute",
                     lambda _conn, _cursor, statement, *_rest: issuers[label(statement)].add(issuer()))
        event.listen(db.engine, "commit", lambda _conn: issuers["COMMIT"].add(issuer()))
        event.listen(db.engine, "rollback", lambda _conn: issuers["ROLLBACK"].add(issuer()))
    client = app.test_client(use_cookies=False)  # the Cookie header goes as given
    headers = dict(header.split(": ", 1) for header in options.header)
    statuses: Counter[int] = Counter()

    def send(numbers: range) -> None:
        for n in numbers:
            data = options.data.format(n=n) if options.data is not None else None
            statuses[client.open(options.path, method=options.method, headers=headers, data=data).status_code] += 1

    send(range(WARM_UP))
    traces.count()
    statuses.clear()
    send(range(WARM_UP, WARM_UP + options.requests))
    counted = traces.round_trips()
    print(json.dumps({
        "requests": options.requests, "statuses": statuses, "connections": len(traces.files),
        "statements": {name: {"round_trips": trips, "issuers": sorted(issuers.get(name, ()))}
                       for name, trips in counted.items()},
    }))


if __name__ == "__main__":
    main()
