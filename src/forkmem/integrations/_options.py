"""The options every prefork-server integration shares (private): gunicorn's ``configure()``
and Celery's ``install()`` take the same switches and keep them in one type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from forkmem._validate import check_bool, check_duty_cycle, check_warmup_for_immortalize

if TYPE_CHECKING:
    from forkmem.recycle import RecyclePolicy

__all__ = ["WorkerOptions"]


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """What an integration does before the first fork and in each worker."""

    warmup: bool = False
    """``forkmem.warmup()`` instead of a plain collect-and-freeze."""
    immortalize: bool | None = False
    """Passed on to the warm-up; ``None``: wherever the runtime supports it."""
    sample_memory: bool = True
    """Sample each worker's peak private memory (and log it when the worker exits)."""
    duty_cycle: float = 0.01
    """The largest share of one CPU the sampling may take."""
    recycle: RecyclePolicy | None = None
    """When to replace a worker by its memory (``None``: never)."""
    metrics: str | None = None
    """``HOST:PORT`` where a ``forkmem export`` process serves Prometheus metrics, or None."""

    @classmethod
    def checked(
        cls,
        owner: str,
        *,
        warmup: object,
        immortalize: object,
        sample_memory: object,
        duty_cycle: object,
        recycle: RecyclePolicy | None = None,
        metrics: str | None = None,
        immortalize_auto: bool = False,
    ) -> WorkerOptions:
        """Options from a public function's arguments, each checked with a typed error that
        names ``owner`` (``"configure"``); ``immortalize_auto`` lets ``immortalize`` be None."""
        check_bool(f"{owner}(warmup=...)", warmup)
        check_bool(f"{owner}(immortalize=...)", immortalize, none_ok=immortalize_auto)
        check_bool(f"{owner}(sample_memory=...)", sample_memory)
        assert isinstance(warmup, bool)  # narrowed by the checks above
        assert immortalize is None or isinstance(immortalize, bool)
        assert isinstance(sample_memory, bool)
        check_warmup_for_immortalize(owner, warmup=warmup, immortalize=immortalize)
        return cls(
            warmup=warmup,
            immortalize=immortalize,
            sample_memory=sample_memory,
            duty_cycle=check_duty_cycle(f"{owner}(duty_cycle=...)", duty_cycle),
            recycle=recycle,
            metrics=metrics,
        )
