"""`make run`: the development server with a Celery worker and beat, on the embedded default.

It records development mode and its BASE_URL in the instance folder, so `keepreading ...` run from any other
shell or folder works on the same service; it stops its worker and beat however it is stopped (Ctrl-C,
SIGTERM, an error).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from werkzeug.serving import make_server

from . import config, create_app

HOST = "127.0.0.1"


def main() -> None:
    signal.signal(signal.SIGTERM, _stop)
    # Ctrl-C stops it even when started from a background job, where the shell hands it SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    port = int(os.environ.get("PORT", "5000"))
    listener = _listen(port)
    instance = config.instance_path()
    config.record(instance, ENV="development", BASE_URL=os.environ.get("KEEPREADING_BASE_URL") or f"http://{HOST}:{port}")
    for command in (["db", "upgrade"], ["demo", "--if-empty"], ["staff", "ensure-first"]):
        subprocess.run([sys.executable, "-m", "service.cli", *command], check=True)
    app = create_app()
    server = make_server(HOST, port, app, threaded=True, fd=listener.fileno())
    helpers: list[subprocess.Popen] = []
    try:
        helpers.append(_celery("worker", "--concurrency", "1"))
        helpers.append(_celery("beat"))
        print(f"\n  keepreading is serving {app.config['PUBLICATION_NAME']} at {app.config['BASE_URL']}/")
        print(f"  admin API token: {app.config['ADMIN_TOKEN']}")
        print(f"  emails are written to {Path(app.instance_path) / 'outbox'} (unless KEEPREADING_SMTP_URL is set)\n", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        listener.close()
        for helper in helpers:
            _end(helper)


def _listen(port: int) -> socket.socket:
    """Bind before anything is printed or started, so a taken port is one line and nothing left behind."""
    try:
        return socket.create_server((HOST, port))
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno is not None else str(error)
        print(f"keepreading: cannot listen on {HOST}:{port} ({reason}); "
              f"start on another port, e.g. PORT={port + 1} make run", file=sys.stderr)
        raise SystemExit(1) from None


def _celery(*arguments: str) -> subprocess.Popen:
    """A Celery process in its own process group, so stopping it also stops the pool children it forks."""
    command = [sys.executable, "-m", "celery", "-A", "service.deploy.worker", *arguments, "--loglevel", "INFO"]
    return subprocess.Popen(command, process_group=0)


def _stop(_signum, _frame) -> None:
    raise SystemExit(0)  # SIGTERM: leave through the same `finally` as Ctrl-C


def _end(helper: subprocess.Popen) -> None:
    """SIGTERM to it (Celery's warm shutdown stops its pool); SIGKILL to whatever of its group is left."""
    helper.terminate()
    try:
        helper.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):  # raised when nothing of the group is left
        os.killpg(helper.pid, signal.SIGKILL)
    helper.wait()


if __name__ == "__main__":
    main()
