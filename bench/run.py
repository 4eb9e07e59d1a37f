"""`make bench`: digest fan-out, web throughput and the studio, measured in one run, printed as one table.

Digests: `keepreading digest send --wait` on PostgreSQL + Redis with 2 Celery worker processes and
real SMTP into Postfix's smtp-sink, against smtp-source on the same sink as the baseline: 10,000, 100,000
and 1,000,000 subscribers (KEEPREADING_BENCH_DIGEST_SIZES), the fan-out and the send timed apart.
Pacing: a 100,000 send at KEEPREADING_SEND_RATE (KEEPREADING_BENCH_SEND_RATE), and a send whose sink
answers 450 to MAIL FROM for its first seconds (a provider's throttling), retried to the last message.
Archive: the first page, page 500 and the feed with 10 and with 10,000 posts (page memory off).
Web: gunicorn (bench/gunicorn.conf.py) under wrk with 16 connections, against a trivial Flask route.
A web target missed: a second wrk run of the route under py-spy (bench/.cache/profile-<route>.txt), its samples
by where the time goes, and its round trips to PostgreSQL per request, counted in libpq's protocol trace.
Studio: the dashboard, a subscriber search, a deep list page and a subscriber's page as a signed-in
publisher sees them, with 1,000,000 subscribers (their events) and 100 digest runs seeded.
Bursts: 1,000 signups (QUICK: 300) from 16 connections to gunicorn (2 workers) with a Celery worker (2
processes), on the embedded default and on PostgreSQL + Redis; each confirmation timed at an SMTP sink.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache"
TOOLS = CACHE / "root"
VENV_BIN = Path(sys.executable).parent
PG_ADMIN = os.environ.get("KEEPREADING_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("KEEPREADING_BENCH_REDIS_URL", "redis://127.0.0.1:6379/3")
DATABASE = os.environ.get("KEEPREADING_BENCH_DATABASE", "kr_bench")
SECRET = "bench-secret-key-not-for-production"
ADMIN_TOKEN = "bench-admin-token"
rows: list[tuple[str, str, str]] = []
PROFILE = False


def say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


# ---------------------------------------------------------------- tools
def fetch_tools() -> None:
    """Postfix's smtp-sink/smtp-source and wrk, unpacked from Debian packages into the cache."""
    wanted = [TOOLS / "usr/sbin/smtp-sink", TOOLS / "usr/sbin/smtp-source", TOOLS / "usr/bin/wrk"]
    if all(path.exists() for path in wanted):
        return
    CACHE.mkdir(exist_ok=True)
    debs = CACHE / "debs"
    debs.mkdir(exist_ok=True)
    say("fetching postfix, wrk and libluajit from Debian (unpacked, not installed)")
    subprocess.run(["apt-get", "update", "-qq"], check=False, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "download", "postfix", "wrk", "libluajit-5.1-2"], cwd=debs, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for deb in debs.glob("*.deb"):
        subprocess.run(["dpkg", "-x", str(deb), str(TOOLS)], check=True)


def tool_env() -> dict[str, str]:
    libs = [TOOLS / "usr/lib/postfix", TOOLS / "usr/lib/x86_64-linux-gnu", TOOLS / "usr/lib/aarch64-linux-gnu"]
    return {**os.environ, "LD_LIBRARY_PATH": ":".join(str(p) for p in libs)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


@contextmanager
def process(command: list[str], env=None, **kwargs):
    child = subprocess.Popen(command, env=env, start_new_session=True, **kwargs)
    try:
        yield child
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()


@contextmanager
def smtp_sink(port: int | None = None, *flags: str):
    port = port or free_port()
    command = [str(TOOLS / "usr/sbin/smtp-sink"), "-u", "nobody", *flags, "-c", f"127.0.0.1:{port}", "1024"]
    with process(command, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
        wait_port(port)
        yield port


def smtp_source_rate(port: int, messages: int) -> float:
    command = [str(TOOLS / "usr/sbin/smtp-source"), "-s", "4", "-m", str(messages), "-l", "10240",
               "-f", "bench@example.org", "-t", "reader@example.org", f"127.0.0.1:{port}"]
    started = time.perf_counter()
    subprocess.run(command, env=tool_env(), check=True, stdout=subprocess.DEVNULL)
    return messages / (time.perf_counter() - started)


# ---------------------------------------------------------------- database and app
def app_env(smtp_port: int | None = None, **extra: str) -> dict[str, str]:
    host = PG_ADMIN.split("://", 1)[1].rsplit("/", 1)[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEPREADING_")}
    env.update({
        "KEEPREADING_DATABASE_URL": f"postgresql+psycopg://{host}/{DATABASE}",
        "KEEPREADING_BROKER_URL": REDIS,
        "KEEPREADING_REDIS_URL": REDIS,
        "KEEPREADING_SECRET_KEY": SECRET,
        "KEEPREADING_ADMIN_TOKEN": ADMIN_TOKEN,
        "KEEPREADING_BASE_URL": "https://news.example.org",
        "KEEPREADING_MAIL_FROM": "The Slow Harbour <letters@news.example.org>",
        "KEEPREADING_INSTANCE_PATH": str(CACHE / "instance"),
        "KEEPREADING_SIGNUP_RATE_LIMIT": "100000000/minute",
        "KEEPREADING_ADDRESS_RATE_LIMIT": "100000000/minute",
        "KEEPREADING_CELERY_QUEUE": "bench",
    })
    if smtp_port:
        env["KEEPREADING_SMTP_URL"] = f"smtp://127.0.0.1:{smtp_port}"
    env.update(extra)
    return env


def reset_database() -> None:
    import psycopg
    import redis

    with psycopg.connect(PG_ADMIN, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {DATABASE}")
    redis.Redis.from_url(REDIS).flushdb()
    (CACHE / "instance").mkdir(parents=True, exist_ok=True)
    keepreading("db", "upgrade")
    keepreading("demo")


def keepreading(*args: str, env=None, capture: bool = False) -> str:
    result = subprocess.run([str(VENV_BIN / "keepreading"), *args], env=env or app_env(), cwd=ROOT, check=True,
                            stdout=subprocess.PIPE if capture else subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    return result.stdout if capture else ""


def seed_subscribers(count: int) -> None:
    """Confirmed subscribers whose watermark predates every post, written with COPY."""
    import psycopg

    host = PG_ADMIN.split("://", 1)[1].rsplit("/", 1)[0]
    with psycopg.connect(f"postgresql://{host}/{DATABASE}", autocommit=True) as connection:
        connection.execute("DELETE FROM deliveries; DELETE FROM digests; DELETE FROM subscribers")
        with connection.cursor().copy(
            "COPY subscribers (email, name, status, frequency, created_at, confirmed_at, digest_watermark, token_key)"
            " FROM STDIN"
        ) as copy:
            for n in range(count):
                copy.write_row((f"reader{n}@example.org", f"Reader {n}", "confirmed", "default",
                                "2020-01-01T00:00:00Z", "2020-01-01T00:00:00Z", "2020-01-01T00:00:00Z",
                                secrets.token_urlsafe(16)))
        connection.execute("ANALYZE")


# ---------------------------------------------------------------- measurements
def peak_rss_kib(pid: int) -> int:
    """VmHWM: the highest resident set the process has had."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0
    match = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(match.group(1)) if match else 0


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(child) for child in task.read_text().split()]
    return found


class CpuAccount:
    """Core-seconds each kind of process used between `start` and `stop`, read from /proc: on a machine whose
    cores the worker, PostgreSQL, Redis and the sink share, where a send's time goes is whose CPU it was."""

    KINDS = (("postgres", "PostgreSQL"), ("redis-server", "Redis"), ("smtp-sink", "smtp-sink"),
             ("celery", "worker (pool + main)"), ("keepreading", "digest send --wait"))

    def __init__(self, worker: int):
        self.worker = worker
        self.tick = os.sysconf("SC_CLK_TCK")

    def _kind(self, pid: int, name: str) -> str:
        if pid == os.getpid():  # the bench's children: `digest send --wait`
            return "digest send --wait"
        if pid == self.worker or pid in self.pool:
            return "worker (pool + main)"
        return next((label for prefix, label in self.KINDS if name.startswith(prefix)), "everything else")

    def _read(self) -> tuple[dict[int, tuple[str, int]], int]:
        self.pool = set(children(self.worker))
        found = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            name = text[text.index("(") + 1:text.rindex(")")]
            fields = text[text.rindex(")") + 2:].split()
            pid = int(stat.parent.name)
            # the process's own time, and its children's that ended meanwhile (a PostgreSQL backend whose
            # connection closed, `digest send --wait` once the bench has waited for it)
            own, ended = int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])
            found[pid] = (self._kind(pid, name), ended if pid == os.getpid() else own + ended)
        idle = sum(int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[4:6])
        return found, idle

    def start(self) -> None:
        self.before, self.idle_before = self._read()

    def stop(self) -> dict[str, float]:
        after, idle = self._read()
        used: Counter[str] = Counter()
        for pid, (kind, ticks) in after.items():
            used[kind] += (ticks - self.before.get(pid, (kind, 0))[1]) / self.tick
        used["idle (both cores)"] = (idle - self.idle_before) / self.tick
        return dict(used)


class RedisMemory(threading.Thread):
    """Samples Redis used_memory while the digest runs."""

    def __init__(self):
        super().__init__(daemon=True)
        import redis

        self.client = redis.Redis.from_url(REDIS)
        self.baseline = self.client.info("memory")["used_memory"]
        self.peak = self.baseline
        self.running = True

    def run(self):
        while self.running:
            self.peak = max(self.peak, self.client.info("memory")["used_memory"])
            time.sleep(0.02)

    def stop(self) -> float:
        self.running = False
        self.join()
        return (self.peak - self.baseline) / 1024 / 1024


def digest_run(subscribers: int, smtp_port: int, during=None, profile: bool = False, **extra: str) -> dict:
    """One `digest send --wait` over `subscribers` readers, with 2 fresh worker processes; `during()` runs in a
    thread as the send starts."""
    seed_subscribers(subscribers)
    env = app_env(smtp_port, **extra)
    worker_cmd = [str(VENV_BIN / "celery"), "-A", "worker", "worker", "--concurrency", "2", "--loglevel", "WARNING",
                  "--without-gossip", "--without-mingle", "--without-heartbeat", "-Q", "bench"]
    log = open(CACHE / f"worker-{subscribers}.log", "w")
    with process(worker_cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT) as worker:
        deadline = time.monotonic() + 60
        while len(children(worker.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # let the pool finish importing before the clock starts
        redis_memory = RedisMemory()
        redis_memory.start()
        cpu = CpuAccount(worker.pid)
        with profiler(worker.pid, f"digests-{subscribers}", profile):
            if during:
                threading.Thread(target=during, daemon=True).start()
            cpu.start()
            started = time.perf_counter()
            output, queued = timed_send(env)
            elapsed = time.perf_counter() - started
            used = cpu.stop()
        growth = redis_memory.stop()
        pool = children(worker.pid)
        peaks = [peak_rss_kib(pid) / 1024 for pid in pool]
    log.close()
    counts = {key: int(value) for key, value in re.findall(r"(sent|failed|skipped)\D+(\d+)", output)}
    say(f"{subscribers:,} subscribers: run created and queued after {queued - started:.2f} s, "
        f"settled after {elapsed:.2f} s")
    sent = counts.get("sent", 0)
    return {"elapsed": elapsed, "sent": sent, "failed": counts.get("failed", 0), "rate": sent / elapsed,
            "fanout": queued - started, "send": elapsed - (queued - started),
            "send_rate": sent / max(elapsed - (queued - started), 1e-9), "peaks": peaks, "redis_mb": growth,
            "output": output.strip(), "cpu": used, "subscribers": subscribers}


def timed_send(env: dict) -> tuple[str, float]:
    """`digest send --wait`'s output, and when it said the run was queued (the fan-out's end)."""
    child = subprocess.Popen([str(VENV_BIN / "keepreading"), "digest", "send", "--wait"], env=env, cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    first = child.stdout.readline()
    queued = time.perf_counter()
    rest = child.stdout.read()
    if child.wait() != 0:
        raise subprocess.CalledProcessError(child.returncode, child.args, first + rest)
    return first + rest, queued


@contextmanager
def profiler(pid: int, name: str, always: bool = False):
    """With --profile (or `always`): py-spy samples the worker and its pool processes into bench/.cache/<name>.txt."""
    if not (PROFILE or always):
        yield
        return
    output = CACHE / f"profile-{name}.txt"
    with py_spy(pid, output, *(("--idle", "--nonblocking") if always else ())):  # waits on sockets sampled too
        yield
    say(f"profile written to {output} (collapsed stacks: flamegraph.pl, speedscope)")


@contextmanager
def py_spy(pid: int, output: Path, *flags: str):
    """py-spy samples `pid` and its child processes 250 times a second into `output` (collapsed stacks)."""
    spy = shutil.which("py-spy", path=str(VENV_BIN)) or "py-spy"
    command = [spy, "record", "--pid", str(pid), "--subprocesses", "--format", "raw", "--rate", "250", *flags,
               "--output", str(output)]
    with process(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as spy_process:
        time.sleep(1)
        yield
        os.killpg(spy_process.pid, signal.SIGINT)
        spy_process.wait(timeout=60)


def wrk(url: str, seconds: int, *extra: str, warm_up: bool = True) -> dict:
    """Steady state: a 2 s pass first (templates compiled, connections opened) that is not counted, unless the
    server is already warm."""
    command = [str(TOOLS / "usr/bin/wrk"), "-t", "2", "-c", "16", "--latency", *extra, url]
    if warm_up:
        subprocess.run(command[:1] + ["-d", "2s"] + command[1:], env=tool_env(), check=True, capture_output=True)
    output = subprocess.run(command[:1] + ["-d", f"{seconds}s"] + command[1:], env=tool_env(), check=True,
                            capture_output=True, text=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    latency = {p: _ms(v) for p, v in re.findall(r"^\s+(50|99)%\s+(\S+)", output, re.M)}
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    return {"rate": rate, "p50": latency.get("50"), "p99": latency.get("99"),
            "non2xx": int(non_2xx.group(1)) if non_2xx else 0, "errors": errors.group(1) if errors else ""}


def wrk_alternating(first_url: str, second_url: str, seconds: int, *extra: str,
                    rounds: int = 4) -> tuple[dict, dict, list[float]]:
    """Two URLs compared on a shared machine: `rounds` windows of `seconds` each, taken in turn with the order
    reversed every round (A B, B A, A B, B A), so that a burst of other work or a drift falls on both and
    neither is always measured second. Each URL's median window, and the second's rate over the first's round
    by round (sorted: their spread is the noise)."""
    windows: tuple[list[dict], list[dict]] = ([], [])
    for round_ in range(rounds):
        order = ((0, first_url), (1, second_url))
        for which, url in order if round_ % 2 == 0 else order[::-1]:
            windows[which].append(wrk(url, seconds, *extra, warm_up=round_ == 0))
    first, second = ({key: statistics.median(window[key] for window in found) for key in ("rate", "p50", "p99")}
                     for found in windows)
    ratios = sorted(b["rate"] / a["rate"] for a, b in zip(*windows, strict=True))
    return first, second, ratios


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1, "s": 1000}[unit]


@contextmanager
def gunicorn(app_spec: str, env: dict, cwd: Path, log=None):
    with gunicorn_master(app_spec, env, cwd, log) as (url, _master):
        yield url


@contextmanager
def gunicorn_master(app_spec: str, env: dict, cwd: Path, log=None):
    """gunicorn's URL and its master's pid (the workers are its children)."""
    port = free_port()
    command = [str(VENV_BIN / "gunicorn"), "-c", str(HERE / "gunicorn.conf.py"), "-b", f"127.0.0.1:{port}", app_spec]
    with process(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=log) as master:
        wait_port(port)
        time.sleep(1)
        yield f"http://127.0.0.1:{port}", master.pid


def reader_cookie() -> str:
    """A signed session cookie for one confirmed subscriber, made the way the app makes it."""
    code = (
        "from service import create_app\n"
        "from service.readers import access\n"
        "from service.extensions import db\n"
        "from service.models import Subscriber\n"
        "from sqlalchemy import select\n"
        "app = create_app()\n"
        "with app.app_context():\n"
        "    reader = db.session.scalar(select(Subscriber).where(Subscriber.status == 'confirmed').limit(1))\n"
        "    print(access.session_token(reader))\n"
    )
    return subprocess.run([sys.executable, "-c", code], env=app_env(), cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()


def in_app(code: str) -> str:
    """Run Python inside the app (its settings from app_env) and return what it prints."""
    preamble = "from service import create_app\nfrom service.extensions import db\napp = create_app()\n"
    return subprocess.run([sys.executable, "-c", preamble + code], env=app_env(), cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()


# ---------------------------------------------------------------- studio seed
AUDIENCE_SQL = """
DELETE FROM deliveries; DELETE FROM digests; DELETE FROM events; DELETE FROM outbox; DELETE FROM subscribers;
DELETE FROM daily_counts; DELETE FROM rollup_marks;
-- a year of signups, from the demo posts' pages, the front page, two other sites and nowhere in particular
INSERT INTO subscribers (email, name, status, frequency, created_at, confirmed_at, unsubscribed_at, bounced_at,
                         digest_watermark, consent_at, consent_ip, consent_source)
SELECT 'reader' || n || '@example.org', 'Reader ' || n, status, 'default', joined,
       CASE WHEN status <> 'pending' THEN joined + interval '10 minutes' END,
       CASE WHEN status = 'unsubscribed' THEN joined + interval '30 days' END,
       CASE WHEN status = 'bounced' THEN joined + interval '20 days' END,
       joined, joined, '192.0.2.' || (n % 250), source
FROM (SELECT n,
             now() - interval '365 days' + (n * interval '365 days' / %(count)s) AS joined,
             CASE WHEN n % 41 = 0 THEN 'unsubscribed' WHEN n % 97 = 0 THEN 'bounced'
                  WHEN n % 13 = 0 THEN 'pending' ELSE 'confirmed' END AS status,
             (ARRAY[%(sources)s])[1 + n % %(source_count)s] AS source
      FROM generate_series(1, %(count)s) AS n) AS seed;
INSERT INTO events (kind, subscriber_id, created_at, data)
SELECT 'signup', id, created_at, '{}' FROM subscribers;
INSERT INTO events (kind, subscriber_id, created_at, data)
SELECT 'confirmed', id, confirmed_at, '{"from": "pending"}' FROM subscribers WHERE confirmed_at IS NOT NULL;
INSERT INTO events (kind, subscriber_id, created_at, data)
SELECT 'unsubscribed', id, unsubscribed_at, '{"from": "confirmed"}' FROM subscribers WHERE unsubscribed_at IS NOT NULL;
INSERT INTO events (kind, subscriber_id, created_at, data)
SELECT 'bounced', id, bounced_at, '{"from": "confirmed"}' FROM subscribers WHERE bounced_at IS NOT NULL;
-- %(runs)s weekly runs, each to the first %(recipients)s readers (every one of them has a delivery in each run)
INSERT INTO digests (slot, frequency, cutoff, created_at, finished_at)
SELECT 'weekly:bench-' || n, 'weekly', at, at, at + interval '20 minutes'
FROM (SELECT n, now() - n * interval '3 days' AS at FROM generate_series(1, %(runs)s) AS n) AS runs;
INSERT INTO deliveries (digest_id, subscriber_id, since, status, attempts, sent_at)
SELECT d.id, s.id, d.cutoff - interval '7 days', 'sent', 1, d.created_at + interval '5 minutes'
FROM digests d CROSS JOIN (SELECT id FROM subscribers ORDER BY id LIMIT %(recipients)s) AS s;
ANALYZE;
"""


def seed_audience(count: int, runs: int, recipients: int) -> dict:
    """Subscribers with their events, digest runs with deliveries (INSERT ... SELECT generate_series), then the
    first roll-up of the daily counts; the ids the scenarios open and how long each step took."""
    import psycopg

    host = PG_ADMIN.split("://", 1)[1].rsplit("/", 1)[0]
    slugs = in_app("from service.models import Post\nfrom sqlalchemy import select\nwith app.app_context():\n"
                   "    print(' '.join(db.session.scalars(select(Post.slug))))").split()
    sources = [f"https://news.example.org/p/{slug}" for slug in slugs] + [
        "https://news.example.org/", "https://blog.example/2026/harbour", "https://friends.example/links", ""]
    started = time.perf_counter()
    with psycopg.connect(f"postgresql://{host}/{DATABASE}", autocommit=True) as connection:
        connection.execute(AUDIENCE_SQL.replace("%(sources)s", ", ".join(f"'{s}'" for s in sources))
                           .replace("%(source_count)s", str(len(sources))).replace("%(count)s", str(count))
                           .replace("%(runs)s", str(runs)).replace("%(recipients)s", str(recipients)))
        first, last = connection.execute("SELECT min(id), max(id) FROM subscribers").fetchone()
    seeded = time.perf_counter() - started
    code = ("import time\nfrom service.studio import stats\nwith app.app_context():\n"
            "    for _ in range(2):\n        started = time.perf_counter(); stats.roll_up()\n"
            "        print(time.perf_counter() - started)")
    first_roll_up, next_roll_up = (float(line) for line in in_app(code).split())
    return {"seeded": seeded, "first_roll_up": first_roll_up, "next_roll_up": next_roll_up,
            "first_id": first, "last_id": last}


def staff_cookie() -> str:
    """A studio session for a bench staff account, started the way signing in starts one."""
    return in_app("from service.studio import staff\nwith app.app_context():\n"
                  "    person = staff.find('bench@example.org') or staff.add('bench@example.org', 'Bench')\n"
                  "    print(staff.start_session(person, '127.0.0.1', 'wrk'))")


# ---------------------------------------------------------------- bursts
class TimedSink:
    """An SMTP server in this process (aiosmtpd) that notes when each message arrived, and for whom."""

    def __init__(self):
        from aiosmtpd.controller import Controller

        self.port = free_port()
        self.arrivals: list[tuple[str, float]] = []
        self.lock = threading.Lock()
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                now = time.time()
                with sink.lock:
                    sink.arrivals.extend((recipient, now) for recipient in envelope.rcpt_tos)
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> "TimedSink":
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()

    def clear(self) -> None:
        with self.lock:
            self.arrivals.clear()

    def count(self) -> int:
        with self.lock:
            return len(self.arrivals)


def burst_env(backend: str, smtp_port: int) -> dict[str, str]:
    """The embedded default (SQLite database and broker, no Redis) or PostgreSQL + Redis, as the app sees them."""
    if backend == "redis":
        return app_env(smtp_port)
    instance = CACHE / "burst-embedded"
    shutil.rmtree(instance, ignore_errors=True)
    instance.mkdir(parents=True)
    env = app_env(smtp_port, KEEPREADING_INSTANCE_PATH=str(instance),
                  KEEPREADING_DATABASE_URL=f"sqlite:///{instance / 'keepreading.sqlite'}",
                  KEEPREADING_BROKER_URL=f"sqla+sqlite:///{instance / 'broker.sqlite'}")
    del env["KEEPREADING_REDIS_URL"]
    return env


def signups(url: str, count: int, connections: int, prefix: str) -> dict[str, float]:
    """POST /subscribe `count` times from `connections` threads (keep-alive); each accepted address -> when."""
    import requests

    accepted: dict[str, float] = {}
    refused: list[int] = []
    numbers = iter(range(count))
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    n = next(numbers, None)
                if n is None:
                    return
                address = f"{prefix}{n}@example.org"
                answer = session.post(url + "/subscribe", data={"email": address, "next": "/"}, allow_redirects=False)
                with lock:
                    if answer.status_code < 400:
                        accepted[address] = time.time()
                    else:
                        refused.append(answer.status_code)

    threads = [threading.Thread(target=client) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if refused:
        say(f"{len(refused)} signups refused: {sorted(set(refused))}")
    return accepted


def burst_run(backend: str, count: int, **extra: str) -> dict:
    """gunicorn (2 workers) and a Celery worker (2 processes) on `backend`; `count` signups at 16 connections;
    every confirmation timed from its signup's answer to its arrival at the SMTP sink."""
    with TimedSink() as sink:
        env = {**burst_env(backend, sink.port), **extra}
        if backend == "redis":
            reset_database()
        else:
            keepreading("db", "upgrade", env=env)
        worker_cmd = [str(VENV_BIN / "celery"), "-A", "worker", "worker", "--concurrency", "2", "--loglevel", "WARNING",
                      "--without-gossip", "--without-mingle", "--without-heartbeat", "-Q", "bench"]
        log = open(CACHE / f"burst-{backend}.log", "w")  # the worker's and gunicorn's
        with process(worker_cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), \
                gunicorn("wsgi:app", {**env, "GUNICORN_WORKERS": "2"}, ROOT, log=log) as url:
            signups(url, 1, 1, "warm")  # the worker is up and the pipeline warm once this one mail arrives
            deadline = time.monotonic() + 60
            while sink.count() < 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1)
            sink.clear()
            started = time.time()
            accepted = signups(url, count, 16, f"burst-{backend}-{int(started)}-")
            answered = time.time() - started
            deadline = time.monotonic() + 120
            while sink.count() < len(accepted) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(2)  # anything sent twice arrives by now
        log.close()
        arrivals = list(sink.arrivals)
    first: dict[str, float] = {}
    for recipient, moment in arrivals:
        first[recipient] = min(moment, first.get(recipient, moment))
    latencies = sorted(first[address] - accepted[address] for address in accepted if address in first)
    last = max(first.values()) - started if first else float("nan")
    return {
        "signups": count, "accepted": len(accepted), "answered": answered, "mails": len(arrivals),
        "lost": sum(address not in first for address in accepted),
        "duplicated": len(arrivals) - len(first), "last": last,
        "rate": len(first) / last if first else 0.0,
        "p50": _percentile(latencies, 0.50), "p99": _percentile(latencies, 0.99),
    }


def _percentile(values: list[float], share: float) -> float:
    return values[min(len(values) - 1, int(share * len(values)))] if values else float("nan")


# ---------------------------------------------------------------- scenarios
def bench_bursts(quick: bool) -> None:
    count = 300 if quick else 1_000
    for backend, name, extra in (
        ("embedded", "embedded default (SQLite, database broker)", {}),
        # kombu's own polling interval: what the drain alone gives the embedded default
        ("embedded", "embedded, broker polled every 1 s", {"KEEPREADING_BROKER_POLLING_INTERVAL": "1"}),
        ("redis", "PostgreSQL + Redis", {}),
    ):
        say(f"bursts: {count:,} signups at 16 connections, {name}")
        result = burst_run(backend, count, **extra)
        rows.append((f"burst of {count:,} signups, {name}",
                     f"{result['accepted']:,} accepted in {result['answered']:.1f} s; {result['mails']:,} mails at the sink, "
                     f"{result['lost']} lost, {result['duplicated']} duplicated",
                     f"drain {result['rate']:,.0f} mails/s; signup→mail p50 {result['p50']:.2f} s, "
                     f"p99 {result['p99']:.2f} s; last mail {result['last']:.1f} s after the start; target ≤ 15 s"))


def digest_sizes(quick: bool) -> list[int]:
    chosen = os.environ.get("KEEPREADING_BENCH_DIGEST_SIZES")
    if chosen:
        return [int(size) for size in chosen.split(",")]
    return [1_000, 10_000] if quick else [10_000, 100_000, 1_000_000]


def bench_digests(quick: bool) -> None:
    sizes = digest_sizes(quick)
    with smtp_sink() as port:
        baseline = smtp_source_rate(port, 20_000 if quick else 50_000)
        rows.append(("smtp-source → smtp-sink (4 sessions, 10 KB)", f"{baseline:,.0f} msg/s", "baseline"))
        results = {size: digest_run(size, port) for size in sizes}
        largest = results[sizes[-1]]
        profiled = None
        if sizes[-1] >= 1_000_000 and (largest["elapsed"] > 300 or largest["send_rate"] < 0.75 * baseline):
            say("the 1,000,000 target is missed: a 100,000 run again, its worker sampled by py-spy")
            profiled = digest_run(100_000, port, profile=True)
    for size, result in results.items():
        note = f"send {result['send_rate'] / baseline:.2f}× smtp-source"
        missed = size >= 1_000_000 and (result["elapsed"] > 300 or result["send_rate"] < 0.75 * baseline)
        if size >= 1_000_000:
            note += (f"; target ≤ 300 s ({'met' if result['elapsed'] <= 300 else 'not met'}), ≥ 3,500/s overall, "
                     f"send ≥ 0.75× ({'met' if result['send_rate'] >= 0.75 * baseline else 'not met'})")
        rows.append((f"digest send --wait, {size:,} subscribers",
                     f"{result['rate']:,.0f} digests/s overall ({result['sent']:,} sent, {result['failed']} failed, "
                     f"{result['elapsed']:.1f} s): fan-out {result['fanout']:.1f} s, send {result['send']:.1f} s "
                     f"at {result['send_rate']:,.0f}/s; {result['elapsed'] / size * 1e6:.0f} µs a subscriber "
                     f"(fan-out {result['fanout'] / size * 1e6:.0f}, send {result['send'] / size * 1e6:.0f})",
                     note))
        rows.append(cpu_row(size, result))
        if missed and profiled is not None:
            rows.extend(digest_miss_rows(profiled))
    # Each run has fresh pool processes (and may end with fewer, one being replaced): compare the largest peaks.
    small, large = sizes[-2] if len(sizes) > 1 else sizes[0], sizes[-1]
    first, second = results[small], results[large]
    growth = max(second["peaks"]) - max(first["peaks"]) if first["peaks"] and second["peaks"] else float("nan")
    rows.append(("worker peak RSS (each pool process)",
                 f"{', '.join(f'{p:.1f}' for p in first['peaks'])} MB at {small:,}; "
                 f"{', '.join(f'{p:.1f}' for p in second['peaks'])} MB at {large:,}",
                 f"growth {growth:+.1f} MB; target ≤ 10 MB"))
    rows.append((f"Redis memory growth during the {large:,} send", f"{second['redis_mb']:.2f} MB", "target ≤ 5 MB"))


def cpu_row(size: int, result: dict) -> tuple[str, str, str]:
    """Whose CPU the run used (core-seconds, from /proc), against the 2 cores × its length there were."""
    used = dict(result["cpu"])
    idle = used.pop("idle (both cores)")
    shown = ", ".join(f"{kind} {seconds:,.0f}" for kind, seconds in sorted(used.items(), key=lambda item: -item[1])
                      if seconds >= 0.5)
    return (f"  CPU during the {size:,} run (core-seconds)", shown,
            f"{os.cpu_count()} cores × {result['elapsed']:.0f} s = {os.cpu_count() * result['elapsed']:,.0f}; "
            f"idle {idle:,.0f}")


def digest_miss_rows(profiled: dict) -> list[tuple[str, str, str]]:
    """Where a sending pool process's time goes (py-spy --idle over a smaller run): samples by category."""
    raw = CACHE / f"profile-digests-{profiled['subscribers']}.txt"
    shares: Counter[str] = Counter()
    for frames, count in stacks(raw):
        if any(file == "service/tasks.py" for _, file in frames):  # a task's thread; not the pool's waits, not heartbeats
            shares[digest_category(frames)] += count
    total = sum(shares.values())
    head = ("  1,000,000 target not met: profile", f"{total:,} samples in tasks (py-spy, 250/s) over a "
            f"{profiled['subscribers']:,} run at {profiled['send_rate']:,.0f}/s", f"raw: {raw.relative_to(ROOT)}")
    return [head] + share_rows(shares, total)


def digest_category(frames: list[tuple[str, str]]) -> str:
    """A sending task's sample: the leaf-most service/ function, and the library it waits in underneath."""
    owners = [index for index, (_, file) in enumerate(frames) if file.startswith("service/")]
    function, file = frames[owners[-1]]
    under = {name.split("/", 1)[0] for _, name in frames[owners[-1] + 1:]}
    owner = f"{function} ({file[len('service/'):]})"
    if "psycopg" in under or "sqlalchemy" in under:
        return f"PostgreSQL (and SQLAlchemy): {owner}"
    if "redis" in under:
        return f"Redis: {owner}"
    if "smtplib.py" in under or "socket.py" in under or "ssl.py" in under:
        return f"SMTP: {owner}"
    if under & {"email", "jinja2", "quopri.py", "base64.py"}:
        return f"composing the message: {owner}"
    return f"in service/ itself: {owner}"


RETENTION_TIMING = """
import time
from datetime import timedelta
from sqlalchemy import text
from service.digests import runs
from service.models import utcnow
with app.app_context():
    runs.recover_and_finish()  # warm
    started = time.perf_counter()
    for _ in range(20):
        runs.recover_and_finish()
    dispatch_ms = (time.perf_counter() - started) / 20 * 1000
    open_id = db.session.scalar(text("SELECT id FROM digests WHERE slot = 'manual:bench-open'"))
    started = time.perf_counter()
    for _ in range(20):
        runs.counts([open_id])
    counts_ms = (time.perf_counter() - started) / 20 * 1000
    # the dispatcher's fan-out: a run's deliveries for every reader written beside the old rows (best of 3;
    # each run is then removed and the watermarks set back, so the next one finds the same readers due; the
    # readers' table vacuumed before each, as autovacuum would have, so both sides start from the same table)
    from sqlalchemy import delete, update
    from service.models import Delivery, Digest, Subscriber
    fan_out = []
    for n in range(3):
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE subscribers"))  # the last reset's row versions: not timed
        started = time.perf_counter()
        run = runs.create_run(f"manual:bench-fan-out-{n}", None, utcnow())
        fan_out.append((time.perf_counter() - started) * 1000)
        db.session.execute(delete(Delivery).where(Delivery.digest_id == run.id))
        db.session.execute(delete(Digest).where(Digest.id == run.id))
        db.session.execute(update(Subscriber).values(digest_watermark=utcnow() - timedelta(days=3650)))
        db.session.commit()
    print(f"{dispatch_ms:.2f} {counts_ms:.2f} {min(fan_out):.1f}")
"""

RETENTION_PRUNE = """
import time
from datetime import timedelta
from service.digests import runs
from service.models import utcnow
with app.app_context():
    started = time.perf_counter()
    deleted = runs.prune(utcnow(), budget=%(budget)s)
    print(f"{deleted} {time.perf_counter() - started:.2f}")
"""


def bench_retention(quick: bool) -> None:
    """The recovery beat's queries (recover + finish) and a run's counts, with 0 and then N old delivery rows
    present (runs finished a year ago); then prune's pace on them."""
    import psycopg

    readers, old_runs = (10_000, 100) if quick else (10_000, 3_000)
    seed_subscribers(readers)
    host = PG_ADMIN.split("://", 1)[1].rsplit("/", 1)[0]
    with psycopg.connect(f"postgresql://{host}/{DATABASE}", autocommit=True) as connection:
        connection.execute("INSERT INTO digests (slot, frequency, cutoff, created_at) "
                           "VALUES ('manual:bench-open', NULL, now(), now())")
        connection.execute("INSERT INTO deliveries (digest_id, subscriber_id, status, attempts, lease_until) "
                           "SELECT d.id, s.id, 'sending', 1, now() + interval '1 day' FROM digests d, subscribers s "
                           "WHERE d.slot = 'manual:bench-open'")
        connection.execute("ANALYZE")
    dispatch_empty, counts_empty, fan_out_empty = map(float, in_app(RETENTION_TIMING).split())
    say(f"retention: seeding {old_runs * readers:,} old delivery rows")
    started = time.perf_counter()
    with psycopg.connect(f"postgresql://{host}/{DATABASE}", autocommit=True) as connection:
        # rows valid by construction: skip the per-row foreign-key triggers while seeding (superuser only)
        connection.execute("SET session_replication_role = replica")
        connection.execute("INSERT INTO digests (slot, frequency, cutoff, created_at, finished_at) "
                           "SELECT 'weekly:old-' || n, 'weekly', now() - interval '400 days', "
                           "now() - interval '400 days', now() - interval '400 days' FROM generate_series(1, %s) n",
                           (old_runs,))
        connection.execute("INSERT INTO deliveries (digest_id, subscriber_id, status, attempts, sent_at) "
                           "SELECT d.id, s.id, 'sent', 1, d.created_at FROM digests d, subscribers s "
                           "WHERE d.slot LIKE 'weekly:old-%%'")
        connection.execute("ANALYZE")
    seeded = time.perf_counter() - started
    dispatch_full, counts_full, fan_out_full = map(float, in_app(RETENTION_TIMING).split())
    total = old_runs * readers
    rows.append((f"recovery beat (recover + finish), 0 → {total:,} old delivery rows",
                 f"{dispatch_empty:.2f} → {dispatch_full:.2f} ms", f"{dispatch_full / dispatch_empty:.2f}× (seeded in {seeded:.0f} s)"))
    rows.append((f"a running run's counts, 0 → {total:,} old rows", f"{counts_empty:.2f} → {counts_full:.2f} ms",
                 f"{counts_full / counts_empty:.2f}×"))
    rows.append((f"fan-out of a run to {readers:,} readers, 0 → {total:,} old rows",
                 f"{fan_out_empty:.1f} → {fan_out_full:.1f} ms", f"{fan_out_full / fan_out_empty:.2f}×"))
    budget = min(total, 1_000_000)
    deleted, elapsed = in_app(RETENTION_PRUNE % {"budget": budget}).split()
    rows.append((f"prune {int(deleted):,} old rows (5,000 a transaction)", f"{int(deleted) / float(elapsed):,.0f} rows/s",
                 f"{float(elapsed):.1f} s; runs keep their counts"))


def bench_pacing(quick: bool) -> None:
    """SEND_RATE held over a long send; then a sink that throttles (450 to MAIL FROM) for its first seconds."""
    count = 10_000 if quick else 100_000
    rate = float(os.environ.get("KEEPREADING_BENCH_SEND_RATE", "500"))  # below what 2 workers manage on 2 cores
    with smtp_sink() as port:  # batches of 100: each batch's record time places its mail to a tenth of a second
        paced = digest_run(count, port, KEEPREADING_SEND_RATE=str(rate), KEEPREADING_DIGEST_BATCH_SIZE="100")
    held = held_rate()
    off = held / rate - 1
    rows.append((f"SEND_RATE={rate:,.0f}/s, {count:,} subscribers, 2 workers × 2 processes",
                 f"{held:,.1f} msg/s from the 10th to the 90th percentile of sent_at ({paced['sent']:,} sent, "
                 f"{paced['failed']} failed; {paced['send_rate']:,.1f}/s over the whole send phase with its "
                 f"start and --wait's last poll, {paced['send']:.1f} s)",
                 f"{off:+.1%} of the set rate; target within ±5 % ({'met' if abs(off) <= 0.05 else 'not met'})"))
    throttled_count, throttle_seconds = (2_000, 5) if quick else (10_000, 8)
    port = free_port()
    plain = [str(TOOLS / "usr/sbin/smtp-sink"), "-u", "nobody", "-c", f"127.0.0.1:{port}", "1024"]
    sinks = [subprocess.Popen([*plain[:3], "-r", "MAIL", *plain[3:]], env=tool_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)]
    wait_port(port)

    def window_ends() -> None:  # the provider's window ends: the same port now takes every message
        time.sleep(throttle_seconds)
        os.killpg(sinks[0].pid, signal.SIGTERM)
        sinks[0].wait()
        sinks.append(subprocess.Popen(plain, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))

    try:
        result = digest_run(throttled_count, port, during=window_ends, KEEPREADING_DIGEST_RETRY_DELAY="1",
                            KEEPREADING_DIGEST_RETRY_MAX_DELAY="3")
    finally:
        for sink in sinks:
            if sink.poll() is None:
                os.killpg(sink.pid, signal.SIGTERM)
                sink.wait()
    attempts = max_attempts()
    rows.append((f"throttled: 450 to MAIL FROM for the first {throttle_seconds} s, {throttled_count:,} subscribers",
                 f"{result['sent']:,} sent, {result['failed']} failed in {result['elapsed']:.1f} s; "
                 f"most attempts on a delivery {attempts}",
                 "target: all sent, none lost, throttling spends no attempt "
                 f"({'met' if result['sent'] == throttled_count and attempts <= 1 else 'not met'})"))


def held_rate() -> float:
    """Messages a second between the times a tenth and nine tenths of the deliveries were recorded sent."""
    import psycopg

    host = PG_ADMIN.split("://", 1)[1].rsplit("/", 1)[0]
    with psycopg.connect(f"postgresql://{host}/{DATABASE}") as connection:
        count, first, last = connection.execute(
            "SELECT count(*), percentile_disc(0.1) WITHIN GROUP (ORDER BY sent_at), "
            "percentile_disc(0.9) WITHIN GROUP (ORDER BY sent_at) FROM deliveries WHERE status = 'sent'").fetchone()
    return 0.8 * count / (last - first).total_seconds()


def max_attempts() -> int:
    import psycopg

    host = PG_ADMIN.split("://", 1)[1].rsplit("/", 1)[0]
    with psycopg.connect(f"postgresql://{host}/{DATABASE}") as connection:
        return connection.execute("SELECT coalesce(max(attempts), 0) FROM deliveries").fetchone()[0]


@dataclass(frozen=True)
class WebTarget:
    """A route wrk loads, its target against the floor, and how one request of it is made in the test client."""

    name: str
    profile: str  # bench/.cache/profile-<profile>.txt
    path: str
    ratio: float
    p99_ms: float | None = None
    headers: tuple[str, ...] = ()
    script: str | None = None  # wrk's Lua script, which makes the requests
    method: str = "GET"
    body: str | None = None  # the test client's body, {n} numbering the requests

    @property
    def wrk_args(self) -> list[str]:
        return [*(arg for header in self.headers for arg in ("-H", header)), *(["-s", self.script] if self.script else [])]

    def met(self, result: dict, floor: dict) -> bool:
        return result["rate"] / floor["rate"] >= self.ratio and (self.p99_ms is None or result["p99"] < self.p99_ms)


def bench_web(quick: bool) -> None:
    seconds = 5 if quick else 10
    with gunicorn("trivial:app", {**os.environ}, HERE) as url:
        floor = wrk(url + "/", seconds)
    rows.append(("web: trivial Flask route", _web(floor), "floor"))
    cookie = f"Cookie: kr_reader={reader_cookie()}"
    article = "/p/the-ferry-that-waits-for-the-baker"
    targets = [
        WebTarget("gated article, anonymous", "article-anonymous", article, 0.6, 20),
        WebTarget("gated article, signed-in reader", "article-signed-in", article, 0.6, 20, headers=(cookie,)),
        WebTarget("POST /subscribe (insert + enqueue)", "signup", "/subscribe", 0.25, script=str(HERE / "subscribe.lua"),
                  method="POST", body=f"email=rt{secrets.token_hex(4)}-{{n}}@example.org&next=%2F"),
    ]
    with gunicorn_master("wsgi:app", app_env(), ROOT) as (url, master):
        results = [wrk(url + target.path, seconds, *target.wrk_args) for target in targets]
        profiles = {target.name: profile_web(master, url, target, seconds)
                    for target, result in zip(targets, results, strict=True) if not target.met(result, floor)}
    for target, result in zip(targets, results, strict=True):
        note = f"{result['rate'] / floor['rate']:.2f}× floor; target ≥ {target.ratio}×"
        if target.p99_ms is not None:
            note += f", p99 < {target.p99_ms:g} ms"
        if result["non2xx"] or result["errors"]:
            note += f"; non-2xx {result['non2xx']} {result['errors']}"
        note += f" ({'met' if target.met(result, floor) else 'not met'})"
        rows.append((f"web: {target.name}", _web(result), note))
        if target.name in profiles:
            rows.extend(miss_rows(target, result, floor, *profiles[target.name]))


# ---------------------------------------------------------------- where a missed web target's time goes
SHOWN_SHARE = 0.015  # categories below 1.5 % of the samples are summed into one row


def profile_web(master: int, url: str, target: WebTarget, seconds: int) -> tuple[Path, dict, dict, int, dict]:
    """A second wrk run of the route under py-spy, then its round trips to PostgreSQL in the test client.

    --idle: a thread waiting on a socket (PostgreSQL, Redis) is idle to py-spy, and without the flag those
    waits, the time this profile looks for, would not be sampled at all; the samples outside a request that
    --idle brings too (the thread pool's and gunicorn's waits for work) are set apart by their stacks.
    --nonblocking: py-spy reads the workers' stacks without stopping them 250 times a second, so the run it
    samples is less slowed by the sampling, at the price of a rare torn stack."""
    output = CACHE / f"profile-{target.profile}.txt"
    with py_spy(master, output, "--idle", "--nonblocking"):
        result = wrk(url + target.path, seconds, *target.wrk_args, warm_up=False)
    shares, in_requests, outside = where_time_goes(output)
    say(f"{target.name}: profile written to {output} ({in_requests:,} samples in requests, {outside:,} outside)")
    return output, result, shares, in_requests, round_trips(target)


def where_time_goes(raw: Path) -> tuple[Counter[str], int, int]:
    """Samples in requests by category, the number of them, and the number of samples outside requests."""
    shares: Counter[str] = Counter()
    outside = 0
    for frames, count in stacks(raw):
        if any(function.endswith("Worker.handle") and file.startswith("gunicorn/workers/") for function, file in frames):
            shares[category(frames)] += count
        else:
            outside += count
    return shares, sum(shares.values()), outside


def stacks(raw: Path):
    """py-spy's collapsed stacks (--format raw): each stack's frames as (function, file), and its samples."""
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        yield [_frame(frame) for frame in stack.split(";") if not frame.startswith("process ")], int(count)


def share_rows(shares: Counter[str], total: int) -> list[tuple[str, str, str]]:
    """A row a category, largest first; those under SHOWN_SHARE of `total` summed into one."""
    shown = [(name, count) for name, count in shares.most_common() if count >= SHOWN_SHARE * total]
    lines = [(f"    {name}", f"{count / total:.1%}", f"{count:,} samples") for name, count in shown]
    rest = total - sum(count for _, count in shown)
    if rest:
        lines.append((f"    the rest (each < {SHOWN_SHARE:.1%})", f"{rest / total:.1%}", f"{rest:,} samples"))
    return lines


def _frame(frame: str) -> tuple[str, str]:
    """py-spy's `function (file:line)` as (function, file)."""
    function, _, where = frame.rpartition(" (")
    return function, where.rstrip(")").rsplit(":", 1)[0]


def category(frames: list[tuple[str, str]]) -> str:
    """Where a sample's time goes: the leaf-most service/ frame, and the libraries it is waiting in underneath.

    A thread waiting for the GIL is sampled where it waits: after a socket read, in the library that read."""
    owners = [index for index, (_, file) in enumerate(frames) if file.startswith("service/")]
    owner = f"{frames[owners[-1]][0]} ({frames[owners[-1]][1][len('service/'):]})" if owners else None
    under = {file.split("/", 1)[0] for _, file in frames[owners[-1] + 1 if owners else 0:]}
    files = [file for _, file in frames]
    if any(file.startswith("sqlalchemy/pool/") for _, file in frames[owners[-1] if owners else 0:]):
        return "PostgreSQL: pool checkout + pre-ping"
    if "psycopg" in under:
        return f"PostgreSQL round trips: {owner or 'outside service/ (teardown)'}"
    if under & {"kombu", "celery"}:
        return "Redis: Celery publish (kombu)"
    if "redis" in under or "limits" in under:
        return "Redis: rate limiter (flask_limiter)" if "limits" in under else f"Redis: {owner}"
    if "sqlalchemy" in under:
        return "SQLAlchemy without a socket wait (ORM, SQL compile)"
    if any(file.startswith("jinja2/") for file in files):
        return "template rendering (Jinja2)"
    if any(file.startswith(("json/", "flask/json/")) for file in files):
        return "JSON encoding (responses, access log)"
    if any(file.startswith("logging/") for file in files):
        return "logging (the access log, its handler's lock)"
    if owner:
        return "other service/ code"
    if any(file == "gunicorn/http/wsgi.py" and function.startswith("Response.") for function, file in frames):
        return "gunicorn: the response's headers and socket writes"
    if any(file.startswith("gunicorn/http/") for file in files):
        return "gunicorn: reading and parsing the request"
    if files and files[-1].startswith(("flask/", "werkzeug/", "gunicorn/")):
        return "Flask/Werkzeug/gunicorn request handling"
    return "everything else (stdlib, other libraries)"


def round_trips(target: WebTarget) -> dict:
    """The route's round trips to PostgreSQL, counted in the test client against the bench's database."""
    command = [sys.executable, str(HERE / "round_trips.py"), "--method", target.method, "--path", target.path,
               "--requests", "100"]
    command += [f"--header={header}" for header in target.headers]
    if target.body is not None:
        command += ["--data", target.body, "--header=Content-Type: application/x-www-form-urlencoded"]
    output = subprocess.run(command, env=app_env(), cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def miss_rows(target: WebTarget, result: dict, floor: dict, raw: Path, profiled: dict, shares: Counter[str],
              in_requests: int, trips: dict) -> list[tuple[str, str, str]]:
    """The measured breakdown of a missed target: samples by category, round trips by statement."""
    needed = result["rate"] / (target.ratio * floor["rate"])
    head = (f"  {target.name}, not met: profile", f"{in_requests:,} samples in requests (py-spy --idle, 250/s, "
            f"{profiled['rate']:,.0f} req/s while sampled)",
            f"raw: {raw.relative_to(ROOT)}; at 16 connections ≥ {target.ratio}× needs a request in "
            f"{min(needed, 1):.0%} of its measured time")
    lines = [head] + share_rows(shares, in_requests)
    requests = trips["requests"]
    statements = trips["statements"]
    total = sum(statement["round_trips"] for statement in statements.values()) / requests
    statuses = ", ".join(f"{count} × {status}" for status, count in trips["statuses"].items())
    lines.append(("    PostgreSQL round trips per request", f"{total:g}",
                  f"counted in libpq's trace over {requests} test-client requests ({statuses})"))
    lines += [(f"      {name}", f"{statement['round_trips'] / requests:g}", "; ".join(statement["issuers"]))
              for name, statement in statements.items()]
    return lines


def bench_studio(quick: bool) -> None:
    count, runs, recipients = (20_000, 100, 2_000) if quick else (1_000_000, 100, 10_000)
    seconds = 5 if quick else 10
    say(f"seeding {count:,} subscribers, their events and {runs} digest runs")
    seeded = seed_audience(count, runs, recipients)
    rows.append((f"studio seed: {count:,} subscribers, {runs} runs × {recipients:,} deliveries",
                 f"{seeded['seeded']:.1f} s (INSERT ... SELECT)",
                 f"first roll-up of the daily counts {seeded['first_roll_up']:.1f} s, the next {seeded['next_roll_up'] * 1000:.0f} ms"))
    cookie = f"Cookie: kr_studio={staff_cookie()}"
    middle = (seeded["first_id"] + seeded["last_id"]) // 2
    pages = [
        ("dashboard (90 days, headline figures, 4 charts)", "/studio/"),
        (f"subscriber search (q=reader{middle // 10})", f"/studio/subscribers?q=reader{middle // 10}"),
        (f"deep list page (~page {count // 50 - 20:,}, confirmed only)",
         f"/studio/subscribers?status=confirmed&after={seeded['first_id'] + 1000}"),
        (f"a subscriber's page ({runs} digests: counted, the latest 20 listed)", f"/studio/subscribers/{seeded['first_id'] + 1}"),
    ]
    with gunicorn("wsgi:app", app_env(), ROOT) as url:
        results = [(name, wrk(url + path, seconds, "-H", cookie)) for name, path in pages]
    for name, result in results:
        note = "target p99 < 200 ms"
        if result["non2xx"] or result["errors"]:
            note += f"; non-2xx {result['non2xx']} {result['errors']}"
        rows.append((f"studio: {name}", _web(result), note))
    bench_subscriber_tools(quick, seeded)


POSTS_SQL = """
INSERT INTO posts (slug, title, body, body_html, teaser_html, visibility, published, published_at, created_at,
                   updated_at)
SELECT 'bench-post-' || n, 'Bench post ' || n, 'Words.', '<p>Words.</p>', '<p>Words.</p>',
       (ARRAY['public', 'subscribers', 'metered', 'popup'])[1 + n % 4], true,
       now() - interval '2 days' - n * interval '1 hour', now(), now()
FROM generate_series(1, %(count)s) AS n;
ANALYZE posts;
"""


def seed_posts(total: int) -> dict[str, str]:
    """Published posts up to `total` (the demo's and bench ones); the archive's first page, page 500 (or the last),
    and the feed."""
    import psycopg

    host = PG_ADMIN.split("://", 1)[1].rsplit("/", 1)[0]
    with psycopg.connect(f"postgresql://{host}/{DATABASE}", autocommit=True) as connection:
        existing = connection.execute("SELECT count(*) FROM posts WHERE published").fetchone()[0]
        if total > existing:
            connection.execute("DELETE FROM posts WHERE slug LIKE 'bench-post-%%'")
            existing = connection.execute("SELECT count(*) FROM posts WHERE published").fetchone()[0]
            connection.execute(POSTS_SQL.replace("%(count)s", str(total - existing)))
        page = min(500, (total - 1) // 20 + 1)
        urls = {"archive, first page": "/", "feed": "/feed.xml"}
        if page > 1:
            micros, post_id = connection.execute(
                "SELECT (extract(epoch FROM published_at) * 1000000)::bigint, id FROM posts WHERE published "
                "ORDER BY published_at DESC, id DESC OFFSET %s LIMIT 1", ((page - 1) * 20 - 1,)).fetchone()
            urls[f"archive, page {page}"] = f"/?before={micros}-{post_id}"
    return urls


def bench_archive(quick: bool) -> None:
    """The archive's pages and the feed cost the same with 10 and with 10,000 posts (page memory off, so each
    request renders its page)."""
    seconds = 5 if quick else 10
    results: dict[int, dict] = {}
    for total in (10, 50, 10_000):  # 50: a full first page and a full feed, as with 10,000
        urls = seed_posts(total)
        with gunicorn("wsgi:app", app_env(KEEPREADING_PAGE_CACHE_SECONDS="0"), ROOT) as url:
            results[total] = {name: wrk(url + path, seconds) for name, path in urls.items()}
    for name, large in results[10_000].items():
        small, full = results[10].get(name), results[50].get(name)
        figures = " / ".join(f"{r['rate']:,.0f}" if r else "–" for r in (small, full, large))
        if full:
            note = f"10,000 posts {large['rate'] / full['rate']:.2f}× 50 posts (the same posts shown)"
        else:
            note = f"{large['rate'] / results[10_000]['archive, first page']['rate']:.2f}× page 1 of 10,000 posts"
        rows.append((f"{name}: 10 / 50 / 10,000 posts", f"{figures} req/s (p99 at 10,000: {large['p99']:.1f} ms)",
                     f"{note}; target the same (≥ 0.9×)"))


def measured_command(*args: str) -> tuple[float, float, str]:
    """Seconds and peak RSS (MB) of a `keepreading` command, read by a parent of its own; and its output."""
    code = ("import resource, subprocess, sys, time\n"
            "started = time.perf_counter()\n"
            "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "print(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n"
            "print(done.stdout.strip()[-300:], done.stderr.strip()[-300:])")
    output = subprocess.run([sys.executable, "-c", code, str(VENV_BIN / "keepreading"), *args], env=app_env(),
                            cwd=ROOT, check=True, capture_output=True, text=True).stdout
    first, rest = output.split("\n", 1)
    seconds, rss = (float(value) for value in first.split())
    return seconds, rss, rest.strip()


def bench_subscriber_tools(quick: bool, seeded: dict) -> None:
    """The admin API's keyset pages at the top and the bottom of the list; CSV export and import through the CLI."""
    seconds = 5 if quick else 10
    auth = f"Authorization: Bearer {ADMIN_TOKEN}"
    with gunicorn("wsgi:app", app_env(), ROOT) as url:
        first, deep, ratios = wrk_alternating(f"{url}/api/v1/subscribers?after={seeded['last_id'] + 1}&per_page=50",
                                              f"{url}/api/v1/subscribers?after={seeded['first_id'] + 100}&per_page=50",
                                              max(2, seconds // 2), "-H", auth)
    count = seeded["last_id"] - seeded["first_id"] + 1
    rows.append((f"API: GET /api/v1/subscribers?after=, first vs last page of {count:,}",
                 f"{first['rate']:,.0f} → {deep['rate']:,.0f} req/s (p99 {first['p99']:.1f} → {deep['p99']:.1f} ms)",
                 f"deep {deep['rate'] / first['rate']:.2f}× the first (medians of {len(ratios)} alternating windows, "
                 f"by round {ratios[0]:.2f}–{ratios[-1]:.2f}×); target the same (≥ 0.9×)"))
    target = CACHE / "export.csv"
    took, rss, _ = measured_command("subscribers", "export", str(target))
    exported = sum(1 for _ in target.open()) - 1
    rows.append((f"CSV export (CLI), {exported:,} rows", f"{took:.1f} s, peak RSS {rss:.0f} MB",
                 "streams: memory does not follow the rows"))
    small = CACHE / "export-small.csv"
    with target.open() as source, small.open("w") as out:
        for _, line in zip(range(1_001), source, strict=False):
            out.write(line)
    imports = 20_000 if quick else 1_000_000
    source = CACHE / "import.csv"
    with source.open("w") as out:
        out.write("email,name,status,subscribed_at\n")
        for n in range(imports):
            out.write(f"imported{n}@example.net,Imported {n},{'confirmed' if n % 4 else 'pending'},2025-06-01T00:00:00Z\n")
    took, rss, said = measured_command("subscribers", "import", str(source))
    small_took, small_rss, _ = measured_command("subscribers", "import", str(small))  # 1,000 known rows: the floor
    rows.append((f"CSV import (CLI), {imports:,} new rows", f"{took:.1f} s ({imports / took:,.0f} rows/s), "
                 f"peak RSS {rss:.0f} MB (a 1,000-row import: {small_rss:.0f} MB)",
                 f"{said[:60]}; target minutes, bounded memory"))


def _web(result: dict) -> str:
    return f"{result['rate']:,.0f} req/s, p50 {result['p50']:.2f} ms, p99 {result['p99']:.2f} ms"


def print_table() -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    line = "+".join("-" * (w + 2) for w in widths)
    print("\n" + line)
    for row in rows:
        print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10,000 subscribers (studio: 20,000), short web runs")
    parser.add_argument("--only", choices=["digests", "pacing", "web", "archive", "studio", "bursts", "retention"],
                        help="run one part")
    parser.add_argument("--profile", action="store_true",
                        help="sample the Celery worker with py-spy during each digest run (pip install py-spy)")
    options = parser.parse_args()
    global PROFILE
    PROFILE = options.profile
    fetch_tools()
    say(f"{os.cpu_count()} cores; PostgreSQL {PG_ADMIN}, Redis {REDIS}")
    reset_database()
    if options.only in (None, "digests"):
        bench_digests(options.quick)
    if options.only in (None, "pacing"):
        bench_pacing(options.quick)
    if options.only in (None, "web"):
        if options.only == "web":
            seed_subscribers(1_000)
        bench_web(options.quick)
    if options.only in (None, "archive"):
        bench_archive(options.quick)
    if options.only in (None, "studio"):
        bench_studio(options.quick)
    if options.only in (None, "bursts"):
        bench_bursts(options.quick)
    if options.only in (None, "retention"):
        bench_retention(options.quick)
    print_table()


if __name__ == "__main__":
    main()
