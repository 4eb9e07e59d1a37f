"""`make chaos`: one fault injected during a digest run, for each of seven faults, on real parts; one table.

Every fault runs on servers of its own, started here in a temporary folder on free ports: a private
PostgreSQL (initdb + pg_ctl, run as the postgres user) and a private Redis (broker and send journal), so the
machine's shared servers are never restarted. Two Celery worker processes (concurrency 2) and a Celery beat
process with the shipped schedule and the default settings (30 s lease, recovery beat every 15 s, SMTP
timeout 10 s) send a digest to N subscribers (10,000 by default) through a real SMTP server (aiosmtpd in this
process) with fault modes. Row 7 runs on the embedded default (SQLite, the SQLite-backed broker, the file
journal, .eml files) in a small tmpfs that is filled up and then freed.

Per fault: mails at the sink, distinct recipients, lost (subscribers without a mail), duplicated (mails
beyond one per recipient), and seconds from the fault to the run settling (its finished_at set).

Row 5 is the one case SMTP cannot settle: the server took the message (the final "." arrived) but the
connection dropped before its answer. The sender cannot know; keepreading counts such a mail as sent (it
never sends twice). This sink keeps those messages, as a server that took them would, and the table reports
how many were in that state: had the server discarded them, that many would be lost, never duplicated.
"""
from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

ROOT = Path(__file__).resolve().parent.parent
SECRET = "chaos-secret-key-0123456789-0123456789"
PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1] if Path("/usr/lib/postgresql").exists() else None


def say(message: str) -> None:
    print(f"[chaos] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the SMTP sink and its faults ---

@dataclass
class SinkFaults:
    stall_data_until: float = 0.0  # DATA gets no answer (no 354) until then
    stall_seconds: float = 0.0
    drop_every: int = 0  # every nth message: taken, then the connection dropped before the answer
    drop_until: float = 0.0
    refuse_until: float = 0.0  # 421 to every greeting and command until then


class Sink:
    """aiosmtpd with fault modes; keeps only each message's recipient."""

    def __init__(self):
        self.port = free_port()
        self.faults = SinkFaults()
        self.received: Counter[str] = Counter()
        self.ambiguous = 0  # messages taken whose answer was never sent
        self.lock = threading.Lock()
        self.controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.received.values())

    def start(self) -> None:
        sink = self

        class Handler:
            async def handle_EHLO(self, server, session, envelope, hostname, responses):
                session.host_name = hostname
                responses.insert(1, "250-PIPELINING")
                return responses

            async def handle_MAIL(self, server, session, envelope, address, options):
                if time.monotonic() < sink.faults.refuse_until:
                    return "421 4.3.2 service not available, try later"
                envelope.mail_from = address
                return "250 OK"

            async def handle_DATA(self, server, session, envelope):
                with sink.lock:
                    for recipient in envelope.rcpt_tos:
                        sink.received[recipient] += 1
                    count = sum(sink.received.values())
                    drop = (sink.faults.drop_every and time.monotonic() < sink.faults.drop_until
                            and count % sink.faults.drop_every == 0)
                    if drop:
                        sink.ambiguous += 1
                if drop:
                    server.transport.abort()  # taken, and the answer never leaves
                return "250 Message accepted"

        class FaultySMTP(SMTP):
            async def _handle_client(self):
                if time.monotonic() < sink.faults.refuse_until:
                    await self.push("421 4.3.2 service not available, try later")
                    self.transport.close()
                    return
                await super()._handle_client()

            async def smtp_DATA(self, arg):
                if time.monotonic() < sink.faults.stall_data_until:
                    await asyncio.sleep(sink.faults.stall_seconds)  # the client times out first
                    if self.transport is None or self.transport.is_closing():
                        return
                await super().smtp_DATA(arg)

        class FaultyController(Controller):
            def factory(self):
                return FaultySMTP(self.handler, **self.SMTP_kwargs)

        self.controller = FaultyController(Handler(), hostname="127.0.0.1", port=self.port,
                                           data_size_limit=10 * 1024 * 1024, decode_data=False)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


# --- private servers ---

class PrivatePostgres:
    def __init__(self, folder: Path):
        assert PG_BIN is not None, "PostgreSQL's binaries are not in /usr/lib/postgresql"
        # a folder of its own under the system's temporary folder: the postgres user must reach it
        self.folder = Path(tempfile.mkdtemp(prefix="kr-private-pg-"))
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run([str(PG_BIN / "initdb"), "-D", str(self.folder / "data"), "-U", "postgres", "--auth=trust",
                   "--no-sync", "-E", "UTF8"])

    def _run(self, command: list[str]) -> None:
        if self._as_postgres:  # PostgreSQL refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.folder / "data"), "-l", str(self.folder / "log"),
                   "-w", "-o", options, *args])

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> None:
        self._ctl("-m", "fast", "restart")

    def stop(self) -> None:
        with suppress(subprocess.CalledProcessError):
            self._ctl("-m", "immediate", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            connection.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


class PrivateRedis:
    def __init__(self, folder: Path):
        self.folder = folder / "redis"
        self.folder.mkdir()
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        # no persistence: a restart loses the queued tasks and the send journal, the harshest case
        self.process = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                         "--save", "", "--appendonly", "no", "--dir", str(self.folder)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self, down: float = 3.0) -> None:
        self.stop()
        time.sleep(down)
        self.start()


# --- Celery processes ---

class Process:
    def __init__(self, command: list[str], env: dict[str, str], log: Path):
        self.command, self.env, self.log = command, env, log
        self.process: subprocess.Popen | None = None

    def start(self) -> "Process":
        environment = {k: v for k, v in os.environ.items() if not k.startswith("KEEPREADING_")}
        environment.update(self.env)
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(self.command, cwd=ROOT, env=environment, stdout=output,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def worker(env: dict[str, str], log: Path, name: str) -> Process:
    return Process([sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel", "INFO", "--concurrency", "2",
                    "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"{name}-{os.getpid()}@%h"],
                   env, log)


def beat(env: dict[str, str], log: Path, schedule: Path) -> Process:
    return Process([sys.executable, "-m", "celery", "-A", "worker", "beat", "--loglevel", "INFO",
                    "--schedule", str(schedule)], env, log)


# --- one fault ---

@dataclass
class Result:
    fault: str
    subscribers: int
    mails: int = 0
    distinct: int = 0
    lost: int = 0
    duplicated: int = 0
    settle: float | None = None
    note: str = ""
    details: list[str] = field(default_factory=list)


class Scenario:
    """One digest run on fresh servers' state, with workers, beat and the sink; `run(inject)` measures it."""

    def __init__(self, folder: Path, name: str, subscribers: int, database_url: str, broker: str,
                 redis_url: str | None, sink: Sink | None, instance: Path | None = None, extra: dict | None = None):
        self.folder = folder
        self.name = name
        self.subscribers = subscribers
        self.sink = sink
        self.instance = instance or folder / f"instance-{name}"
        self.instance.mkdir(exist_ok=True)
        self.env = {
            "KEEPREADING_ENV": "production",
            "KEEPREADING_SECRET_KEY": SECRET,
            "KEEPREADING_INSTANCE_PATH": str(self.instance),
            "KEEPREADING_DATABASE_URL": database_url,
            "KEEPREADING_BROKER_URL": broker,
            "KEEPREADING_BASE_URL": "http://chaos.example",
            "KEEPREADING_CELERY_QUEUE": f"chaos-{name}-{os.getpid()}",
            **({"KEEPREADING_REDIS_URL": redis_url} if redis_url else {}),
            **({"KEEPREADING_SMTP_URL": sink.url} if sink else {}),
            **(extra or {}),
        }
        self.processes: list[Process] = []
        self.app = None
        self.restarts = 0
        self.unsupervised: set[int] = set()  # processes a fault killed on purpose stay dead
        self._supervising = threading.Event()

    def make_app(self):
        from service import create_app

        saved = {k: os.environ[k] for k in list(os.environ) if k.startswith("KEEPREADING_")}
        for k in saved:
            del os.environ[k]
        os.environ.update(self.env)
        try:
            app = create_app({"TESTING": False})
            for noisy in ("mail.log", "service"):  # the sink's dialogue and the app's lines: the table is the output
                logging.getLogger(noisy).setLevel(logging.ERROR)
            return app
        finally:
            for k in self.env:
                os.environ.pop(k, None)
            os.environ.update(saved)

    def prepare(self) -> None:
        from sqlalchemy import insert

        from service.extensions import db
        from service.models import Subscriber, utcnow
        from service.publishing import posts

        self.app = self.make_app()
        with self.app.app_context():
            db.create_all()
            since = utcnow().replace(year=utcnow().year - 1)
            rows = [{"email": f"reader{index}@example.com", "name": "", "status": "confirmed", "frequency": "default",
                     "created_at": since, "confirmed_at": since, "digest_watermark": since}
                    for index in range(self.subscribers)]
            for start in range(0, len(rows), 2000):
                db.session.execute(insert(Subscriber), rows[start:start + 2000])
            db.session.commit()
            posts.create("Storm over the harbour", "Words.\n\n<!--more-->\n\nMore words.", "subscribers", True)
        logs = self.folder / f"{self.name}.log"
        self.workers = [worker(self.env, logs, f"chaos-{self.name}-{index}").start() for index in range(2)]
        self.beat = beat(self.env, logs, self.folder / f"{self.name}-beat-schedule").start()
        self.processes = [*self.workers, self.beat]
        threading.Thread(target=self._supervise, daemon=True).start()

    def _supervise(self) -> None:
        """What the shipped systemd units do (Restart=on-failure): a worker or beat that exits
        on its own is started again."""
        while not self._supervising.wait(1):
            for process in self.processes:
                if (process.process is not None and process.process.poll() not in (None, 0)
                        and id(process) not in self.unsupervised):
                    time.sleep(1)
                    if not self._supervising.is_set():
                        process.start()
                        self.restarts += 1

    def mails(self) -> Counter[str]:
        if self.sink is not None:
            with self.sink.lock:
                return Counter(self.sink.received)
        found: Counter[str] = Counter()
        for path in (self.instance / "outbox").glob("*.eml"):
            found[email.message_from_bytes(path.read_bytes(), policy=email.policy.default)["To"].addresses[0]
                  .addr_spec] += 1
        return found

    def delivered(self) -> int:
        if self.sink is not None:
            return self.sink.total
        return len(list((self.instance / "outbox").glob("*.eml")))

    def finished(self, digest_id: int) -> bool:
        from sqlalchemy import select

        from service.extensions import db
        from service.models import Digest

        try:
            with self.app.app_context():
                done = db.session.scalar(select(Digest.finished_at).where(Digest.id == digest_id)) is not None
                db.session.remove()
                return done
        except Exception:  # the database away for a moment: ask again
            return False

    def run(self, fault: str, inject, at: float = 0.3, timeout: float = 900) -> Result:
        from sqlalchemy import func, select

        from service.digests import runs
        from service.extensions import db
        from service.models import Delivery

        result = Result(fault, self.subscribers)
        with self.app.app_context():
            digest_id = runs.send_now().id
        say(f"{self.name}: run {digest_id} for {self.subscribers} subscribers; fault at {at:.0%} sent")
        deadline = time.monotonic() + timeout
        while self.delivered() < self.subscribers * at:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: the run never got going")
            time.sleep(0.05)
        fault_at = time.monotonic()
        note = inject(self)
        say(f"{self.name}: fault injected ({note or fault}); waiting for the run to settle")
        while not self.finished(digest_id):
            if time.monotonic() > deadline:
                result.note = "did not settle"
                break
            time.sleep(0.5)
        else:
            result.settle = time.monotonic() - fault_at
        time.sleep(2)  # a message in flight at the settle reaches the sink
        got = self.mails()
        result.mails = sum(got.values())
        result.distinct = len(got)
        expected = {f"reader{index}@example.com" for index in range(self.subscribers)}
        result.lost = len(expected - set(got))
        result.duplicated = result.mails - result.distinct
        with self.app.app_context():
            states = dict(db.session.execute(select(Delivery.status, func.count()).where(Delivery.digest_id == digest_id)
                                             .group_by(Delivery.status)).all())
            db.session.remove()
        result.details.append(f"deliveries {states}")
        if note and not result.note:
            result.note = note
        if self.restarts:
            result.details.append(f"processes that exited on their own and were restarted (as systemd would): {self.restarts}")
        return result

    def stop(self) -> None:
        self._supervising.set()
        for process in self.processes:
            process.stop()
        if self.app is not None:
            from service.extensions import db

            with self.app.app_context():
                db.session.remove()
                for engine in db.engines.values():
                    engine.dispose()


# --- the seven faults ---

def kill_a_worker(scenario: Scenario) -> str:
    scenario.unsupervised.add(id(scenario.workers[0]))  # stays dead: the other worker takes over
    scenario.workers[0].kill()
    return "worker SIGKILLed"


def fill_disk(mount: Path, hold: float):
    def inject(scenario: Scenario) -> str:
        filler = mount / "filler"
        with open(filler, "wb") as stream:
            with suppress(OSError):
                while True:
                    stream.write(b"\0" * (1 << 20))
                    stream.flush()
        with suppress(OSError):  # the last bytes too
            with open(mount / "filler-tail", "wb") as tail:
                while True:
                    tail.write(b"\0" * 512)
                    tail.flush()
        time.sleep(hold)
        filler.unlink()
        (mount / "filler-tail").unlink(missing_ok=True)
        return f"disk full for {hold:g}s, then freed"
    return inject


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=int(os.environ.get("KEEPREADING_CHAOS_SUBSCRIBERS", 10_000)))
    parser.add_argument("--only", default="", help="comma-separated fault numbers (1-7)")
    parser.add_argument("--refuse-seconds", type=float, default=120, help="how long the server answers 421 (fault 6)")
    args = parser.parse_args(argv)
    if threading.current_thread() is threading.main_thread():  # SIGTERM: stop the private servers and workers too
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    chosen = {int(number) for number in args.only.split(",") if number} or set(range(1, 8))
    sys.path.insert(0, str(ROOT))
    folder = Path(tempfile.mkdtemp(prefix="kr-chaos-"))
    os.chmod(folder, 0o755)
    say(f"working in {folder}")
    results: list[Result] = []
    postgres = redis = sink = None
    try:
        if chosen & set(range(1, 7)):
            postgres, redis, sink = PrivatePostgres(folder), PrivateRedis(folder), Sink()
            postgres.start()
            redis.start()
            sink.start()
            say(f"private PostgreSQL on {postgres.port}, Redis on {redis.port}, SMTP sink on {sink.port}")
        n = args.subscribers
        faults = {
            1: ("1. worker SIGKILLed mid-run", kill_a_worker),
            2: ("2. Redis (broker, journal) restarted", lambda s: (redis.restart(), "Redis down 3 s, restarted empty")[1]),
            3: ("3. PostgreSQL restarted", lambda s: (postgres.restart(), "pg_ctl restart -m fast")[1]),
            4: ("4. SMTP silent after DATA > timeout", lambda s: _stall(sink)),
            5: ("5. SMTP drops after the final dot", lambda s: _drop(sink)),
            6: (f"6. SMTP 421 to everything {args.refuse_seconds:g}s", lambda s: _refuse(sink, args.refuse_seconds)),
        }
        for number in sorted(chosen - {7}):
            title, inject = faults[number]
            sink.received.clear()
            sink.ambiguous = 0
            sink.faults = SinkFaults()
            redis_ok = redis.url
            scenario = Scenario(folder, f"fault{number}", n, postgres.create_database(f"chaos{number}"),
                                redis_ok, redis_ok, sink)
            try:
                scenario.prepare()
                result = scenario.run(title, inject)
            finally:
                scenario.stop()
            if number == 5:
                result.note = (f"{sink.ambiguous} answers lost after the dot: counted sent, kept by this sink "
                               f"(lost if a server discarded them; never resent)")
            results.append(result)
            say(format_row(result))
        if 7 in chosen:
            results.append(embedded_disk_full(folder, n))
            say(format_row(results[-1]))
    finally:
        if sink:
            sink.stop()
        if redis:
            redis.stop()
        if postgres:
            postgres.stop()
        if os.environ.get("KEEPREADING_CHAOS_KEEP") != "1":  # the workers' logs are there: KEEP=1 keeps them
            shutil.rmtree(folder, ignore_errors=True)
    print_table(results)
    return results


def _stall(sink: Sink) -> str:
    sink.faults.stall_seconds = 15  # past the 10 s SMTP_TIMEOUT
    sink.faults.stall_data_until = time.monotonic() + 30
    return "DATA unanswered 15 s (client timeout 10 s), for 30 s"


def _drop(sink: Sink) -> str:
    sink.faults.drop_every = 100
    sink.faults.drop_until = time.monotonic() + 20
    return "every 100th message: connection dropped after the dot, for 20 s"


def _refuse(sink: Sink, seconds: float) -> str:
    sink.faults.refuse_until = time.monotonic() + seconds
    return f"421 to every greeting and MAIL for {seconds:g} s"


def embedded_disk_full(folder: Path, subscribers: int) -> Result:
    """Fault 7 on the embedded default: the instance folder (database, broker, journal, outbox) on a tmpfs."""
    mount = folder / "small-disk"
    mount.mkdir()
    size_mb = max(64, subscribers * 30 // 1000 + 48)  # the .eml files (~10-20 KB each), the databases, and room
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mount)], check=True)
    try:
        instance = mount / "instance"
        scenario = Scenario(folder, "fault7", subscribers, f"sqlite:///{instance / 'keepreading.sqlite'}",
                            f"sqla+sqlite:///{instance / 'broker.sqlite'}", None, None, instance=instance)
        try:
            scenario.prepare()
            result = scenario.run("7. embedded: disk full, then freed", fill_disk(mount, 20))
        finally:
            scenario.stop()
        return result
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def format_row(result: Result) -> str:
    settle = f"{result.settle:.0f}" if result.settle is not None else "—"
    return (f"{result.fault:<42} {result.mails:>7} {result.distinct:>9} {result.lost:>5} {result.duplicated:>5} "
            f"{settle:>7}")


def print_table(results: list[Result]) -> None:
    print()
    print(f"{'fault':<42} {'mails':>7} {'distinct':>9} {'lost':>5} {'dup':>5} {'settle s':>7}")
    print("-" * 80)
    for result in results:
        print(format_row(result))
    print()
    for result in results:
        print(f"{result.fault}: {result.subscribers} subscribers; {result.note or ''} {'; '.join(result.details)}")


if __name__ == "__main__":
    outcome = main()
    sys.exit(0 if all(r.lost == 0 and r.duplicated == 0 and r.settle is not None for r in outcome) else 1)
