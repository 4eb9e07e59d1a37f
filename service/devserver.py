"""`make run`: the web server and a Celery worker with beat, on the embedded default."""
from __future__ import annotations

import os
import subprocess
import sys

from . import create_app


def main() -> None:
    host, port = "127.0.0.1", int(os.environ.get("PORT", "5000"))
    os.environ.setdefault("KEEPREADING_BASE_URL", f"http://{host}:{port}")
    app = create_app()
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "--beat", "--loglevel", "info",
         "--concurrency", "1", "--schedule", os.path.join(app.instance_path, "celerybeat-schedule")],
        env={**os.environ},
    )
    print(f"\n  keepreading is serving {app.config['PUBLICATION_NAME']} at http://{host}:{port}/")
    print(f"  admin API token: {app.config['ADMIN_TOKEN']}")
    print(f"  emails are written to {os.path.join(app.instance_path, 'outbox')}\n", flush=True)
    try:
        app.run(host=host, port=port, use_reloader=False)
    finally:
        worker.terminate()
        worker.wait(timeout=20)


if __name__ == "__main__":
    main()
