"""The integrations' per-worker sampler: real processes, real /proc reads, no mocks."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

from forkmem._sampler import PeakMemory, PeakSlot, Sampler, log_peak
from forkmem.errors import InvalidArgument

pytestmark = pytest.mark.linux_only

MiB = 1024 * 1024


def _fork(child: object) -> int:
    """Fork; run ``child()`` in the child and leave with os._exit, whatever happens."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            child()  # type: ignore[operator]
            code = 0
        finally:
            os._exit(code)
    return pid


def _wait(pid: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} did not finish in {timeout} s")


def test_peak_tracks_private_memory_and_survives_a_free() -> None:
    sampler = Sampler()
    assert sampler.peak() is None
    assert sampler.sample()
    first = sampler.peak()
    assert first is not None
    assert first.pid == os.getpid()
    block = bytearray(64 * MiB)  # zero-filled by calloc/mmap: write it to make it resident
    block[::4096] = b"x" * len(block[::4096])
    assert sampler.sample()
    grown = sampler.peak()
    assert grown is not None
    assert grown.peak_private_dirty - first.peak_private_dirty > 48 * MiB
    assert grown.peak_uss - first.peak_uss > 48 * MiB
    del block
    assert sampler.sample()
    after = sampler.peak()
    assert after is not None
    assert after.samples == 3
    assert after.peak_uss == grown.peak_uss  # the peak stays
    assert after.last_uss < grown.peak_uss - 32 * MiB


def test_interval_keeps_the_duty_cycle() -> None:
    sampler = Sampler(duty_cycle=0.01, min_interval=0.0)
    for _ in range(3):
        assert sampler.sample()
    peak = sampler.peak()
    assert peak is not None
    # One sample of cost c, then a pause of at least 99 c: at most 1% of one CPU.
    cost = sampler.last_sample_seconds
    assert cost > 0
    interval = sampler.next_interval()
    assert interval == pytest.approx(cost * 99)
    assert cost / (cost + interval) <= 0.0100001
    assert Sampler(min_interval=0.5).next_interval() == 0.5


def test_a_crossed_limit_is_confirmed_at_the_shortest_interval() -> None:
    answers = iter([True, None, False])
    sampler = Sampler(duty_cycle=0.0001, min_interval=0.05, on_sample=lambda _: next(answers))
    assert sampler.sample()
    assert sampler.next_interval() == 0.05  # True: confirm now, whatever the sample cost
    for _ in range(2):  # None and False: back to the duty cycle's pause
        assert sampler.sample()
        assert sampler.next_interval() == pytest.approx(
            sampler.last_sample_seconds * (1 / 0.0001 - 1)
        )
        assert sampler.next_interval() > 0.05


def test_thread_samples_until_stopped() -> None:
    sampler = Sampler(min_interval=0.01).start()
    assert sampler.start() is sampler  # idempotent
    deadline = time.monotonic() + 10
    while (sampler.peak() is None or sampler.peak().samples < 2) and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.01)
    peak = sampler.stop()
    assert peak is not None
    assert peak.samples >= 3  # two from the thread, one final
    assert not any(t.name == "forkmem-sampler" and t.is_alive() for t in _threads())
    count = peak.samples
    assert sampler.stop(final_sample=False) is not None
    assert sampler.peak().samples == count  # type: ignore[union-attr]


def _threads() -> list[object]:
    import threading

    return list(threading.enumerate())


def test_slot_carries_the_peak_of_a_killed_child() -> None:
    slot = PeakSlot()

    def child() -> None:
        # duty_cycle=1: the pause is min_interval, not 99x a sample's cost (a first sample
        # slowed to 0.1 s by a loaded machine would put the next one 10 s later).
        sampler = Sampler(slot=slot, min_interval=0.01, duty_cycle=1.0).start()
        block = bytearray(48 * MiB)
        block[::4096] = b"y" * len(block[::4096])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            peak = sampler.peak()
            if peak is not None and peak.peak_private_dirty > 40 * MiB:
                # Killed the moment this thread sees the sample: the slot must hold it already.
                os.kill(os.getpid(), signal.SIGKILL)  # no exit hook of any kind runs
            time.sleep(0.01)
        os._exit(3)  # the sampler never saw the block

    pid = _fork(child)
    status = _wait(pid, timeout=90)
    assert os.WIFSIGNALED(status), f"child exit status {os.waitstatus_to_exitcode(status)}"
    assert os.WTERMSIG(status) == signal.SIGKILL, os.WTERMSIG(status)
    peak = slot.read()
    slot.close()
    assert peak is not None
    assert peak.pid == pid, peak
    assert peak.peak_private_dirty > 40 * MiB, peak
    assert peak.samples >= 1, peak
    assert slot.read() is None  # closed


def test_slot_is_empty_until_a_sample() -> None:
    slot = PeakSlot()
    assert slot.read() is None
    peak = PeakMemory(
        pid=7,
        peak_uss=3,
        peak_private_dirty=2,
        last_uss=1,
        samples=2,
        sample_seconds=0.5,
        elapsed=1.0,
    )
    slot.write(peak)
    assert slot.read() == peak
    slot.close()
    slot.close()
    slot.write(peak)  # after close: ignored, not a crash


def test_sampler_created_before_fork_samples_the_child() -> None:
    slot = PeakSlot()
    sampler = Sampler(slot=slot)  # pid=None: resolved at start()

    def child() -> None:
        sampler.start()
        sampler.stop()

    pid = _fork(child)
    assert os.WEXITSTATUS(_wait(pid)) == 0
    peak = slot.read()
    slot.close()
    assert peak is not None
    assert peak.pid == pid


def test_dead_process_stops_sampling(caplog: pytest.LogCaptureFixture) -> None:
    pid = _fork(lambda: None)
    _wait(pid)
    sampler = Sampler(pid)
    assert sampler.sample() is False
    assert sampler.sample() is False
    sampler.start()
    with caplog.at_level(logging.INFO, logger="forkmem"):
        assert sampler.stop_and_log(label="test worker") is None
    assert f"test worker pid {pid} exited before its memory was sampled" in caplog.text


def test_log_peak_message(caplog: pytest.LogCaptureFixture) -> None:
    peak = PeakMemory(
        pid=42,
        peak_uss=12 * MiB,
        peak_private_dirty=10 * MiB,
        last_uss=MiB,
        samples=5,
        sample_seconds=0.002,
        elapsed=3.0,
    )
    with caplog.at_level(logging.INFO, logger="forkmem"):
        log_peak(peak, label="gunicorn worker")
    assert "gunicorn worker pid 42 peak private memory 12.0 MiB (USS), private dirty 10.0 MiB" in (
        caplog.text
    )
    assert "5 samples over 3.0 s, 2.00 ms each" in caplog.text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pid": 0},
        {"pid": -3},
        {"pid": True},
        {"pid": "1"},
        {"duty_cycle": 0},
        {"duty_cycle": 1.5},
        {"duty_cycle": "1%"},
        {"min_interval": -1},
        {"min_interval": float("nan")},
    ],
)
def test_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        Sampler(**kwargs)  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_sampler_running_at_fork_restarts_fresh_in_the_child() -> None:
    slot = PeakSlot()
    sampler = Sampler(slot=slot, min_interval=30.0)  # the thread samples once, then waits
    for _ in range(20):
        sampler.sample()
    sampler.start()

    def child() -> None:
        # The parent's thread does not exist here; its samples were of the parent.
        sampler.start()
        sampler.stop()

    try:
        pid = _fork(child)
        assert os.WEXITSTATUS(_wait(pid)) == 0
        peak = slot.read()  # before the parent's final sample overwrites the shared slot
    finally:
        parent_peak = sampler.stop()
        slot.close()
    assert peak is not None
    assert peak.pid == pid
    assert peak.samples <= 2  # the child's thread's first sample and the final one
    assert parent_peak is not None
    assert parent_peak.pid == os.getpid()
    assert parent_peak.samples >= 21


def test_polled_sampler_starts_no_thread_and_samples_when_due() -> None:
    before = {t.ident for t in _threads()}  # type: ignore[attr-defined]
    slot = PeakSlot()
    sampler = Sampler(slot=slot, min_interval=30.0).start(thread=False)
    try:
        assert {t.ident for t in _threads()} == before  # type: ignore[attr-defined]
        assert sampler.start(thread=False) is sampler
        first = slot.read()
        assert first is not None
        assert first.samples == 1  # start() took the first one
        assert sampler.poll() is False  # the pause (30 s) is not over: a clock read, no sample
        assert slot.read() == first
    finally:
        last = sampler.stop()
        slot.close()
    assert last is not None
    assert last.samples == 2  # stop() took the last one

    due = Sampler(min_interval=0.0, duty_cycle=1.0).start(thread=False)
    assert all(due.poll() for _ in range(3))  # no pause: every poll samples
    assert due.peak().samples == 4  # type: ignore[union-attr]


def test_a_crossed_limit_is_confirmed_at_the_first_poll_after_min_interval() -> None:
    # duty_cycle=0.0001: the pause after a sample is 9,999x its cost (a read of smaps_rollup
    # costs far more than 10 us, so > 0.1 s), unless the callback says a limit is crossed.
    calm = Sampler(duty_cycle=0.0001, min_interval=0.05, on_sample=lambda _: None)
    crossed = Sampler(duty_cycle=0.0001, min_interval=0.05, on_sample=lambda _: True)
    calm.start(thread=False)
    crossed.start(thread=False)
    time.sleep(0.1)
    assert calm.last_sample_seconds * 9999 > 0.1
    assert calm.poll() is False
    assert crossed.poll() is True
    assert (calm.peak().samples, crossed.peak().samples) == (1, 2)  # type: ignore[union-attr]


def test_poll_is_a_no_op_while_the_thread_samples() -> None:
    sampler = Sampler(min_interval=30.0).start()
    try:
        deadline = time.monotonic() + 10
        while sampler.peak() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sampler.poll() is False
        assert sampler.peak().samples == 1  # type: ignore[union-attr]
    finally:
        sampler.stop()


def test_polls_from_many_threads_sample_one_at_a_time() -> None:
    import threading

    inside = 0
    most = 0
    guard = threading.Lock()

    def on_sample(_: object) -> None:
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
        time.sleep(0.005)  # a slow sample: the others' polls arrive while it runs
        with guard:
            inside -= 1

    sampler = Sampler(min_interval=0.0, duty_cycle=1.0, on_sample=on_sample)
    sampler.start(thread=False)
    stop = time.monotonic() + 0.5
    counted = []

    def requests() -> None:
        n = 0
        while time.monotonic() < stop:
            n += sampler.poll()
        counted.append(n)

    threads = [threading.Thread(target=requests) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    peak = sampler.stop()
    assert most == 1
    assert peak is not None
    assert peak.samples == 1 + sum(counted) + 1  # start's, the polls', stop's
    assert sum(counted) > 0
