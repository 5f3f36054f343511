"""Example Gunicorn config for development and tests.

Production uses the one the Ansible app role templates (workers sized from the
host's vCPUs); this one shows the same hooks. Run: gunicorn -c gunicorn.conf.py
"""

import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path

wsgi_app = "shop.main:app"
# uvicorn-worker's class (`uvicorn.workers` is deprecated), which uses uvloop and
# httptools when they are installed, and they are; shop_worker adds a shutdown that
# reads requests already accepted before it closes their connections.
worker_class = "shop_worker.UvicornWorker"
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
# Workers are started after the fork, not preloaded: each builds its own engine
# and Redis client in the lifespan.
preload_app = False
graceful_timeout = 20
timeout = 30
keepalive = 5
accesslog = os.environ.get("GUNICORN_ACCESSLOG")  # off unless asked: nginx logs requests
errorlog = "-"

# prometheus_client picks multiprocess mode at import time from this variable,
# so it must be in the environment before the workers start.
os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", str(Path(tempfile.gettempdir()) / "shop-prometheus")
)


def on_starting(server):
    # Files left by a previous master would be summed into the new counters.
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)


def child_exit(server, worker):
    # Drops the dead worker's live gauges (pool use) from the sums.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
