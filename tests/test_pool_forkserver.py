"""forkserver pools (the stdlib default from Python 3.14) and the parent's heap they cannot share.

Workers of a forkserver pool are forked from the fork server, a fresh interpreter: nothing the
parent built is in them. Each scenario runs in its own interpreter (one fork server per process).
"""

from __future__ import annotations

import os
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

from _pool_scripts import run_app, write_app
from forkmem.pool import fork_pool, process_pool_executor

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="fork and forkserver: Linux")

MiB = 1024 * 1024
HEAP_ITEMS = 450_000  # ~50 MiB of one-item lists

# The data module: importing it builds the heap (what an app's models/config module does).
_BIG = "HEAP = [[i] for i in range({items})]\n"

# The task's module imports the data: a worker that has not got it builds its own copy.
_TASKS = textwrap.dedent(
    """
    import gc
    import forkmem
    import fs_big

    def private_after_collect(_=None):
        gc.collect()
        return len(fs_big.HEAP), forkmem.memory().uss
    """
)

_APP = textwrap.dedent(
    """
    import json, multiprocessing, sys, warnings
    from forkmem import ForkmemWarning, memory
    from forkmem.pool import fork_pool

    if __name__ == "__main__":
        # Built under the main guard: the fork server (which runs this file as __mp_main__ on
        # 3.14) does not build it.
        import fs_big
        from fs_tasks import private_after_collect

        mode = sys.argv[1]
        if mode == "preload":
            multiprocessing.set_forkserver_preload(["fs_big"])
        context = "fork" if mode == "fork" else "forkserver"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pool = fork_pool(2, context=context)
        with pool:
            results = pool.map(private_after_collect, range(2), chunksize=1)
        print(json.dumps({
            "parent_uss": memory().uss,
            "warnings": [str(w.message) for w in caught if w.category is ForkmemWarning],
            "items": [n for n, _ in results],
            "worker_uss": [uss for _, uss in results],
        }))
    """
)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_app(
        tmp_path_factory.mktemp("forkserver_gap"),
        _APP,
        fs_big=_BIG.format(items=HEAP_ITEMS),
        fs_tasks=_TASKS,
    )


def _run(app: Path, mode: str) -> dict[str, object]:
    result: dict[str, object] = run_app(app, mode, timeout=120)
    assert result["items"] == [HEAP_ITEMS, HEAP_ITEMS]
    return result


def _mib(values: object) -> list[float]:
    assert isinstance(values, list)
    return [round(v / MiB, 1) for v in values]


def test_forkserver_pool_warns_with_the_size_and_each_fix_shares(app: Path) -> None:
    plain = _run(app, "forkserver")
    messages = plain["warnings"]
    assert isinstance(messages, list)
    assert len(messages) == 1, messages
    message = messages[0]
    assert "context='fork'" in message, message
    assert "set_forkserver_preload" in message, message
    # The size it names is the parent's heap (~50 MiB), not a token figure.
    stated = float(message.split(" holds ")[1].split(" MiB")[0])
    assert 35 <= stated <= 200, message
    # What the warning says happens: every worker rebuilt the heap privately.
    assert min(_mib(plain["worker_uss"])) > 35, _mib(plain["worker_uss"])

    for fix in ("fork", "preload"):
        fixed = _run(app, fix)
        assert fixed["warnings"] == [], (fix, fixed["warnings"])
        # Inherited and frozen: a worker's own gc.collect() copies almost nothing of it.
        assert max(_mib(fixed["worker_uss"])) < 20, (fix, _mib(fixed["worker_uss"]))
        assert max(_mib(fixed["worker_uss"])) < 0.5 * min(_mib(plain["worker_uss"]))


def _parent_of_worker() -> int:
    return os.getppid()


def test_no_context_forks_whatever_the_stdlib_default() -> None:
    # 3.14's stdlib default is forkserver; fork_pool() and process_pool_executor() still fork
    # (workers are this process's children, not the fork server's).
    with fork_pool(1) as pool:
        assert pool._ctx.get_start_method() == "fork"  # type: ignore[attr-defined]
        assert pool.apply(_parent_of_worker) == os.getpid()
    with process_pool_executor(1) as executor:
        assert executor.submit(_parent_of_worker).result(timeout=60) == os.getpid()
