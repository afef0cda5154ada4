"""Where a process tree's memory growth comes from, from a series of samples.

Every page a tree adds shows in the sum of its PSS, and each cause moves the per-process
figures differently, so a least-squares slope of each series tells them apart:

- a *leak* (new memory a process allocates) raises that process's RSS and USS together;
- *copy-on-write* (a child writing an inherited page) leaves every RSS as it was but raises PSS:
  the page is now private to the child and to the parent;
- *more processes*: the tree's PSS grows by more than its long-lived members' do;
- *kernel* memory (slab: dentries, inodes) and *page cache* show only in the cgroup.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from forkmem._snapshot import TreeSample
    from forkmem.cgroup import CgroupMemory

__all__ = ["Cause", "GrowthReport", "analyze", "slope"]

_HOUR = 3600.0
_MIB = 1024 * 1024
# A slope is only worth naming above what one MiB of jitter over the whole window would fake.
_JITTER = 1 * _MIB

_FIXES = {
    "leak_root": (
        "the long-lived process allocates and keeps it: a leak in its code or a library (the "
        "seed case: OpenTelemetry spans never freed). Find it with tracemalloc; recycling "
        "workers does not shrink the parent, restart it on a schedule until it is fixed"
    ),
    "leak_child": (
        "a long-lived worker allocates and keeps it: recycle workers by private memory "
        "(forkmem's max_private_memory for gunicorn, Celery and forkmem pools) and find the "
        "leak with tracemalloc"
    ),
    "cow": (
        "children copy the heap they inherited: freeze it before forking (forkmem.frozen() or "
        "forkmem.freeze_around_fork()) so collections stop writing object headers; on CPython "
        "3.12+ forkmem.warmup(immortalize=True) also stops reference-count writes; recycle "
        "the workers that copied most (max_private_memory)"
    ),
    "processes": (
        "the tree gains processes: each new one costs its private memory; cap the pool size "
        "or find what keeps forking"
    ),
    "kernel": (
        "kernel memory (slab: dentries, inodes) grows while process memory does not: an "
        "interpreter that cannot write .pyc files tries again on every start and leaves "
        "negative dentries (Airflow PR #58944); compile the bytecode when the image is built "
        "(forkmem bytecode --fix DIR) and check with forkmem doctor PID"
    ),
    "sock": "socket buffers grow: connections whose data nobody reads",
    "page_cache": (
        "page cache grows (files read or written): the kernel reclaims it under pressure, so "
        "it rarely causes an OOM kill, but it counts against the cgroup limit"
    ),
}


@dataclass(frozen=True, slots=True)
class Cause:
    """One source of growth: ``kind``, its ``rate`` in bytes per hour, and what to do."""

    kind: str
    rate: float
    detail: str
    fix: str
    pid: int | None = None
    command: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rate_mib_per_hour": round(self.rate / _MIB, 1),
            "pid": self.pid,
            "command": self.command,
            "detail": self.detail,
            "fix": self.fix,
        }


@dataclass(frozen=True, slots=True)
class GrowthReport:
    """What `analyze()` found; ``primary`` is the largest cause, ``None`` if none counts."""

    root: int | None
    samples: int
    duration: float
    processes: tuple[int, int]
    tree_rate: float
    cgroup_rate: float | None
    threshold: float
    causes: tuple[Cause, ...]
    series: dict[str, Any] = field(repr=False)

    @property
    def primary(self) -> Cause | None:
        # Page cache is reclaimable: name it only when nothing else grows.
        ranked = [c for c in self.causes if c.kind != "page_cache"] or list(self.causes)
        return max(ranked, key=lambda c: c.rate, default=None)

    def as_dict(self) -> dict[str, Any]:
        primary = self.primary
        return {
            "root": self.root,
            "samples": self.samples,
            "duration": round(self.duration, 3),
            "processes": {"first": self.processes[0], "last": self.processes[1]},
            "tree_pss_mib_per_hour": round(self.tree_rate / _MIB, 1),
            "cgroup_mib_per_hour": None
            if self.cgroup_rate is None
            else round(self.cgroup_rate / _MIB, 1),
            "threshold_mib_per_hour": round(self.threshold / _MIB, 1),
            "primary": None if primary is None else primary.as_dict(),
            "causes": [c.as_dict() for c in self.causes],
        }

    def summary(self) -> str:
        lines = [
            f"{self.samples} samples over {self.duration:.1f} s, "
            f"{self.processes[0]} -> {self.processes[1]} processes",
            f"tree PSS   {_rate(self.tree_rate)}",
        ]
        if self.cgroup_rate is not None:
            lines.append(f"cgroup     {_rate(self.cgroup_rate)}")
        if not self.causes:
            lines.append(
                f"no growth above {_rate(self.threshold)} (the noise floor for this window)"
            )
            return "\n".join(lines)
        lines.append("where it comes from:")
        for cause in self.causes:
            lines.append(f"  {cause.kind:<11}{_rate(cause.rate)}  {cause.detail}")
        primary = self.primary
        if primary is not None:
            lines.append(f"verdict: {primary.kind}: {primary.detail}")
            lines.append(f"fix: {primary.fix}")
        return "\n".join(lines)


def _rate(bytes_per_hour: float) -> str:
    return f"{bytes_per_hour / _MIB:+10.1f} MiB/h"


def slope(times: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` over ``times`` (units per second); 0 with < 2 points."""
    n = len(times)
    if n < 2:
        return 0.0
    mean_t = sum(times) / n
    mean_v = sum(values) / n
    var = sum((t - mean_t) ** 2 for t in times)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in zip(times, values, strict=True)) / var


def analyze(
    samples: Sequence[TreeSample], cgroups: Sequence[CgroupMemory | None] | None = None
) -> GrowthReport:
    """Rates and causes from ``samples`` (and the matching cgroup readings, if any)."""
    if not samples:
        raise ValueError("analyze needs at least one sample")
    t0 = samples[0].time
    times = [s.time - t0 for s in samples]
    duration = times[-1]
    threshold = _JITTER / duration * _HOUR if duration > 0 else float("inf")
    totals = [s.totals()["pss"] or 0 for s in samples]
    tree_rate = slope(times, totals) * _HOUR

    # Per-process series, for the members present from the first sample to the last.
    series: dict[int, dict[str, list[float]]] = {}
    names: dict[int, str] = {}
    for t, sample in zip(times, samples, strict=True):
        for p in sample.processes:
            s = series.setdefault(p.pid, {"t": [], "rss": [], "pss": [], "uss": []})
            s["t"].append(t)
            s["rss"].append(p.fields["rss"])
            s["pss"].append(float(p.fields["pss"] or 0))
            s["uss"].append(float(p.fields["uss"] or 0))
            names[p.pid] = p.name
    first = {p.pid for p in samples[0].processes}
    last = {p.pid for p in samples[-1].processes}
    lasting = sorted(first & last)

    causes: list[Cause] = []
    persistent_pss = 0.0
    cow_rate = 0.0
    cow_by_pid: dict[int, float] = {}
    for pid in lasting:
        s = series[pid]
        rss, pss, uss = (slope(s["t"], s[k]) * _HOUR for k in ("rss", "pss", "uss"))
        persistent_pss += pss
        # New memory raises RSS and USS alike; a copied page raises USS (and PSS) only.
        new = max(0.0, min(rss, uss))
        cow_rate += pss - new
        if pid != samples[0].root:
            cow_by_pid[pid] = uss - new
        if new > threshold:
            is_root = pid == samples[0].root
            causes.append(
                Cause(
                    "leak",
                    new,
                    f"pid {pid} ({names[pid]}) keeps allocating: its private memory grows "
                    f"{new / _MIB:.1f} MiB/h with RSS, not by copy-on-write",
                    _FIXES["leak_root" if is_root else "leak_child"],
                    pid=pid,
                    command=names[pid],
                )
            )
    if cow_rate > threshold:
        top = sorted(cow_by_pid.items(), key=lambda kv: -kv[1])[:3]
        who = ", ".join(f"{pid} {rate / _MIB:+.0f}" for pid, rate in top if rate > 0)
        causes.append(
            Cause(
                "cow",
                cow_rate,
                f"children copy inherited pages (shared -> private) at {cow_rate / _MIB:.1f} "
                f"MiB/h in all; largest copiers, MiB/h: {who or 'none'}",
                _FIXES["cow"],
            )
        )
    churn = tree_rate - persistent_pss
    counts = (len(samples[0].processes), len(samples[-1].processes))
    if churn > threshold:
        causes.append(
            Cause(
                "processes",
                churn,
                f"processes come and go ({counts[0]} -> {counts[1]}); the ones not there "
                f"throughout add {churn / _MIB:.1f} MiB/h",
                _FIXES["processes"],
            )
        )

    cgroup_rate = None
    cg_series: dict[str, list[float | None]] = {}
    readings = list(cgroups or [])
    if readings and all(cg is not None for cg in readings) and len(readings) == len(samples):
        present = [cg for cg in readings if cg is not None]
        cgroup_rate = slope(times, [cg.current for cg in present]) * _HOUR
        kinds = {
            "kernel": [cg.kernel if cg.kernel is not None else cg.slab for cg in present],
            "sock": [cg.stat.get("sock") for cg in present],
            "page_cache": [cg.file for cg in present],
        }
        for kind, values in kinds.items():
            cg_series[kind] = list(values)
            if any(v is None for v in values):
                continue
            rate = slope(times, [float(v or 0) for v in values]) * _HOUR
            if rate > threshold:
                causes.append(
                    Cause(
                        kind,
                        rate,
                        f"the cgroup's {kind} grows {rate / _MIB:.1f} MiB/h",
                        _FIXES[kind],
                    )
                )
        cg_series["current"] = [float(cg.current) for cg in present]
    causes.sort(key=lambda c: -c.rate)
    return GrowthReport(
        root=samples[0].root,
        samples=len(samples),
        duration=duration,
        processes=counts,
        tree_rate=tree_rate,
        cgroup_rate=cgroup_rate,
        threshold=threshold,
        causes=tuple(causes),
        series={
            "t": times,
            "tree_pss": totals,
            "uss": {pid: series[pid] for pid in series},
            "names": names,
            "cgroup": cg_series,
        },
    )
