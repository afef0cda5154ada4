"""The dag-processor's options (`AirflowOptions`), from arguments or the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from forkmem._exporter import parse_listen
from forkmem._validate import check_bool, check_warmup_for_immortalize
from forkmem.errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["ENV_PREFIX", "AirflowOptions", "ParseChildMemory", "parse_bool", "split_modules"]

ENV_PREFIX = "FORKMEM_AIRFLOW_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})

_BOOL_FIELDS = (
    "freeze",
    "warmup",
    "immortalize",
    "check_bytecode",
    "measure_children",
    "rehearse",
    "pack_code",
    "fork_server",
)


@dataclass(frozen=True, slots=True)
class AirflowOptions:
    """What the forkmem dag-processor does before its parsing loop.

    Every field can also be set through an environment variable ``FORKMEM_AIRFLOW_<FIELD>``
    (upper case; booleans as ``1/0``, ``true/false``, ``yes/no``, ``on/off``), read by
    `from_env()`.
    """

    freeze: bool = True
    """Unfreeze what Airflow froze, run a full ``gc.collect()``, freeze again
    ([`forkmem.frozen()`][forkmem.frozen]). ``False`` leaves Airflow's own freeze alone (stock
    behaviour, children still measured)."""
    warmup: bool = False
    """Use `forkmem.warmup()` instead of collect-and-freeze (str hashes, ``malloc_trim``)."""
    immortalize: bool = False
    """With ``warmup``: make the parent's objects immortal (CPython 3.12+) so parse children
    never write their reference counts. Immortal objects are never freed."""
    check_bytecode: bool = True
    """Log one warning when imported modules have no usable ``.pyc``
    ([`forkmem.warn_if_missing_bytecode()`][forkmem.warn_if_missing_bytecode])."""
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
    pack_code: bool = True
    """With ``rehearse``: copy the code objects the rehearsal parse runs next to each other into
    fresh memory (functions repointed) before the later rehearsal parses specialize them, so a
    parse child's bytecode-counter writes land on a few dense pages instead of one page per
    function. ``False`` leaves code where the imports put it."""
    fork_server: bool = False
    """Fork parse children from a quiet copy of the manager (Linux), one per parsing round,
    instead of from the manager itself. A child then no longer keeps private copies of the pages
    the busy manager writes while the child runs. The children are still the manager's own (it
    is a child subreaper while it asks for one). If the copy cannot be made or stops answering,
    Airflow forks as usual."""

    metrics: str | None = None
    """``"127.0.0.1:9464"``: serve Prometheus metrics for the manager and its parse children
    there (the ``metrics`` extra), from a ``forkmem export`` process the manager starts after
    the set-up. ``None``: only if ``FORKMEM_METRICS`` names an address."""

    def __post_init__(self) -> None:
        if self.metrics is not None:
            parse_listen(self.metrics)
        for name in _BOOL_FIELDS:
            check_bool(f"AirflowOptions.{name}", getattr(self, name))
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
        check_warmup_for_immortalize(
            "AirflowOptions", warmup=self.warmup, immortalize=self.immortalize
        )
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
        A value that is not a boolean raises [`forkmem.InvalidArgument`][forkmem.InvalidArgument]
        naming the variable.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in _BOOL_FIELDS:
            key = ENV_PREFIX + name.upper()
            if key in env:
                values[name] = parse_bool(key, env[key])
        stats = env.get(ENV_PREFIX + "STATS_FILE")
        if stats:
            values["stats_file"] = stats
        metrics = env.get(ENV_PREFIX + "METRICS")
        if metrics:
            values["metrics"] = metrics
        preimport = env.get(ENV_PREFIX + "PREIMPORT")
        if preimport:
            values["preimport"] = split_modules(preimport)
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


def split_modules(text: str) -> tuple[str, ...]:
    """Module names from a comma- or space-separated list."""
    return tuple(m for m in (part.strip() for part in text.replace(",", " ").split()) if m)


def parse_bool(key: str, raw: str) -> bool:
    """An environment variable's boolean; a typed error naming ``key`` otherwise."""
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
