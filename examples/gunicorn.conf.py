"""gunicorn configuration with forkmem: run ``gunicorn -c examples/gunicorn.conf.py``.

The one forkmem line is the import: it defines gunicorn's ``when_ready`` (freeze the preloaded
app in the master), ``pre_fork``/``post_fork`` (child hooks, per-worker memory sampler),
``worker_exit`` and ``child_exit`` (log each worker's peak private memory) hooks.
"""

import os

from forkmem.integrations.gunicorn import *  # noqa: F403

# forkmem.integrations.gunicorn.configure(warmup=True)  # optional: forkmem.warmup() instead

chdir = os.path.dirname(os.path.abspath(__file__))
wsgi_app = "gunicorn_app:app"
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = 4
worker_class = "sync"
preload_app = True  # load the app once, in the master, so the workers can share it
loglevel = "info"
