"""Airflow dag-processor with forkmem: freeze (or warm up) once before the parsing loop, and
measure every parse child.

Airflow's dag-processor forks one child per DAG file it parses (``os.fork()`` in the task-sdk
supervisor). Whatever the manager built before the loop is shared with those children until
something writes to it: the collector's GC headers, reference counts, lazily computed str hashes.
Airflow 3.3 already ends ``DagFileProcessorManager.before_run()`` with a bare ``gc.freeze()``;
this module replaces it with a full collection and a freeze (so no garbage is frozen forever),
or with [`forkmem.warmup()`][forkmem.warm.warmup] (``immortalize=True`` on CPython 3.12+), warns
once about missing bytecode, and logs each parse child's private memory when it exits. On request it
also parses a built-in DAG first (``--forkmem-rehearse``) and forks the children from a quiet copy
of the manager (``--forkmem-fork-server``).

Run it like ``airflow dag-processor``, with the same arguments::

    python -m forkmem.integrations.airflow dag-processor [--forkmem-warmup] [--forkmem-immortalize]
        [--forkmem-rehearse] [--forkmem-fork-server]

Supported Airflow: apache-airflow-core 3.1.7 and newer. From 3.3 forkmem hooks the documented
``before_run()``/``after_run()``; on 3.1.7-3.2 (which have no ``before_run``) it runs the same
steps at the start of the parsing loop, just after Airflow's own freeze.

Airflow is imported only when a function of this package needs it; ``import forkmem`` never does.
The package: ``options`` ([`AirflowOptions`][forkmem.integrations.airflow.AirflowOptions]),
``session`` (the state of one manager: the stats file, the parse-child meter, the freeze block, the
fork server of each round), ``manager`` (the ``DagFileProcessorManager`` subclass), ``cli`` (the
entrypoint) and ``_private_api``, the only module that touches Airflow's internals.
"""

from __future__ import annotations

from forkmem.integrations.airflow._private_api import MIN_AIRFLOW_VERSION, airflow_version
from forkmem.integrations.airflow.cli import main
from forkmem.integrations.airflow.manager import manager_class
from forkmem.integrations.airflow.options import AirflowOptions, ParseChildMemory

__all__ = [
    "MIN_AIRFLOW_VERSION",
    "AirflowOptions",
    "ParseChildMemory",
    "airflow_version",
    "main",
    "manager_class",
]
