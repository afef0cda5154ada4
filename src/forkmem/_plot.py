"""Charts of a watched tree's memory (matplotlib, the ``plot`` extra, imported only here)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from forkmem.errors import InvalidArgument, MissingDependency

if TYPE_CHECKING:
    from forkmem._growth import GrowthReport

__all__ = ["check_path", "plot_growth", "pyplot"]

_FORMATS = {".png": "png", ".svg": "svg"}
_MIB = 1024 * 1024


def pyplot() -> Any:
    """matplotlib's pyplot on a file-only backend; a typed error without the plot extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: never needs a display
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependency("--plot", "matplotlib", "plot") from None
    return plt


def check_path(path: str) -> str:
    """The format ``path`` asks for; a typed error for a suffix or directory that cannot work.

    Checked before a watch starts, so a typo costs nothing instead of the whole watch."""
    fmt = _FORMATS.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise InvalidArgument(f"--plot: {path!r} must end in .png or .svg")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InvalidArgument(f"--plot: cannot write {path}: no such directory {folder}")
    if not os.access(folder, os.W_OK):
        raise InvalidArgument(f"--plot: cannot write {path}: directory {folder} is not writable")
    if os.path.isdir(path):
        raise InvalidArgument(f"--plot: cannot write {path}: it is a directory")
    return fmt


def plot_growth(report: GrowthReport, path: str, *, top: int = 5) -> None:
    """Write ``report``'s series to ``path`` (``.png`` or ``.svg``): tree PSS, the ``top``
    processes' USS and the cgroup, MiB against seconds."""
    fmt = check_path(path)
    plt = pyplot()
    s = report.series
    fig, (ax_tree, ax_procs) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    ax_tree.plot(s["t"], [v / _MIB for v in s["tree_pss"]], label="tree PSS", lw=2)
    for kind, values in s["cgroup"].items():
        if values and None not in values:
            ax_tree.plot(s["t"], [v / _MIB for v in values], label=f"cgroup {kind}", lw=1)
    ax_tree.set_ylabel("MiB")
    ax_tree.legend(loc="best", fontsize=8)
    primary = report.primary
    title = "no growth above the noise" if primary is None else f"growth: {primary.kind}"
    ax_tree.set_title(f"forkmem watch {report.root or ''}: {title}", fontsize=10)
    growth = {pid: ser["uss"][-1] - ser["uss"][0] for pid, ser in s["uss"].items()}
    for pid in sorted(growth, key=lambda p: -growth[p])[:top]:
        ser = s["uss"][pid]
        ax_procs.plot(ser["t"], [v / _MIB for v in ser["uss"]], label=f"{pid} {s['names'][pid]}")
    ax_procs.set_ylabel("USS, MiB")
    ax_procs.set_xlabel("seconds")
    ax_procs.legend(loc="best", fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path, format=fmt, dpi=80)
    except OSError as exc:
        raise InvalidArgument(f"--plot: cannot write {path}: {exc.strerror}") from None
    finally:
        plt.close(fig)
