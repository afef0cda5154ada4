"""The ``DagFileProcessorManager`` subclass that applies forkmem, built on first use so that
importing this package needs no Airflow."""

from __future__ import annotations

from typing import Any

from forkmem.errors import InvalidArgument
from forkmem.integrations.airflow import _private_api
from forkmem.integrations.airflow.options import AirflowOptions
from forkmem.integrations.airflow.session import Session

__all__ = ["manager_class"]

_manager_cls: type[Any] | None = None


def _make_session(options: AirflowOptions | None) -> Session:
    if options is None:
        options = AirflowOptions.from_env()
    if not isinstance(options, AirflowOptions):
        raise InvalidArgument(
            f"forkmem_options must be an AirflowOptions, not {type(options).__name__}"
        )
    return Session(options)


def manager_class() -> type[Any]:
    """The ``DagFileProcessorManager`` subclass that applies forkmem (built on first call).

    It takes the manager's own keyword arguments plus ``forkmem_options``
    (an [`AirflowOptions`][forkmem.integrations.airflow.AirflowOptions]; default
    `AirflowOptions.from_env()`). Use it where Airflow's
    CLI builds its manager::

        manager = manager_class()(max_runs=-1, forkmem_options=AirflowOptions(warmup=True))
        runner = DagProcessorJobRunner(job=Job(), processor=manager)
        run_job(job=runner.job, execute_callable=runner._execute)

    Raises [`forkmem.UnsupportedRuntime`][forkmem.UnsupportedRuntime] without apache-airflow-core
    3.1.7+.
    """
    global _manager_cls
    if _manager_cls is None:
        _private_api.airflow_version()
        cls = _private_api.build_manager_class(_make_session)
        cls.__module__ = "forkmem.integrations.airflow"
        _manager_cls = cls
    return _manager_cls
