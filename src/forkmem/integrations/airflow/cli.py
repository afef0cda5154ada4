"""The entrypoint: ``python -m forkmem.integrations.airflow dag-processor [args]``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from forkmem._disable import disabled
from forkmem._immortal import unsupported_reason
from forkmem.errors import ForkmemError, UnsupportedRuntime
from forkmem.integrations.airflow import _private_api
from forkmem.integrations.airflow.manager import manager_class
from forkmem.integrations.airflow.options import ENV_PREFIX, AirflowOptions, split_modules

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["best_options", "check_immortalize", "describe", "main", "stock_arguments"]

# What the entrypoint does when neither a flag nor a FORKMEM_AIRFLOW_* variable says otherwise:
# the best mode the safety suite covers. --forkmem-plain goes back to AirflowOptions' defaults.
_BEST = ("warmup", "immortalize", "rehearse", "fork_server")

_airflow = _private_api.airflow

# On/off switches: None means "not given", so FORKMEM_AIRFLOW_* still applies.
_SWITCHES = (
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
        "warmup(immortalize=True): parent objects immortal (CPython 3.12+)",
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
    (
        "--forkmem-no-warmup",
        "forkmem_warmup",
        False,
        "collect + freeze instead of forkmem.warmup() (and so nothing immortal)",
    ),
    (
        "--forkmem-no-immortalize",
        "forkmem_immortalize",
        False,
        "warm up, but leave the manager's objects mortal",
    ),
    (
        "--forkmem-no-rehearse",
        "forkmem_rehearse",
        False,
        "do not parse forkmem's own DAG in the manager first",
    ),
    (
        "--forkmem-no-pack-code",
        "forkmem_pack_code",
        False,
        "rehearse without packing the code the rehearsal runs",
    ),
    (
        "--forkmem-no-fork-server",
        "forkmem_fork_server",
        False,
        "let Airflow fork parse children from the manager itself",
    ),
)


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
    _private_api.add_dag_processor_arguments(dag)
    group = dag.add_argument_group("forkmem")
    for flag, dest, value, text in _SWITCHES:
        group.add_argument(
            flag, dest=dest, action="store_const", const=value, default=None, help=text
        )
    group.add_argument(
        "--forkmem-plain",
        action="store_true",
        help="the plain collect + freeze: no warm-up, immortalization, rehearsal or fork server "
        "unless asked for by another flag (the default is the best mode this runtime supports)",
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


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "freeze": args.forkmem_freeze,
        "warmup": args.forkmem_warmup,
        "immortalize": args.forkmem_immortalize,
        "measure_children": args.forkmem_measure_children,
        "rehearse": args.forkmem_rehearse,
        "pack_code": args.forkmem_pack_code,
        "fork_server": args.forkmem_fork_server,
        "stats_file": args.forkmem_stats_file,
        "preimport": split_modules(args.forkmem_preimport) if args.forkmem_preimport else None,
    }


def best_options(
    flags: Mapping[str, Any], *, plain: bool = False, environ: Mapping[str, str] | None = None
) -> tuple[AirflowOptions, tuple[str, ...]]:
    """The entrypoint's options and what of the best mode was skipped (``"what: why"``).

    ``flags`` are field -> value (``None``: not given); they and ``FORKMEM_AIRFLOW_*`` variables
    win. What neither sets is the best mode: warm-up, immortalization where the runtime
    supports it, the parse rehearsal and the fork server (Linux). ``plain`` leaves unset fields
    at [`AirflowOptions`][forkmem.integrations.airflow.AirflowOptions]' own defaults (collect +
    freeze).
    """
    env = os.environ if environ is None else environ
    given = {k for k, v in flags.items() if v is not None}
    given |= {name for name in (*_BEST, "freeze") if ENV_PREFIX + name.upper() in env}
    chosen = dict(flags)
    skipped: list[str] = []
    explicit = AirflowOptions.from_env(env, **flags)
    if not plain and explicit.freeze:
        for name in _BEST:
            if name not in given:
                chosen[name] = True
        if "immortalize" not in given:
            reason = unsupported_reason()
            if not (chosen.get("warmup") or explicit.warmup):
                chosen["immortalize"] = None  # warm-up turned off: nothing to immortalize
            elif reason is not None:
                chosen["immortalize"] = None
                skipped.append(f"immortalize: {reason}")
        if "fork_server" not in given and not sys.platform.startswith("linux"):
            chosen["fork_server"] = None
            skipped.append("fork server: it needs Linux (PR_SET_CHILD_SUBREAPER)")
    return AirflowOptions.from_env(env, **chosen), tuple(skipped)


def _run_dag_processor(args: argparse.Namespace) -> None:
    # The body of Airflow's own ``dag_processor`` command, with forkmem's manager.
    daemon_utils = _airflow("airflow.cli.commands.daemon_utils")
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
    run = _private_api.run_job(manager)
    hot_reload = getattr(cli_utils, "should_enable_hot_reload", None)
    if hot_reload is not None and hot_reload(args):
        _airflow("airflow.cli.hot_reload").run_with_reloader(run, process_name="dag-processor")
        return
    daemon_utils.run_command_with_daemon_option(
        args=args, process_name="dag-processor", callback=run, should_setup_logging=True
    )


def check_immortalize(options: AirflowOptions) -> None:
    """Fail before Airflow starts, not from inside its job after the set-up."""
    if options.immortalize:
        from forkmem._immortal import unsupported_reason

        reason = unsupported_reason()
        if reason is not None:
            raise UnsupportedRuntime(f"--forkmem-immortalize: {reason}")


def describe(options: AirflowOptions) -> str:
    """The mode and the extras, e.g. ``"immortalize + rehearse + fork server"``."""
    parts = [options.mode]
    if options.rehearse:
        parts.append("rehearse")
    if options.fork_server:
        parts.append("fork server")
    return " + ".join(parts)


def stock_arguments(arguments: Sequence[str]) -> list[str]:
    """``arguments`` without forkmem's own options: what ``airflow`` itself accepts."""
    valued = ("--forkmem-preimport", "--forkmem-stats-file")
    kept: list[str] = []
    skip_value = False
    for arg in arguments:
        if skip_value:
            skip_value = False
        elif arg in valued:
            skip_value = True
        elif not arg.startswith("--forkmem-"):
            kept.append(arg)
    return kept


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entrypoint; returns the exit status.

    ``python -m forkmem.integrations.airflow dag-processor [airflow dag-processor arguments]
    [--forkmem-plain] [--forkmem-[no-]warmup] [--forkmem-[no-]immortalize] [--forkmem-no-freeze]
    [--forkmem-no-measure] [--forkmem-[no-]rehearse] [--forkmem-[no-]fork-server]
    [--forkmem-preimport MODULES] [--forkmem-stats-file PATH]``.

    Without flags it runs the best mode this runtime supports (`best_options()`), with one
    warning naming what it skipped and why. With ``FORKMEM_DISABLE=1`` it runs ``airflow`` itself
    with the same arguments, minus forkmem's.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    if disabled("airflow"):
        # Stock Airflow, exactly: the same command without forkmem's options.
        stock = [sys.executable, "-m", "airflow", *stock_arguments(arguments)]
        sys.stderr.flush()
        os.execv(sys.executable, stock)
    try:
        _private_api.airflow_version()
        AirflowOptions.from_env()  # bad variables fail before Airflow starts
        parser = _build_parser()
        args = parser.parse_args(arguments)
        args.forkmem_options, skipped = best_options(_flags(args), plain=args.forkmem_plain)
        check_immortalize(args.forkmem_options)
    except ForkmemError as exc:
        print(f"forkmem: {exc}", file=sys.stderr)
        return 2
    if skipped:  # printed: Airflow has not set up logging yet, and this line must not be lost
        print(
            f"forkmem: running {describe(args.forkmem_options)}; skipped {'; '.join(skipped)}",
            file=sys.stderr,
        )
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
