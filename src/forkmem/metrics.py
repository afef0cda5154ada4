"""Prometheus metrics for a process tree, read from ``/proc`` at scrape time.

Needs the ``metrics`` extra (``pip install 'forkmem[metrics]'``, the official
``prometheus_client``); importing this module without it raises
`MissingDependency`. `TreeCollector` plugs into any
``prometheus_client`` registry; `serve_metrics()` serves one on its own port, which is
what ``forkmem export`` runs.

Names follow Prometheus's conventions: the ``forkmem_`` prefix, base units with a ``_bytes``
suffix, ``_total`` for counters; per-process series carry ``pid``, ``role`` (``root`` or
``child``) and ``command`` labels, per-tree series a ``root`` label (the root's pid).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from forkmem import _snapshot
from forkmem._exporter import parse_listen, recycle_counts
from forkmem.errors import InvalidArgument, MissingDependency, NoSuchProcess

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.exposition import start_http_server
    from prometheus_client.registry import CollectorRegistry
except ImportError:
    raise MissingDependency("forkmem.metrics", "prometheus_client", "metrics") from None

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterator, Mapping

    from prometheus_client.metrics_core import Metric

__all__ = ["MetricsServer", "TreeCollector", "parse_listen", "recycle_counts", "serve_metrics"]

# (metric suffix, sample attribute or MemoryUsage field, help)
_PROCESS_GAUGES = (
    ("uss", "uss", "Unique set size: memory only this process maps"),
    ("pss", "pss", "Proportional set size: shared pages divided among their mappers"),
    ("rss", "rss", "Resident set size, shared pages counted in full"),
    ("private_dirty", "private_dirty", "Private dirty pages: copy-on-write copies and new data"),
    ("shared_with_parent", None, "Resident memory still shared, for children of a sampled parent"),
    ("peak_rss", None, "High-water mark of the resident set size (VmHWM)"),
)
_TREE_GAUGES = (
    ("rss", "Sum of the tree's RSS"),
    ("pss", "Sum of the tree's PSS: what the tree really costs"),
    ("uss", "Sum of the tree's USS"),
    ("shared_savings", "Sum of RSS minus sum of PSS: what sharing saves"),
)


def _recycle_families(counts: Mapping[str, Any]) -> Iterator[Metric]:
    total = CounterMetricFamily(
        "forkmem_worker_recycles",
        "Workers recycled for their memory by this tree's master",
        labels=["kind"],
    )
    for kind in ("soft", "hard"):
        total.add_metric([kind], float(counts.get(kind, 0)))
    yield total
    if "last_value" in counts:
        last = GaugeMetricFamily(
            "forkmem_worker_last_recycle_bytes",
            "The sample that decided the last recycle",
            labels=["measure"],
        )
        last.add_metric([str(counts.get("last_measure", ""))], float(counts["last_value"]))
        yield last


class TreeCollector:
    """A ``prometheus_client`` collector for process ``pid`` (default: the caller) and its tree.

    Each scrape reads ``/proc`` afresh (one ``smaps_rollup`` per process). Processes in ``skip``
    are left out (an exporter leaves itself out). When the root is gone, only
    ``forkmem_tree_up 0`` is reported. ``recycles`` returns the workers recycled for memory
    ([`recycle_counts()`][forkmem.metrics.recycle_counts], this process's
    [`forkmem.recycle_stats()`][forkmem.recycle_stats] by default; ``None`` to leave them
    out), exported as ``forkmem_worker_recycles_total{kind}`` and
    ``forkmem_worker_last_recycle_bytes{measure}``.
    """

    def __init__(
        self,
        pid: int | None = None,
        *,
        skip: Collection[int] = (),
        recycles: Callable[[], Mapping[str, Any] | None] | None = recycle_counts,
    ) -> None:
        self.pid = pid
        self.skip = frozenset(skip)
        self.recycles = recycles

    def describe(self) -> list[Metric]:
        # Registering must not read /proc; no fixed set of series to announce.
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("forkmem_tree_up", "1 while the root process can be measured")
        try:
            sample = _snapshot.sample_tree(self.pid, skip=self.skip)
        except NoSuchProcess:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        labels = ["pid", "role", "command"]
        for suffix, field, text in _PROCESS_GAUGES:
            family = GaugeMetricFamily(f"forkmem_process_{suffix}_bytes", text, labels=labels)
            for p in sample.processes:
                value = p.get(field or suffix)
                if value is not None:
                    family.add_metric([str(p.pid), p.role, p.name], value)
            yield family
        totals = sample.totals()
        root = [str(sample.root)]
        for name, text in _TREE_GAUGES:
            value = totals.get(name)
            if value is not None:
                family = GaugeMetricFamily(f"forkmem_tree_{name}_bytes", text, labels=["root"])
                family.add_metric(root, value)
                yield family
        count = GaugeMetricFamily(
            "forkmem_tree_processes", "Processes in the tree", labels=["root"]
        )
        count.add_metric(root, len(sample.processes))
        yield count
        counts = self.recycles() if self.recycles is not None else None
        if counts is not None:
            yield from _recycle_families(counts)


class MetricsServer:
    """A running ``/metrics`` endpoint; ``port`` is the bound port, `close()` stops it."""

    def __init__(self, host: str, port: int, collector: TreeCollector) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        try:
            self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise InvalidArgument(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        self.host = host
        self.port: int = self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def serve_metrics(
    pid: int | None = None,
    *,
    listen: str = "127.0.0.1:9464",
    skip: Collection[int] = (),
    recycles: Callable[[], Mapping[str, Any] | None] | None = recycle_counts,
) -> MetricsServer:
    """Serve ``/metrics`` for the tree of ``pid`` on ``listen`` from a daemon thread.

    Port 0 picks a free port (see `MetricsServer.port`). The registry is the server's
    own, so an application's default registry is never touched.
    """
    host, port = parse_listen(listen)
    return MetricsServer(host, port, TreeCollector(pid, skip=skip, recycles=recycles))
