"""RecyclePolicy / RecycleMonitor decisions, the shared slot and the counters."""

from __future__ import annotations

import os
import signal

import pytest

import forkmem
from forkmem.errors import InvalidArgument
from forkmem.recycle import (
    RecycleEvent,
    RecycleMonitor,
    RecyclePolicy,
    RecycleSlot,
    record_recycle,
    recycle_stats,
    register_collector,
)

MiB = 2**20


def _usage(uss: int) -> forkmem.MemoryUsage:
    # A real sample of this process with its USS replaced: the monitor reads one field.
    real = forkmem.memory()
    fields = {name: getattr(real, name) for name in real.__dataclass_fields__}
    fields["uss"] = uss
    return type(real)(**fields)


def test_build_parses_sizes_and_none_means_off() -> None:
    assert RecyclePolicy.build(None) is None
    policy = RecyclePolicy.build("200 MiB", "1 GiB", measure="pss", samples=3)
    assert policy == RecyclePolicy(200 * MiB, 2**30, "pss", 3)
    with pytest.raises(InvalidArgument, match="configure"):
        RecyclePolicy.build("2 parsecs", where="configure()")


@pytest.mark.parametrize(
    "args",
    [(0,), (True,), (None, None), (100, 50), (100, None, "vss"), (100, None, "uss", 0)],
)
def test_bad_policies_are_typed(args: tuple[object, ...]) -> None:
    with pytest.raises(InvalidArgument):
        RecyclePolicy(*args)  # type: ignore[arg-type]


def test_soft_limit_needs_consecutive_samples() -> None:
    decided: list[RecycleEvent] = []
    monitor = RecycleMonitor(
        RecyclePolicy(100 * MiB, samples=2),
        integration="test",
        served=lambda: 7,
        on_soft=decided.append,
    )
    # Each sample over the limit asks for a quick confirmation (True); one under it does not.
    hurry = [monitor.observe(_usage(uss * MiB)) for uss in (150, 50, 150, 90, 150)]
    assert hurry == [True, False, True, False, True]  # never two in a row
    assert decided == []
    assert not monitor.retiring
    assert monitor.observe(_usage(160 * MiB)) is False  # decided: nothing left to confirm
    assert monitor.retiring
    [event] = decided
    assert (event.kind, event.value, event.limit, event.samples, event.served) == (
        "soft", 160 * MiB, 100 * MiB, 2, 7,
    )  # fmt: skip
    assert event.reason == "uss 160.0 MiB > 100.0 MiB for 2 samples"
    monitor.observe(_usage(170 * MiB))
    assert len(decided) == 1  # decided once


def test_hard_limit_acts_at_the_first_sample() -> None:
    hard: list[RecycleEvent] = []
    monitor = RecycleMonitor(
        RecyclePolicy(100 * MiB, 200 * MiB, samples=5),
        integration="test",
        served=lambda: 0,
        on_soft=lambda e: None,
        on_hard=hard.append,
    )
    monitor.observe(_usage(250 * MiB))
    assert [e.kind for e in hard] == ["hard"]


def test_default_hard_action_kills_the_worker() -> None:
    slot = RecycleSlot()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            monitor = RecycleMonitor(
                RecyclePolicy(None, 10 * MiB),
                integration="test",
                served=lambda: 3,
                on_soft=lambda e: None,
                slot=slot,
            )
            monitor.observe(_usage(20 * MiB))
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signal.SIGKILL
    event = slot.read("test")
    assert event is not None
    assert event.pid == pid
    assert event.kind == "hard"
    assert (event.value, event.limit, event.served) == (20 * MiB, 10 * MiB, 3)
    slot.close()
    assert slot.read("test") is None


def test_stats_count_and_collectors_run() -> None:
    before = recycle_stats()
    calls: list[int] = []

    def collect() -> None:
        calls.append(1)

    register_collector(collect)
    record_recycle(RecycleEvent("unit", 1, "soft", "uss", 2, 1, 2, 0, 0.0, 0.0))
    after = recycle_stats()
    assert calls
    assert after.total == before.total + 1
    assert after.by_integration["unit"] == before.by_integration.get("unit", 0) + 1
    assert after.last is not None
    assert after.last.integration == "unit"
    assert forkmem.recycle_stats is recycle_stats


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_private_memory": "a lot"},
        {"max_private_memory": "1 GiB", "max_private_memory_hard": "1 MiB"},
        {"max_private_memory": "1 GiB", "recycle_measure": "heap"},
        {"max_private_memory": "1 GiB", "recycle_samples": True},
    ],
)
def test_gunicorn_configure_rejects_bad_recycle_options(kwargs: dict[str, object]) -> None:
    from forkmem.integrations import gunicorn

    with pytest.raises(InvalidArgument, match=r"configure\(\)"):
        gunicorn.configure(**kwargs)  # type: ignore[arg-type]
    gunicorn.configure()  # back to the defaults for the other tests
