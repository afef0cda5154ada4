"""Parse one built-in DAG in the manager before the set-up, as a parse child would (private).

Every parse child runs the same Airflow code: it imports the modules the parse path loads
lazily, fills caches (typing, re, pydantic, linecache), records dict-key versions, and its first
run of each function writes the specializing interpreter's counters into the code object (3.11+).
In a child all of that lands on pages it shares with the manager, so each child copies them.
Run in the manager before ``warmup()``, it is done in pages every child shares instead. The DAG
is parsed `ROUNDS` times: the second parse records the code objects the parse path runs, which
are then packed next to each other in fresh memory (`forkmem._code_pack`), and the later parses
specialize the packed copies, so a child's counter writes land on a few dense pages.

The DAG is forkmem's own one-task DAG, written to a temporary directory that is removed at
once. The only user code that can run is what Airflow runs on every DAG it parses: cluster
policies (``airflow_local_settings``). Any failure is logged and skipped: the rehearsal is an
optimisation.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from forkmem._code_pack import CodeRecorder, pack
from forkmem.integrations.airflow import _private_api

__all__ = ["ROUNDS", "rehearse_parse"]

ROUNDS = 8
"""Parses of the rehearsal DAG: one for the start-up paths, one recorded for packing, the rest to
specialize the packed code in the manager."""

_logger = logging.getLogger("forkmem.airflow")

_DAG_SOURCE = """\
from datetime import datetime

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

with DAG(dag_id="forkmem_rehearsal", schedule=None, start_date=datetime(2024, 1, 1)):
    EmptyOperator(task_id="forkmem_rehearsal_task")
"""
_MODULE_PREFIX = "forkmem_rehearsal"


class _Log:
    """The structlog-style logger Airflow's parse function expects, routed to forkmem's logger."""

    def _emit(self, level: int, event: str, *args: Any, **kw: Any) -> None:
        _logger.log(level, "forkmem rehearsal: " + str(event), *args)

    def debug(self, event: str, *args: Any, **kw: Any) -> None:
        self._emit(logging.DEBUG, event, *args)

    def info(self, event: str, *args: Any, **kw: Any) -> None:
        self._emit(logging.DEBUG, event, *args)

    def warning(self, event: str, *args: Any, **kw: Any) -> None:
        self._emit(logging.DEBUG, event, *args)

    def error(self, event: str, *args: Any, **kw: Any) -> None:
        self._emit(logging.DEBUG, event, *args)

    exception = error


def rehearse_parse(*, rounds: int = ROUNDS, pack_code: bool = True) -> float | None:
    """Parse and serialize forkmem's DAG with Airflow's parse-child code, in this process,
    ``rounds`` times; with ``pack_code`` (and two rounds or more) the code the second parse runs
    is packed together before the later ones.

    Returns the seconds it took, or None (logged) when this Airflow cannot be rehearsed.
    """
    started = time.perf_counter()
    saved_env = _private_api.process_context()
    before = set(sys.modules)
    folder = ""
    try:
        with tempfile.TemporaryDirectory(prefix="forkmem-rehearsal-") as folder:
            path = Path(folder) / f"{_MODULE_PREFIX}.py"
            path.write_text(_DAG_SOURCE, encoding="utf-8")
            problem = _private_api.parse_and_encode(str(path), folder, _Log())
            if problem is not None:
                _logger.warning("forkmem: the parse rehearsal found %s; skipped", problem)
                return None
            left = rounds - 1
            if pack_code and left:
                with CodeRecorder() as recorder:
                    _private_api.parse_and_encode(str(path), folder, _Log())
                left -= 1
                packed = pack(recorder.codes.values())
                del recorder
                _logger.info("forkmem: parse rehearsal %s", packed.describe())
            for _ in range(left):
                _private_api.parse_and_encode(str(path), folder, _Log())
    except Exception as exc:  # an optimisation only: never stop the dag-processor for it
        _logger.warning("forkmem: parse rehearsal skipped: %s: %s", type(exc).__name__, exc)
        return None
    finally:
        # The DagBag puts the bundle folder on sys.path: a deleted, guessable /tmp directory
        # must not stay there (anyone could re-create it with modules in it).
        while folder and folder in sys.path:
            sys.path.remove(folder)
        sys.path_importer_cache.pop(folder, None)
        _private_api.restore_process_context(saved_env)
        # The DAG module itself is no use to anyone: drop it (Airflow names it after the path).
        for name in set(sys.modules) - before:
            if name.endswith(_MODULE_PREFIX):
                del sys.modules[name]
    return time.perf_counter() - started
