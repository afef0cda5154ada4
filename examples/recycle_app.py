"""A WSGI app for memory recycling: a large preloaded heap, a healthy route and a leaking one.

At import (in the gunicorn master, with ``preload_app``) it builds ``FORKMEM_EXAMPLE_HEAP_MIB``
(default 150) MiB of small objects, shared by every worker. Routes:

- ``/``: healthy. Renders a few records of the shared heap's hot part as JSON and keeps up to
  2,000 rendered pages in a per-worker cache (~8 MiB): private memory grows while the cache
  warms, then levels off.
- ``/leak``: leaks 1 MiB per request (a module-level list that only grows, like a cache with no
  bound or trace objects an exporter never releases); it takes ~20 ms, like a request that
  waits on a database.
- ``/hog?mib=N``: one long request that builds N MiB (1 MiB every 10 ms), then frees it and
  answers: the kind of request only a hard limit (``max_private_memory_hard``) can stop.
- ``/memory``: the worker's pid, requests served, its threads' names and ``forkmem.memory()``
  as JSON.

Run it with recycling by private memory (see ``gunicorn_recycle.conf.py``)::

    gunicorn -c examples/gunicorn_recycle.conf.py
    wrk -t2 -c4 -d10s http://127.0.0.1:8000/leak
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import forkmem

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

HEAP = [
    [i, f"item-{i}"] for i in range(int(os.environ.get("FORKMEM_EXAMPLE_HEAP_MIB", "150")) * 5_600)
]
HOT = 20_000  # the records requests read: a hot set, as in most caches
_pages: dict[int, bytes] = {}
_LEAKED: list[bytes] = []
_served = 0


def _render(key: int) -> bytes:
    page = _pages.get(key)
    if page is None:
        start = key * 10 % (HOT - 10)
        page = json.dumps(
            {"key": key, "rows": HEAP[start : start + 10], "pad": "x" * 3500}
        ).encode()
        if len(_pages) < 2_000:  # a bounded cache: healthy
            _pages[key] = page
    return page


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The WSGI entry point."""
    global _served
    _served += 1
    path = environ.get("PATH_INFO")
    if path == "/leak":
        _LEAKED.append(os.urandom(1 << 20))  # written, so private at once
        time.sleep(0.02)
        body = b"leaked 1 MiB\n"
    elif path == "/hog":
        mib = int(parse_qs(environ.get("QUERY_STRING", "")).get("mib", ["100"])[0])
        held = []
        for _ in range(min(mib, 4096)):
            held.append(os.urandom(1 << 20))
            time.sleep(0.01)
        del held
        body = f"held {mib} MiB\n".encode()
    elif path == "/memory":
        usage = forkmem.memory()
        body = json.dumps(
            {
                "pid": os.getpid(),
                "served": _served,
                "threads": [t.name for t in threading.enumerate()],
                "memory": dataclasses.asdict(usage),
            }
        ).encode()
    else:
        body = _render(_served * 7919 % 4_000)
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    start_response("200 OK", headers)
    return [body]
