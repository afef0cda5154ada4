"""Ready-made forkmem setups for servers that fork workers.

Each submodule imports its framework only when imported itself, so ``import forkmem`` never pulls
in gunicorn, Celery or Airflow:

- :mod:`forkmem.integrations.gunicorn`: server hooks for ``gunicorn.conf.py``.
- :mod:`forkmem.integrations.celery`: ``install(app)`` for the prefork pool.
- :mod:`forkmem.integrations.airflow`: a dag-processor entrypoint.

Worker pools built on :mod:`multiprocessing` live in :mod:`forkmem.pool`.
"""
