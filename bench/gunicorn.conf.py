"""gunicorn settings recommended for a 2-core machine (used by `make bench`, fine for production)."""
import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# CPU-bound Flask views: one process per core plus one, each with a few threads to overlap DB waits.
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count() + 1))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", 4))
keepalive = 5
accesslog = None
errorlog = "-"
loglevel = "warning"
preload_app = True


def pre_fork(server, worker):
    """Move the preloaded app's objects out of the collector's sight, so a full collection does not
    walk every imported library, and the forked workers keep sharing those memory pages."""
    import gc

    gc.freeze()
