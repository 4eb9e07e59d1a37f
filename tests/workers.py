"""Real Celery worker processes for the integration tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """`celery -A worker worker` in a child process, configured through KEEPREADING_* variables."""

    def __init__(self, env: dict[str, str], concurrency: int = 2, beat: bool = False, log: Path | None = None):
        self.env = env
        self.concurrency = concurrency
        self.beat = beat
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        command = [sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel", "INFO",
                   "--concurrency", str(self.concurrency), "--without-gossip", "--without-mingle",
                   "--without-heartbeat", "-n", f"test-{os.getpid()}-{time.monotonic_ns()}@%h"]
        if self.beat:
            command += ["--beat", "--schedule", str(Path(self.env["KEEPREADING_INSTANCE_PATH"]) / "beat-schedule")]
        output = open(self.log, "ab") if self.log else subprocess.DEVNULL
        environment = {k: v for k, v in os.environ.items() if not k.startswith("KEEPREADING_")}
        environment.update(self.env)
        self.process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        if self.log:
            output.close()
        return self

    def kill(self) -> None:
        """SIGKILL the whole worker: the main process and its pool children, with no clean-up."""
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

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None
