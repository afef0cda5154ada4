"""The docs site renders every cross-reference: no raw reST role (``:func:`x```) reaches a page.

mkdocstrings renders Markdown, where a reST role stays literal text that ``mkdocs --strict``
does not catch. The site test runs in ``tox -e docs`` on the site it just built
(``FORKMEM_DOCS_SITE``), or builds one itself wherever mkdocs is installed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# A role as written in a docstring, and as it looks once Markdown turned its backticks to <code>.
ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|data|exc|obj):(?:`|<code>)")


def _raw_roles(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if ROLE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:120]}")
    return found


def test_sources_write_no_rest_role() -> None:
    paths = [
        *(ROOT / "src").rglob("*.py"),
        *(ROOT / "examples").rglob("*.py"),
        *(ROOT / "docs").rglob("*.md"),
    ]
    assert len(paths) > 50
    assert _raw_roles(paths) == []


def test_the_pattern_finds_roles() -> None:
    assert ROLE.search("see :func:`memory`")
    assert ROLE.search("see :class:<code>Report</code>")
    assert not ROLE.search("see [`memory()`][forkmem.memory] and ``a:b``")


def _site(tmp_path: Path) -> Path:
    given = os.environ.get("FORKMEM_DOCS_SITE")
    if given:
        return Path(given)
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (tox -e docs runs this test)")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return site


def test_built_site_holds_no_raw_role(tmp_path: Path) -> None:
    site = _site(tmp_path)
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 20, f"no site at {site}"
    # The API pages are there, with their rendered docstrings.
    assert "forkmem.MemoryUsage" in (site / "api" / "measure" / "index.html").read_text()
    assert _raw_roles([*pages, *site.rglob("search_index.json")]) == []
