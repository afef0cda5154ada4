"""gunicorn with forkmem, recycling workers by the memory they own: ``gunicorn -c THIS``.

A worker whose private memory (USS) stays above 64 MiB for two samples finishes its request
and exits; the arbiter forks a fresh one from the frozen master. Healthy workers, whose RSS is
mostly the 150 MiB they share with the master, are left alone.
"""

import os

from forkmem.integrations import gunicorn as forkmem_hooks
from forkmem.integrations.gunicorn import *  # noqa: F403

_limit = os.environ.get("FORKMEM_MAX_PRIVATE_MEMORY", "64 MiB")
forkmem_hooks.configure(
    max_private_memory=None if _limit == "off" else _limit,
    max_private_memory_hard=os.environ.get("FORKMEM_MAX_PRIVATE_MEMORY_HARD"),
    recycle_measure=os.environ.get("FORKMEM_RECYCLE_MEASURE", "uss"),
)

chdir = os.path.dirname(os.path.abspath(__file__))
wsgi_app = "recycle_app:app"
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "sync")
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
preload_app = True
loglevel = "info"
