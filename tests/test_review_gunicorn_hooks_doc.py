"""Every hook the gunicorn star import defines is in the docs' hook table and hand-wired example.

A config that defines its own hooks wires forkmem's by hand from that example; a hook missing
there (post_request, which refork_after counts requests with) silently turns a feature off.
"""

from __future__ import annotations

import re
from pathlib import Path

from forkmem.integrations import gunicorn

DOC = Path(__file__).resolve().parent.parent / "docs" / "integrations" / "gunicorn.md"


def test_every_exported_hook_is_documented_and_wired_in_the_example() -> None:
    text = DOC.read_text(encoding="utf-8")
    table = set(re.findall(r"^\| `(\w+)\(", text, flags=re.MULTILINE))
    wired = set(re.findall(r"^(\w+) = forkmem_hooks\.\1\b", text, flags=re.MULTILINE))
    wired |= set(re.findall(r"^\s+forkmem_hooks\.(\w+)\(", text, flags=re.MULTILINE))
    exported = set(gunicorn.__all__)
    assert exported <= table, exported - table
    assert exported <= wired, exported - wired
