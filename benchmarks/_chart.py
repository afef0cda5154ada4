"""The benchmarks' one chart helper: a small PNG beside each table, in docs/images/.

matplotlib is optional: without it a benchmark prints its table, says the chart was skipped
and exits normally. Charts are kept small (80 dpi, a few series) so each PNG stays < 100 KiB.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "images")
# The baseline comes first, in grey; ten colours cover the longest variant list (gunicorn).
COLORS = (
    "#9e9e9e", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728",
    "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
)  # fmt: skip


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("chart skipped: matplotlib is not installed (pip install matplotlib)")
        return None
    return plt


def _figure():  # type: ignore[no-untyped-def]
    """``(pyplot, figure, axes)`` of one small chart, or ``None`` without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7.2, 3.6))
    ax.spines[["top", "right"]].set_visible(False)
    return plt, fig, ax


def _save(plt, fig, name: str) -> str:  # type: ignore[no-untyped-def]
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, f"{name}.png")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"chart: {os.path.relpath(path)}")
    return path


def bar_chart(
    name: str,
    title: str,
    groups: Sequence[str],
    series: dict[str, Sequence[float]],
    *,
    unit: str,
    highlight: Sequence[str] | None = None,
) -> str | None:
    """Grouped bars: one group per label in ``groups``, one bar per series (baseline first).

    With ``highlight``, the bars of a single series are coloured by group instead: the groups
    it names (forkmem's) in blue, the others (the baselines) in grey."""
    chart = _figure()
    if chart is None:
        return None
    plt, fig, ax = chart
    n = len(series)
    width = 0.8 / n
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        color: object = COLORS[i % len(COLORS)]
        if highlight is not None:
            color = [COLORS[1] if g in highlight else COLORS[0] for g in groups]
        bars = ax.bar(xs, values, width, label=label, color=color)
        # Label the bars worth reading; a row of "0.01" labels only hides the ticks.
        top = max((v for vals in series.values() for v in vals), default=0)
        texts = [f"{v:.3g}" if v >= top * 0.02 else "" for v in values]
        ax.bar_label(bars, labels=texts, fontsize=7 if n < 3 else 6, padding=2)
    many = len(groups) > 5
    ax.set_xticks(
        range(len(groups)),
        groups,
        fontsize=8,
        rotation=20 if many else 0,
        ha="right" if many else "center",
    )
    ax.set_ylabel(unit)
    ax.set_title(title, fontsize=10)
    ax.margins(y=0.15)
    if n > 3:  # many series: beside the axes, where it cannot cover a bar
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    elif n > 1:
        ax.legend(fontsize=8)
    return _save(plt, fig, name)


def line_chart(
    name: str,
    title: str,
    xs: Sequence[float],
    series: dict[str, Sequence[float]],
    *,
    xlabel: str,
    unit: str,
) -> str | None:
    """One line per series over ``xs`` (baseline first, in grey)."""
    chart = _figure()
    if chart is None:
        return None
    plt, fig, ax = chart
    for i, (label, values) in enumerate(series.items()):
        ax.plot(xs, values, label=label, color=COLORS[i % len(COLORS)], lw=2, marker="o", ms=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(unit)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(plt, fig, name)
