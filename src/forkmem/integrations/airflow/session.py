"""The forkmem state of one dag-processor manager, from its set-up to the end of its loop.

A `Session` is made of three parts, closed in reverse order by one ``ExitStack``:

- a `StatsWriter`, the optional JSON-lines file;
- a `ChildMeter`: each parse child measures itself in ``os._exit`` and writes one line
  into a pipe the manager created; the manager drains it when it collects finished children.
  One ``smaps_rollup`` read per child, no thread, nothing held across the fork;
- the freeze block ([`forkmem.frozen`][forkmem.frozen]) and, per parsing round, the fork server.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import statistics
import sys
import time
from collections import deque
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, NoReturn

from forkmem._units import format_bytes
from forkmem.errors import ForkmemError, InvalidArgument
from forkmem.hooks import at_fork
from forkmem.integrations._common import start_metrics
from forkmem.integrations.airflow.options import ParseChildMemory

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from forkmem.freeze import FreezeReport
    from forkmem.hooks import ForkHook
    from forkmem.integrations.airflow.fork_server import AirflowForkServer
    from forkmem.integrations.airflow.options import AirflowOptions

__all__ = ["ChildMeter", "Session", "StatsWriter"]

_logger = logging.getLogger("forkmem.airflow")

# How many recent parse children feed the running median (bounded: the loop runs for weeks).
_RECENT = 4096


class StatsWriter:
    """Appends one JSON object per line to the stats file; does nothing without one."""

    def __init__(self, path: str | None) -> None:
        self._file: Any = None  # an open text file, only when asked for
        if path:
            try:
                self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise InvalidArgument(f"cannot open the stats file: {exc}") from exc

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        try:
            self._file.write(json.dumps(record, sort_keys=True) + "\n")
            self._file.flush()
        except OSError as exc:
            _logger.warning("forkmem: cannot write the stats file: %s", exc)

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def _child_line(code: int) -> bytes:
    from forkmem.usage import memory, rss_breakdown

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


def _fmt(value: int | None) -> str:
    return "?" if value is None else format_bytes(value)


class ChildMeter:
    """Parse children's memory: each measures itself at exit; the manager collects the lines."""

    def __init__(self, stats: StatsWriter) -> None:
        self._stats = stats
        self.manager_pid = os.getpid()
        self.hook: ForkHook | None = None
        self.read_fd = -1
        self.write_fd = -1
        self.partial = b""
        self.files: dict[int, str] = {}
        self.count = 0
        self.recent: deque[int] = deque(maxlen=_RECENT)
        self.max_private = 0
        self.max_peak_rss = 0
        self.forking_pid = 0

    def start(self) -> None:
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

    # -- child: measure at exit --------------------------------------------------------------

    def _before_fork(self) -> None:
        self.forking_pid = os.getpid()

    def _after_in_child(self) -> None:
        # Who forked, not getppid(): an orphan can be handed to the manager (a subreaper
        # during fork-server requests) before its fork hooks run.
        if self.forking_pid != self.manager_pid:
            return  # not forked by the manager (DAG code forking, for one)
        self.arm_exit()

    def arm_exit(self) -> None:
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
        self._stats.write({"event": "parse_child", **asdict(child)})

    def close(self) -> None:
        """Stop measuring: remove the hook, read the last lines, log the summary."""
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
            self._stats.write(
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


class Session:
    """The forkmem state of one manager: stats file, child meter, freeze block, fork server."""

    def __init__(self, options: AirflowOptions) -> None:
        self.options = options
        self.applied = False
        self.closed = False
        self.manager_pid = 0
        self.report: FreezeReport | None = None
        self._stack = contextlib.ExitStack()
        self._stats = StatsWriter(None)
        self.meter: ChildMeter | None = None
        self.server: AirflowForkServer | None = None
        self.rehearsal_seconds: float | None = None
        self.server_wanted = False

    @property
    def files(self) -> dict[int, str]:
        """Pid -> DAG file of the parse children running now (empty when not measuring)."""
        return self.meter.files if self.meter is not None else {}

    # -- parent: set-up before the loop ------------------------------------------------------

    def apply(self, airflow: tuple[int, int, int]) -> None:
        if self.applied:
            return
        self.applied = True
        self.manager_pid = os.getpid()
        opts = self.options
        stack = self._stack
        self._stats = StatsWriter(opts.stats_file)
        stack.callback(self._stats.close)
        if opts.preimport:
            _preimport(opts.preimport)
        if opts.rehearse:
            from forkmem.integrations.airflow.rehearsal import rehearse_parse

            self.rehearsal_seconds = rehearse_parse(pack_code=opts.pack_code)
        if opts.check_bytecode:  # after the preimports, so they are checked too
            _warn_bytecode()
        if opts.measure_children:
            self.meter = ChildMeter(self._stats)
            self.meter.start()
            stack.callback(self.meter.close)
        started = time.perf_counter()
        if opts.freeze:
            from forkmem.freeze import block

            if not opts.warmup:
                # Airflow's before_run ended with a bare gc.freeze(): release it so the full
                # collection sees (and frees) the garbage, then freeze the survivors.
                gc.unfreeze()
            # Left with unfreeze=False at close: the heap stays frozen for whatever the
            # process still does.
            freeze = block(collect=True, warmup=opts.warmup, immortalize=opts.immortalize)
            self.report = stack.enter_context(freeze)
        exporter = start_metrics(opts.metrics, "Airflow dag-processor")
        if exporter is not None:
            stack.callback(exporter.close)
        stack.callback(self._end_rounds)  # the first thing close() does
        seconds = time.perf_counter() - started
        self.server_wanted = opts.fork_server
        self._log_setup(airflow, seconds)

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
        self._stats.write(record)

    # -- parent: the fork server -------------------------------------------------------------
    # It lives for one parsing round: started with the round's first child, stopped when no
    # file is queued and no child runs. Every page the manager rewrites while the server lives
    # is held twice (the server keeps the original), so an idle server would only cost memory.

    def _start_server(self) -> None:
        from forkmem.integrations.airflow.fork_server import AirflowForkServer

        opts = self.options
        meter = self.meter
        server = AirflowForkServer(
            freeze=opts.freeze,
            warmup=opts.warmup,
            immortalize=opts.immortalize,
            arm_child=meter.arm_exit if meter is not None else None,
        )
        if server.start():
            self.server = server
            self._stats.write({"event": "fork_server", "action": "start", "pid": server.pid})
        else:
            self.server_wanted = False  # it will not work any better next round

    def stop_server(self) -> None:
        """Stop the fork server (the round is over); the next parse child starts a new one."""
        server, self.server = self.server, None
        if server is None:
            return
        server.close()
        self._stats.write(
            {
                "event": "fork_server",
                "action": "stop",
                "pid": server.pid,
                "spawned": server.spawned,
                "fallbacks": server.fallbacks,
            }
        )

    def _end_rounds(self) -> None:
        self.server_wanted = False
        self.stop_server()

    def routing(self, path: str | None) -> contextlib.AbstractContextManager[None]:
        """Fork the parse child started inside this block on the fork server, if wanted."""
        if self.server is None and self.server_wanted:
            self._start_server()
        if self.server is None:
            return contextlib.nullcontext()
        return self.server.routing(path)

    # -- parent: collect and end -------------------------------------------------------------

    def note_children(self, processors: Mapping[Any, Any]) -> None:
        """Remember which file each running child parses (before Airflow reaps them)."""
        if self.meter is not None:
            self.meter.note_children(processors)

    def drain(self, running: Sequence[int]) -> list[ParseChildMemory]:
        """Read the lines children wrote, log them; forget pids no longer running."""
        return self.meter.drain(running) if self.meter is not None else []

    def close(self) -> None:
        """End the session: fork server, freeze block, child meter, stats file, in that order."""
        if self.closed:
            return
        self.closed = True
        self._stack.close()


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
