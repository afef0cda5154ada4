"""`forkmem demo` really forks, and the figures it prints show the effect of frozen()."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.linux_only


def test_demo_json_shows_frozen_children_copy_far_less() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "forkmem", "demo", "--heap-mib", "80", "--children", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    data = json.loads(out.stdout[out.stdout.index("{") :])
    heap = data["heap_bytes"]
    plain = data["scenarios"]["without forkmem"]["children_private_dirty"]
    frozen = data["scenarios"]["forkmem.frozen()"]["children_private_dirty"]
    assert len(plain) == len(frozen) == 2
    assert data["objects_frozen"] > 300_000
    assert all(d > 0.30 * heap for d in plain), (plain, heap)
    assert all(d < 0.05 * heap for d in frozen), (frozen, heap)
    s_plain = data["scenarios"]["without forkmem"]
    s_frozen = data["scenarios"]["forkmem.frozen()"]
    assert s_frozen["tree_pss"] < s_plain["tree_pss"]


def test_demo_rejects_tiny_heap() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "forkmem", "demo", "--heap-mib", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "--heap-mib" in out.stderr
