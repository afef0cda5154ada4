"""Every use forkmem makes of Airflow's private API, in one place, behind one version check.

Airflow gives no public hook for what the integration does, so it relies on internals that may
change in any release: the manager's ``_create_process``, ``_collect_results``,
``_run_parsing_loop``, ``_processors`` and ``_file_queue``; the local names of
``WatchedSubprocess.start()`` at its ``os.fork()`` and the ``_fork_main`` it calls in the child;
``_pre_import_airflow_modules`` and ``_parse_file`` of the parse child; the comms frame a
child sends; ``DagProcessorJobRunner._execute``. Nothing outside this module names one of them.
All of them are known to hold from `MIN_AIRFLOW_VERSION` up to `KNOWN_UP_TO`; on a
newer Airflow each one that is gone makes forkmem fall back to Airflow's own behaviour, as on an
older one.

Airflow is imported only when a function here needs it; importing this module never does.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
from typing import TYPE_CHECKING, Any

from forkmem.errors import UnsupportedRuntime

if TYPE_CHECKING:
    import argparse
    import socket
    from collections.abc import Callable
    from types import CodeType, FrameType

__all__ = [
    "KNOWN_UP_TO",
    "MIN_AIRFLOW_VERSION",
    "ForkRequest",
    "add_dag_processor_arguments",
    "airflow",
    "airflow_version",
    "build_manager_class",
    "fork_main",
    "fork_request",
    "parse_and_encode",
    "pre_import",
    "run_job",
    "start_code",
]

MIN_AIRFLOW_VERSION: tuple[int, int, int] = (3, 1, 7)
"""The oldest apache-airflow-core this integration runs on."""

KNOWN_UP_TO: tuple[int, int] = (3, 3)
"""The newest Airflow minor release whose private API this module was checked against."""

# The locals of WatchedSubprocess.start() at its os.fork(), the same in Airflow 3.1.7-3.3.
_CHILD_SOCKETS = ("child_requests", "child_stdout", "child_stderr", "child_logs")

_logger = logging.getLogger("forkmem.airflow")

# Set by the first successful check: the private API is only touched on a supported Airflow.
_checked: tuple[int, int, int] | None = None

# (child socket fds in _fork_main's order, the target function, new_process_group)
ForkRequest = tuple[list[int], Any, bool]


def airflow(module: str) -> Any:
    """Import an Airflow module. Airflow is typed loosely and differs between versions: it is
    treated as dynamic, on purpose."""
    return importlib.import_module(module)


def airflow_version() -> tuple[int, int, int]:
    """The installed apache-airflow-core version as ``(major, minor, micro)``.

    Raises [`forkmem.UnsupportedRuntime`][forkmem.UnsupportedRuntime] when Airflow is not installed
    or older than `MIN_AIRFLOW_VERSION`.
    """
    try:
        module = airflow("airflow")
    except ImportError as exc:
        raise UnsupportedRuntime(
            "forkmem.integrations.airflow needs apache-airflow-core "
            f"{'.'.join(map(str, MIN_AIRFLOW_VERSION))} or newer: pip install 'forkmem[airflow]'"
        ) from exc
    text = str(getattr(module, "__version__", ""))
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        raise UnsupportedRuntime(f"cannot read the Airflow version from {text!r}")
    version = (int(match[1]), int(match[2]), int(match[3] or 0))
    if version < MIN_AIRFLOW_VERSION:
        raise UnsupportedRuntime(
            f"forkmem.integrations.airflow supports apache-airflow-core "
            f"{'.'.join(map(str, MIN_AIRFLOW_VERSION))} and newer; this is {text}"
        )
    return version


def _require() -> tuple[int, int, int]:
    """The version check every function below passes first (once per process)."""
    global _checked
    if _checked is None:
        version = airflow_version()
        if version[:2] > KNOWN_UP_TO:
            _logger.warning(
                "forkmem: Airflow %s is newer than the internals forkmem knows (up to %s); "
                "where one is gone, Airflow's own behaviour applies",
                ".".join(map(str, version)),
                ".".join(map(str, KNOWN_UP_TO)),
            )
        _checked = version
    return _checked


# --------------------------------------------------------------------------------------------
# The manager


def build_manager_class(make_session: Callable[[Any], Any]) -> type[Any]:
    """The ``DagFileProcessorManager`` subclass that drives a forkmem session.

    ``make_session(forkmem_options)`` gives the session of one manager: ``apply(version)``
    before the parsing loop, ``close()`` after it, ``routing(path)`` around each child's
    creation, ``note_children``/``drain``/``stop_server`` around each collection.
    """
    version = _require()
    base: Any = airflow("airflow.dag_processing.manager").DagFileProcessorManager
    # Airflow 3.3 made the set-up before the parsing loop an overridable method.
    has_before_run = callable(getattr(base, "before_run", None))

    class ForkmemDagFileProcessorManager(base):  # type: ignore[misc]
        """Airflow's ``DagFileProcessorManager`` with forkmem's set-up before the parsing loop."""

        # Log under Airflow's own logger name, so logging configuration aimed at the manager
        # still applies.
        _logger_name = "airflow.dag_processing.manager.DagFileProcessorManager"

        def __init__(self, *args: Any, forkmem_options: Any = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.forkmem = make_session(forkmem_options)

        if has_before_run:

            def before_run(self) -> None:
                super().before_run()
                self.forkmem.apply(version)

            def after_run(self) -> None:
                try:
                    super().after_run()
                finally:
                    self.forkmem.close()

        else:
            # 3.1.7-3.2: run() does the set-up, freezes, then calls this: the same moment.
            def _run_parsing_loop(self) -> Any:
                self.forkmem.apply(version)
                try:
                    return super()._run_parsing_loop()
                finally:
                    self.forkmem.close()

        def _create_process(self, dag_file: Any) -> Any:
            path = getattr(dag_file, "absolute_path", None)
            with self.forkmem.routing(None if path is None else os.fspath(path)):
                return super()._create_process(dag_file)

        def _collect_results(self, *args: Any, **kwargs: Any) -> Any:
            processors = getattr(self, "_processors", {})
            self.forkmem.note_children(processors)
            try:
                return super()._collect_results(*args, **kwargs)
            finally:
                processors = getattr(self, "_processors", {})
                running = [getattr(p, "pid", -1) for p in processors.values()]
                self.forkmem.drain(running)
                if not processors and not getattr(self, "_file_queue", None):
                    self.forkmem.stop_server()  # the round is over

    return ForkmemDagFileProcessorManager


# --------------------------------------------------------------------------------------------
# Forking a parse child elsewhere (the fork server)


def start_code() -> CodeType:
    """The code object of ``WatchedSubprocess.start``, whose frame forks each parse child."""
    _require()
    supervisor = airflow("airflow.sdk.execution_time.supervisor")
    code: CodeType = supervisor.WatchedSubprocess.start.__func__.__code__
    return code


def fork_request(frame: FrameType, code: CodeType | None) -> ForkRequest | None:
    """What a fork from ``frame`` would hand the child, if ``frame`` runs ``code`` and the
    child can be reproduced elsewhere; else None (Airflow forks it itself)."""
    if code is None or frame.f_code is not code:
        return None
    names = frame.f_locals
    if names.get("use_exec"):
        return None
    try:
        fds = [names[name].fileno() for name in _CHILD_SOCKETS]
    except (KeyError, AttributeError, OSError):
        return None
    return fds, names.get("target"), bool(names.get("new_process_group", False))


def fork_main(sockets: list[socket.socket], target: Any) -> None:  # pragma: no cover - a child
    """Run a parse child's body, as ``WatchedSubprocess.start`` does just after its fork."""
    _require()
    requests, stdout, stderr, logs = sockets
    supervisor = airflow("airflow.sdk.execution_time.supervisor")
    supervisor._fork_main(requests, stdout, stderr, logs.fileno(), target)


def pre_import(path: str, log: Any) -> bool:
    """Airflow's own pre-import of a DAG file's Airflow modules; False where there is none."""
    _require()
    processor = airflow("airflow.dag_processing.processor")
    function = getattr(processor, "_pre_import_airflow_modules", None)
    if function is None:
        return False
    function(path, log)
    return True


# --------------------------------------------------------------------------------------------
# Parsing in the manager (the rehearsal)


def parse_and_encode(path: str, folder: str, log: Any) -> str | None:
    """Parse one DAG file with the parse child's code and encode the result as a child would.

    Returns None on success, else what went wrong (no DAG, import errors). The caller restores
    the environment and ``sys.path`` afterwards.
    """
    _require()
    from pathlib import Path

    processor = airflow("airflow.dag_processing.processor")
    comms = airflow("airflow.sdk.execution_time.comms")
    os.environ["_AIRFLOW_PROCESS_CONTEXT"] = "client"  # what the child sets first
    request = processor.DagFileParseRequest(
        file=path,
        bundle_path=Path(folder),
        bundle_name="forkmem",
        callback_requests=[],
    )
    result = processor._parse_file(request, log)
    if result is None or not result.serialized_dags or result.import_errors:
        return f"no DAG ({getattr(result, 'import_errors', None)})"
    # The child's last step: encode the result into a frame for the manager
    # (3.3 builds it in _make_frame, 3.1.7 inline in send).
    make_frame = getattr(comms.CommsDecoder(socket=None), "_make_frame", None)
    if make_frame is not None:
        frame = make_frame(result)
    else:
        frame = comms._RequestFrame(id=0, body=result.model_dump())
    frame.as_bytes()
    return None


# --------------------------------------------------------------------------------------------
# The dag-processor command


def add_dag_processor_arguments(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` the arguments of Airflow's own ``dag-processor`` command."""
    _require()
    for command in airflow("airflow.cli.cli_config").core_commands:
        if getattr(command, "name", None) == "dag-processor":
            for arg in command.args:
                arg.add_to_parser(parser)
            return
    raise UnsupportedRuntime("this Airflow has no 'dag-processor' command")  # pragma: no cover


def run_job(manager: Any) -> Callable[[], None]:
    """The callable that runs a dag-processor job around ``manager``, as Airflow's CLI does."""
    _require()
    runner_mod = airflow("airflow.jobs.dag_processor_job_runner")
    job_mod = airflow("airflow.jobs.job")
    runner = runner_mod.DagProcessorJobRunner(job=job_mod.Job(), processor=manager)

    def run() -> None:
        job_mod.run_job(job=runner.job, execute_callable=runner._execute)

    return run


def process_context() -> str | None:
    """The ``_AIRFLOW_PROCESS_CONTEXT`` variable the parse child sets (restored by callers)."""
    return os.environ.get("_AIRFLOW_PROCESS_CONTEXT")


def restore_process_context(saved: str | None) -> None:
    """Put ``_AIRFLOW_PROCESS_CONTEXT`` back as `process_context()` found it."""
    if saved is None:
        os.environ.pop("_AIRFLOW_PROCESS_CONTEXT", None)
    else:
        os.environ["_AIRFLOW_PROCESS_CONTEXT"] = saved
