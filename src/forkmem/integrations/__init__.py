"""Ready-made forkmem setups for servers that fork workers.

Each submodule imports its framework only when imported itself, so ``import forkmem`` never pulls
in gunicorn, Celery or Airflow:

- `forkmem.integrations.gunicorn`: server hooks for ``gunicorn.conf.py``.
- `forkmem.integrations.celery`: ``install(app)`` for the prefork pool.
- `forkmem.integrations.airflow`: a dag-processor entrypoint.

Worker pools built on `multiprocessing` live in `forkmem.pool`.
"""
