"""Airflow dag-processor with forkmem: freeze (or warm up) once before the parsing loop, and
measure every parse child.

Airflow's dag-processor forks one child per DAG file it parses (``os.fork()`` in the task-sdk
supervisor). Whatever the manager built before the loop is shared with those children until
something writes to it: the collector's GC headers, reference counts, lazily computed str hashes.
Airflow 3.3 already ends ``DagFileProcessorManager.before_run()`` with a bare ``gc.freeze()``;
this module replaces it with a full collection and a freeze (so no garbage is frozen forever),
or with :func:`forkmem.warmup` (``immortalize=True`` on CPython 3.12/3.13), warns once about
missing bytecode, and logs each parse child's private memory when it exits. On request it also
parses a built-in DAG first (``--forkmem-rehearse``) and forks the children from a quiet copy of
the manager (``--forkmem-fork-server``).

Run it like ``airflow dag-processor``, with the same arguments::

    python -m forkmem.integrations.airflow dag-processor [--forkmem-warmup] [--forkmem-immortalize]
        [--forkmem-rehearse] [--forkmem-fork-server]

Supported Airflow: apache-airflow-core 3.1.7 and newer. From 3.3 forkmem hooks the documented
``before_run()``/``after_run()``; on 3.1.7-3.2 (which have no ``before_run``) it runs the same
steps at the start of the parsing loop, just after Airflow's own freeze.

Airflow is imported only when a function of this module needs it; ``import forkmem`` never does.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import re
import statistics
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from forkmem._units import format_bytes
from forkmem.errors import ForkmemError, InvalidArgument, UnsupportedRuntime

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from forkmem.freeze import FreezeReport, frozen
    from forkmem.hooks import ForkHook
    from forkmem.integrations._airflow_fork_server import AirflowForkServer

__all__ = [
    "MIN_AIRFLOW_VERSION",
    "AirflowOptions",
    "ParseChildMemory",
    "airflow_version",
    "main",
    "manager_class",
]

_logger = logging.getLogger("forkmem.airflow")

MIN_AIRFLOW_VERSION: tuple[int, int, int] = (3, 1, 7)
"""The oldest apache-airflow-core this integration runs on."""

# Airflow 3.3 made the set-up before the parsing loop an overridable method.
_BEFORE_RUN_VERSION = (3, 3, 0)

_ENV_PREFIX = "FORKMEM_AIRFLOW_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})

# How many recent parse children feed the running median (bounded: the loop runs for weeks).
_RECENT = 4096

_BOOL_FIELDS = (
    "freeze",
    "warmup",
    "immortalize",
    "check_bytecode",
    "measure_children",
    "rehearse",
    "fork_server",
)


@dataclass(frozen=True, slots=True)
class AirflowOptions:
    """What the forkmem dag-processor does before its parsing loop.

    Every field can also be set through an environment variable ``FORKMEM_AIRFLOW_<FIELD>``
    (upper case; booleans as ``1/0``, ``true/false``, ``yes/no``, ``on/off``), read by
    :meth:`from_env`.
    """

    freeze: bool = True
    """Unfreeze what Airflow froze, run a full ``gc.collect()``, freeze again
    (:func:`forkmem.frozen`). ``False`` leaves Airflow's own freeze alone (stock behaviour,
    children still measured)."""
    warmup: bool = False
    """Use :func:`forkmem.warmup` instead of collect-and-freeze (str hashes, ``malloc_trim``)."""
    immortalize: bool = False
    """With ``warmup``: make the parent's objects immortal (CPython 3.12/3.13) so parse children
    never write their reference counts. Immortal objects are never freed."""
    check_bytecode: bool = True
    """Log one warning when imported modules have no usable ``.pyc``
    (:func:`forkmem.warn_if_missing_bytecode`)."""
    measure_children: bool = True
    """Measure every parse child's memory as it exits and log it (one ``smaps_rollup`` read per
    child)."""
    stats_file: str | None = None
    """Append one JSON object per line here: the set-up, every parse child, a summary at the
    end. Nothing is written when ``None``."""
    preimport: tuple[str, ...] = ()
    """Modules to import in the manager before the freeze, so parse children share them instead
    of importing them one by one (modules your DAG files import, or ones Airflow's parse path
    imports lazily). A module that fails to import is logged and skipped."""
    rehearse: bool = False
    """Before the set-up, parse forkmem's own one-task DAG in the manager with Airflow's
    parse-child code (a temporary file, removed at once; none of your DAG files). The modules,
    caches and specialized bytecode that every parse child would otherwise build for itself, in
    pages it shares with the manager, are then built once and shared. Skipped, with a warning, on an
    Airflow whose parse path it does not know."""
    fork_server: bool = False
    """Fork parse children from a quiet copy of the manager (Linux), one per parsing round,
    instead of from the manager itself. A child then no longer keeps private copies of the pages
    the busy manager writes while the child runs. The children are still the manager's own (it
    is a child subreaper while it asks for one). If the copy cannot be made or stops answering,
    Airflow forks as usual."""

    def __post_init__(self) -> None:
        for name in _BOOL_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise InvalidArgument(f"AirflowOptions.{name} must be True or False, not {value!r}")
        if self.stats_file is not None and (
            not isinstance(self.stats_file, str) or not self.stats_file
        ):
            raise InvalidArgument(
                f"AirflowOptions.stats_file must be a non-empty path or None, not "
                f"{self.stats_file!r}"
            )
        if not isinstance(self.preimport, tuple) or not all(
            isinstance(m, str) and m for m in self.preimport
        ):
            raise InvalidArgument(
                f"AirflowOptions.preimport must be a tuple of module names, not {self.preimport!r}"
            )
        if self.immortalize and not self.warmup:
            raise InvalidArgument("AirflowOptions(immortalize=True) needs warmup=True")
        if self.warmup and not self.freeze:
            raise InvalidArgument("AirflowOptions(warmup=True) needs freeze=True")

    @property
    def mode(self) -> str:
        """``"off"``, ``"freeze"``, ``"warmup"`` or ``"immortalize"``."""
        if not self.freeze:
            return "off"
        if self.immortalize:
            return "immortalize"
        return "warmup" if self.warmup else "freeze"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> AirflowOptions:
        """Options from ``FORKMEM_AIRFLOW_*`` variables (default: ``os.environ``).

        ``overrides`` (field=value, ``None`` meaning "not given") win over the environment.
        ``immortalize`` (variable or override) implies ``warmup`` unless that is given too.
        A value that is not a boolean raises :class:`forkmem.InvalidArgument` naming the
        variable.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in _BOOL_FIELDS:
            key = _ENV_PREFIX + name.upper()
            if key in env:
                values[name] = _parse_bool(key, env[key])
        stats = env.get(_ENV_PREFIX + "STATS_FILE")
        if stats:
            values["stats_file"] = stats
        preimport = env.get(_ENV_PREFIX + "PREIMPORT")
        if preimport:
            values["preimport"] = _split_modules(preimport)
        unknown = set(overrides) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidArgument(f"AirflowOptions has no field(s) {', '.join(sorted(unknown))}")
        if values.get("immortalize") and "warmup" not in values:
            values["warmup"] = True
        given = {k: v for k, v in overrides.items() if v is not None}
        if given.get("immortalize") and "warmup" not in given:
            given["warmup"] = True
        values.update(given)
        return cls(**values)


def _split_modules(text: str) -> tuple[str, ...]:
    return tuple(m for m in (part.strip() for part in text.replace(",", " ").split()) if m)


def _parse_bool(key: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidArgument(f"{key}={raw!r}: expected 1/0, true/false, yes/no or on/off")


@dataclass(frozen=True, slots=True)
class ParseChildMemory:
    """One parse child's memory, measured by the child itself just before it exited (bytes)."""

    pid: int
    """The child's process id."""
    file: str | None
    """The DAG file it parsed, relative to its bundle (``None`` when the manager did not know
    the pid, e.g. a process forked by DAG code)."""
    exit_code: int
    """The status the child passed to ``os._exit``."""
    private: int | None
    """USS: Private_Clean + Private_Dirty, the memory only this child holds (what it copied
    from the manager plus what it allocated)."""
    private_dirty: int | None
    """Private_Dirty: pages the child wrote, copied ones included."""
    pss: int | None
    """Proportional set size."""
    rss: int
    """Resident set size (counts shared pages in full)."""
    peak_rss: int | None
    """VmHWM: the highest RSS the child reached."""


def airflow_version() -> tuple[int, int, int]:
    """The installed apache-airflow-core version as ``(major, minor, micro)``.

    Raises :class:`forkmem.UnsupportedRuntime` when Airflow is not installed or older than
    :data:`MIN_AIRFLOW_VERSION`.
    """
    try:
        airflow = _airflow("airflow")
    except ImportError as exc:
        raise UnsupportedRuntime(
            "forkmem.integrations.airflow needs apache-airflow-core "
            f"{'.'.join(map(str, MIN_AIRFLOW_VERSION))} or newer: pip install 'forkmem[airflow]'"
        ) from exc
    text = str(getattr(airflow, "__version__", ""))
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


# --------------------------------------------------------------------------------------------
# Parse-child measurement: each child measures itself in os._exit and writes one line into a
# pipe the manager created; the manager drains it when it collects finished children. One
# smaps_rollup read per child, no thread, nothing held across the fork.


def _child_line(code: int) -> bytes:
    from forkmem.memory import memory, rss_breakdown

    usage = memory()
    peak = rss_breakdown().peak_rss
    fields = (
        os.getpid(),
        code,
        usage.uss,
        usage.private_dirty,
        usage.pss,
        usage.rss,
        peak,
    )
    return (" ".join("-" if v is None else str(int(v)) for v in fields) + "\n").encode()


def _parse_line(line: bytes, files: Mapping[int, str]) -> ParseChildMemory | None:
    parts = line.split()
    if len(parts) != 7:
        return None
    try:
        pid, code, uss, dirty, pss, rss, peak = (None if p == b"-" else int(p) for p in parts)
    except ValueError:
        return None
    if pid is None or code is None or rss is None:
        return None
    return ParseChildMemory(
        pid=pid,
        file=files.get(pid),
        exit_code=code,
        private=uss,
        private_dirty=dirty,
        pss=pss,
        rss=rss,
        peak_rss=peak,
    )


class _Session:
    """The forkmem state of one manager: freeze block, child pipe, statistics, stats file."""

    def __init__(self, options: AirflowOptions) -> None:
        self.options = options
        self.applied = False
        self.closed = False
        self.manager_pid = 0
        self.block: frozen | None = None
        self.report: FreezeReport | None = None
        self.hook: ForkHook | None = None
        self.read_fd = -1
        self.write_fd = -1
        self.partial = b""
        self.files: dict[int, str] = {}
        self.count = 0
        self.recent: deque[int] = deque(maxlen=_RECENT)
        self.max_private = 0
        self.max_peak_rss = 0
        self.stats: Any = None  # an open text file, only when asked for
        self.server: AirflowForkServer | None = None
        self.rehearsal_seconds: float | None = None
        self.server_wanted = False
        self.forking_pid = 0

    # -- parent: set-up before the loop ------------------------------------------------------

    def apply(self, airflow: tuple[int, int, int]) -> None:
        if self.applied:
            return
        self.applied = True
        self.manager_pid = os.getpid()
        opts = self.options
        if opts.stats_file:
            try:
                self.stats = open(opts.stats_file, "a", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise InvalidArgument(f"cannot open the stats file: {exc}") from exc
        if opts.preimport:
            _preimport(opts.preimport)
        if opts.rehearse:
            from forkmem.integrations._airflow_rehearsal import rehearse_parse

            self.rehearsal_seconds = rehearse_parse()
        if opts.check_bytecode:  # after the preimports, so they are checked too
            _warn_bytecode()
        if opts.measure_children:
            self._start_measuring()
        started = time.perf_counter()
        if opts.freeze:
            from forkmem.freeze import frozen

            if not opts.warmup:
                # Airflow's before_run ended with a bare gc.freeze(): release it so the full
                # collection sees (and frees) the garbage, then freeze the survivors.
                gc.unfreeze()
            self.block = frozen(collect=True, warmup=opts.warmup, immortalize=opts.immortalize)
            self.report = self.block.__enter__()
        seconds = time.perf_counter() - started
        self.server_wanted = opts.fork_server
        self._log_setup(airflow, seconds)

    # -- parent: the fork server -------------------------------------------------------------
    # It lives for one parsing round: started with the round's first child, stopped when no
    # file is queued and no child runs. Every page the manager rewrites while the server lives
    # is held twice (the server keeps the original), so an idle server would only cost memory.

    def _start_server(self) -> None:
        from forkmem.integrations._airflow_fork_server import AirflowForkServer

        opts = self.options
        server = AirflowForkServer(
            freeze=opts.freeze,
            warmup=opts.warmup,
            immortalize=opts.immortalize,
            arm_child=self._arm_exit if opts.measure_children else None,
        )
        if server.start():
            self.server = server
            self._write({"event": "fork_server", "action": "start", "pid": server.pid})
        else:
            self.server_wanted = False  # it will not work any better next round

    def stop_server(self) -> None:
        """Stop the fork server (the round is over); the next parse child starts a new one."""
        server, self.server = self.server, None
        if server is None:
            return
        server.close()
        self._write(
            {
                "event": "fork_server",
                "action": "stop",
                "pid": server.pid,
                "spawned": server.spawned,
                "fallbacks": server.fallbacks,
            }
        )

    def routing(self, path: str | None) -> contextlib.AbstractContextManager[None]:
        """Fork the parse child started inside this block on the fork server, if wanted."""
        if self.server is None and self.server_wanted:
            self._start_server()
        if self.server is None:
            return contextlib.nullcontext()
        return self.server.routing(path)

    def _start_measuring(self) -> None:
        from forkmem.hooks import at_fork

        self.read_fd, self.write_fd = os.pipe()
        # Neither end may ever block: the manager drains when it likes; a child whose line
        # does not fit a full pipe drops it rather than hang at exit.
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self.hook = at_fork(
            before=self._before_fork,
            after_in_child=self._after_in_child,
            name="forkmem.airflow.measure",
        )

    def _log_setup(self, airflow: tuple[int, int, int], seconds: float) -> None:
        opts = self.options
        report = self.report
        record: dict[str, Any] = {
            "event": "setup",
            "mode": opts.mode,
            "pid": self.manager_pid,
            "airflow": ".".join(map(str, airflow)),
            "python": ".".join(map(str, sys.version_info[:3])),
            "seconds": round(seconds, 4),
            "frozen": gc.get_freeze_count(),
            "fork_server": opts.fork_server,
            "rehearsal_seconds": self.rehearsal_seconds,
        }
        warm = getattr(report, "warmup", None)
        if warm is not None:
            record["immortalized"] = getattr(warm, "immortalized", None)
            record["strings_hashed"] = getattr(warm, "strings_hashed", None)
            record["collected"] = getattr(warm, "collected", None)
            record["left_mortal"] = dict(getattr(warm, "skipped", {}))
        elif report is not None:
            record["collected"] = report.collected
        if opts.freeze:
            _logger.info(
                "forkmem: %s before the parsing loop in %.2f s: %d objects frozen%s",
                opts.mode,
                seconds,
                record["frozen"],
                f", {record['immortalized']} immortal" if record.get("immortalized") else "",
            )
        else:
            _logger.info("forkmem: freeze off, Airflow's own gc.freeze() left as it is")
        self._write(record)

    # -- child: measure at exit --------------------------------------------------------------

    def _before_fork(self) -> None:
        self.forking_pid = os.getpid()

    def _after_in_child(self) -> None:
        # Who forked, not getppid(): an orphan can be handed to the manager (a subreaper
        # during fork-server requests) before its fork hooks run.
        if self.forking_pid != self.manager_pid:
            return  # not forked by the manager (DAG code forking, for one)
        self._arm_exit()

    def _arm_exit(self) -> None:
        """Make ``os._exit`` measure this process first (a parse child, just forked)."""
        if self.write_fd < 0:
            return
        # Wrap the real exit even if a copy of the manager already wrapped it (fork server).
        real_exit: Callable[[int], NoReturn] = getattr(os._exit, "_forkmem_real", os._exit)
        me = os.getpid()
        fd = self.write_fd

        def _exit(status: int) -> NoReturn:
            # Must never keep the child from exiting: any failure just loses the line, and the
            # finally covers what suppress does not (KeyboardInterrupt, a signal handler's
            # SystemExit), which would otherwise return into Airflow's code in the child.
            try:
                if os.getpid() == me:
                    with contextlib.suppress(Exception):
                        os.write(fd, _child_line(status))
            finally:
                real_exit(status)

        _exit._forkmem_real = real_exit  # type: ignore[attr-defined]
        # Airflow's child always leaves through os._exit: measuring there sees all it copied.
        os._exit = _exit

    # -- parent: collect -----------------------------------------------------------------------

    def note_children(self, processors: Mapping[Any, Any]) -> None:
        """Remember which file each running child parses (before Airflow reaps them)."""
        if self.read_fd < 0:
            return
        for file, proc in processors.items():
            pid = getattr(proc, "pid", None)
            if isinstance(pid, int):
                self.files[pid] = str(getattr(file, "rel_path", file))

    def drain(self, running: Sequence[int]) -> list[ParseChildMemory]:
        """Read the lines children wrote, log them; forget pids no longer running."""
        if self.read_fd < 0:
            return []
        chunks = [self.partial]
        while True:
            try:
                data = os.read(self.read_fd, 65536)
            except OSError:  # BlockingIOError included: nothing more to read now
                break
            if not data:
                break
            chunks.append(data)
        *lines, self.partial = b"".join(chunks).split(b"\n")
        found: list[ParseChildMemory] = []
        for line in lines:
            child = _parse_line(line, self.files)
            if child is not None:
                found.append(child)
                self._record(child)
        keep = set(running)
        self.files = {pid: f for pid, f in self.files.items() if pid in keep}
        return found

    def _record(self, child: ParseChildMemory) -> None:
        if child.private is not None:
            self.count += 1
            self.recent.append(child.private)
            self.max_private = max(self.max_private, child.private)
        if child.peak_rss is not None:
            self.max_peak_rss = max(self.max_peak_rss, child.peak_rss)
        _logger.info(
            "forkmem: parse child pid=%d file=%s exit=%d private=%s private_dirty=%s pss=%s "
            "rss=%s peak_rss=%s",
            child.pid,
            child.file,
            child.exit_code,
            _fmt(child.private),
            _fmt(child.private_dirty),
            _fmt(child.pss),
            format_bytes(child.rss),
            _fmt(child.peak_rss),
        )
        self._write({"event": "parse_child", **asdict(child)})

    # -- parent: end ---------------------------------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.server_wanted = False
        self.stop_server()
        if self.hook is not None:
            self.hook.remove()
            self.hook = None
        if self.read_fd >= 0:
            self.drain(())
        if self.count:
            median = int(statistics.median(self.recent))
            _logger.info(
                "forkmem: %d parse children measured; private median %s (last %d), max %s; "
                "peak RSS max %s",
                self.count,
                format_bytes(median),
                len(self.recent),
                format_bytes(self.max_private),
                format_bytes(self.max_peak_rss),
            )
            self._write(
                {
                    "event": "summary",
                    "children": self.count,
                    "private_median": median,
                    "private_max": self.max_private,
                    "peak_rss_max": self.max_peak_rss,
                }
            )
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.read_fd = self.write_fd = -1
        if self.block is not None:
            # unfreeze=False: the heap stays frozen for whatever the process still does.
            self.block.__exit__(None, None, None)
            self.block = None
        if self.stats is not None:
            with contextlib.suppress(OSError):
                self.stats.close()
            self.stats = None

    def _write(self, record: dict[str, Any]) -> None:
        if self.stats is None:
            return
        try:
            self.stats.write(json.dumps(record, sort_keys=True) + "\n")
            self.stats.flush()
        except OSError as exc:
            _logger.warning("forkmem: cannot write the stats file: %s", exc)


def _airflow(module: str) -> Any:
    # Airflow is typed loosely and differs between versions: treat it as dynamic, on purpose.
    import importlib

    return importlib.import_module(module)


def _fmt(value: int | None) -> str:
    return "?" if value is None else format_bytes(value)


def _preimport(modules: Sequence[str]) -> None:
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a broken optional module must not stop the dag-processor
            _logger.warning("forkmem: cannot preimport %s: %s", name, exc)


def _warn_bytecode() -> None:
    from forkmem.bytecode import warn_if_missing_bytecode

    try:
        warn_if_missing_bytecode()
    except ForkmemError as exc:  # the check is advice: never stop the dag-processor for it
        _logger.debug("forkmem: bytecode check skipped: %s", exc)


# --------------------------------------------------------------------------------------------
# The DagFileProcessorManager subclass, built on first use so that importing this module needs
# no Airflow.

_manager_cls: type[Any] | None = None


def manager_class() -> type[Any]:
    """The ``DagFileProcessorManager`` subclass that applies forkmem (built on first call).

    It takes the manager's own keyword arguments plus ``forkmem_options``
    (an :class:`AirflowOptions`; default :meth:`AirflowOptions.from_env`). Use it where Airflow's
    CLI builds its manager::

        manager = manager_class()(max_runs=-1, forkmem_options=AirflowOptions(warmup=True))
        runner = DagProcessorJobRunner(job=Job(), processor=manager)
        run_job(job=runner.job, execute_callable=runner._execute)

    Raises :class:`forkmem.UnsupportedRuntime` without apache-airflow-core 3.1.7+.
    """
    global _manager_cls
    if _manager_cls is None:
        version = airflow_version()
        _manager_cls = _build_manager_class(version)
    return _manager_cls


def _build_manager_class(version: tuple[int, int, int]) -> type[Any]:
    base: Any = _airflow("airflow.dag_processing.manager").DagFileProcessorManager
    has_before_run = callable(getattr(base, "before_run", None))

    class ForkmemDagFileProcessorManager(base):  # type: ignore[misc]
        """Airflow's ``DagFileProcessorManager`` with forkmem's set-up before the parsing loop."""

        # Log under Airflow's own logger name, so logging configuration aimed at the manager
        # still applies.
        _logger_name = "airflow.dag_processing.manager.DagFileProcessorManager"

        def __init__(
            self, *args: Any, forkmem_options: AirflowOptions | None = None, **kwargs: Any
        ) -> None:
            super().__init__(*args, **kwargs)
            options = forkmem_options if forkmem_options is not None else AirflowOptions.from_env()
            if not isinstance(options, AirflowOptions):
                raise InvalidArgument(
                    f"forkmem_options must be an AirflowOptions, not {type(options).__name__}"
                )
            self.forkmem = _Session(options)

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

    ForkmemDagFileProcessorManager.__module__ = __name__
    return ForkmemDagFileProcessorManager


# --------------------------------------------------------------------------------------------
# The entrypoint: ``python -m forkmem.integrations.airflow dag-processor [args]``.


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m forkmem.integrations.airflow",
        description="Airflow components with forkmem applied.",
    )
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    dag = sub.add_parser(
        "dag-processor",
        help="start a dag processor, as 'airflow dag-processor' does, with forkmem",
        description="Start a dag processor as 'airflow dag-processor' does (same arguments), "
        "with forkmem's freeze, warmup and parse-child measurement. FORKMEM_AIRFLOW_* "
        "environment variables give the defaults of the --forkmem-* options.",
    )
    for command in _airflow("airflow.cli.cli_config").core_commands:
        if getattr(command, "name", None) == "dag-processor":
            for arg in command.args:
                arg.add_to_parser(dag)
            break
    else:  # pragma: no cover - every supported Airflow has the command
        raise UnsupportedRuntime("this Airflow has no 'dag-processor' command")
    group = dag.add_argument_group("forkmem")
    # On/off switches: None means "not given", so FORKMEM_AIRFLOW_* still applies.
    switches = (
        (
            "--forkmem-warmup",
            "forkmem_warmup",
            True,
            "forkmem.warmup() instead of collect + freeze",
        ),
        (
            "--forkmem-immortalize",
            "forkmem_immortalize",
            True,
            "warmup(immortalize=True): parent objects immortal (CPython 3.12/3.13)",
        ),
        (
            "--forkmem-no-freeze",
            "forkmem_freeze",
            False,
            "leave Airflow's own gc.freeze() as it is (children are still measured)",
        ),
        (
            "--forkmem-no-measure",
            "forkmem_measure_children",
            False,
            "do not measure parse children",
        ),
        (
            "--forkmem-rehearse",
            "forkmem_rehearse",
            True,
            "parse forkmem's own one-task DAG in the manager before the set-up",
        ),
        (
            "--forkmem-fork-server",
            "forkmem_fork_server",
            True,
            "fork each parsing round's children from a quiet copy of the manager (Linux)",
        ),
    )
    for flag, dest, value, text in switches:
        group.add_argument(
            flag, dest=dest, action="store_const", const=value, default=None, help=text
        )
    group.add_argument(
        "--forkmem-preimport",
        metavar="MODULES",
        default=None,
        help="comma-separated modules to import before the freeze, shared by all parse children",
    )
    group.add_argument(
        "--forkmem-stats-file",
        metavar="PATH",
        default=None,
        help="append JSON lines (set-up, each parse child, summary) to PATH",
    )
    return parser


def _options_from_args(args: argparse.Namespace) -> AirflowOptions:
    return AirflowOptions.from_env(
        freeze=args.forkmem_freeze,
        warmup=args.forkmem_warmup,
        immortalize=args.forkmem_immortalize,
        measure_children=args.forkmem_measure_children,
        rehearse=args.forkmem_rehearse,
        fork_server=args.forkmem_fork_server,
        stats_file=args.forkmem_stats_file,
        preimport=_split_modules(args.forkmem_preimport) if args.forkmem_preimport else None,
    )


def _run_dag_processor(args: argparse.Namespace) -> None:
    # The body of Airflow's own ``dag_processor`` command, with forkmem's manager.
    daemon_utils = _airflow("airflow.cli.commands.daemon_utils")
    runner_mod = _airflow("airflow.jobs.dag_processor_job_runner")
    job_mod = _airflow("airflow.jobs.job")
    cli_utils = _airflow("airflow.utils.cli")
    # Airflow 3.2+: honour the configured multiprocessing start method, as its CLI does.
    set_start_method = getattr(
        _airflow("airflow.utils.process_utils"), "set_component_mp_start_method", None
    )
    if set_start_method is not None:
        set_start_method("dag_processor")
    if args.bundle_name:
        cli_utils.validate_dag_bundle_arg(args.bundle_name)
    manager = manager_class()(
        max_runs=args.num_runs,
        bundle_names_to_parse=args.bundle_name,
        forkmem_options=args.forkmem_options,
    )
    runner = runner_mod.DagProcessorJobRunner(job=job_mod.Job(), processor=manager)

    def run() -> None:
        job_mod.run_job(job=runner.job, execute_callable=runner._execute)

    hot_reload = getattr(cli_utils, "should_enable_hot_reload", None)
    if hot_reload is not None and hot_reload(args):
        _airflow("airflow.cli.hot_reload").run_with_reloader(run, process_name="dag-processor")
        return
    daemon_utils.run_command_with_daemon_option(
        args=args, process_name="dag-processor", callback=run, should_setup_logging=True
    )


def _check_immortalize(options: AirflowOptions) -> None:
    # Fail before Airflow starts, not from inside its job after the set-up.
    if options.immortalize:
        from forkmem._immortal import unsupported_reason

        reason = unsupported_reason()
        if reason is not None:
            raise UnsupportedRuntime(f"--forkmem-immortalize: {reason}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entrypoint; returns the exit status.

    ``python -m forkmem.integrations.airflow dag-processor [airflow dag-processor arguments]
    [--forkmem-warmup] [--forkmem-immortalize] [--forkmem-no-freeze] [--forkmem-no-measure]
    [--forkmem-rehearse] [--forkmem-fork-server] [--forkmem-preimport MODULES]
    [--forkmem-stats-file PATH]``.
    """
    try:
        airflow_version()
        options_env = AirflowOptions.from_env()  # bad variables fail before Airflow starts
        del options_env
        parser = _build_parser()
        args = parser.parse_args(argv)
        args.forkmem_options = _options_from_args(args)
        _check_immortalize(args.forkmem_options)
    except ForkmemError as exc:
        print(f"forkmem: {exc}", file=sys.stderr)
        return 2
    configuration = _airflow("airflow.configuration")
    cli_utils = _airflow("airflow.utils.cli")
    loader = _airflow("airflow.utils.providers_configuration_loader")
    write_default = getattr(configuration, "write_default_airflow_configuration_if_needed", None)
    if write_default is not None:
        write_default()

    def dag_processor(args: argparse.Namespace) -> None:
        _run_dag_processor(args)

    # Airflow's own wrappers: CLI action logging, migration check, providers' configuration.
    command = cli_utils.action_cli(loader.providers_configuration_loaded(dag_processor))
    try:
        command(args)
    except ForkmemError as exc:
        print(f"forkmem: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
