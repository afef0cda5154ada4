"""A small WSGI app with a preloaded heap, to see what forkmem's gunicorn hooks save.

At import (in the gunicorn master, with ``preload_app``) it builds ``FORKMEM_EXAMPLE_HEAP_MIB``
(default 100) MiB of small objects, like the caches and ORM metadata a real app loads. Routes:

- ``/``: a greeting.
- ``/memory``: the worker runs ``gc.collect()`` and returns ``forkmem.memory()`` as JSON, with
  its pid and the size of the heap the master built. Private (USS) memory is what the worker
  could not share. ``/memory?hold=0.5`` keeps the worker busy for that many seconds (at most
  2) after measuring, so that concurrent requests reach different sync workers.

Run it: ``gunicorn -c examples/gunicorn.conf.py`` (see that file), then
``curl -s 127.0.0.1:8000/memory``.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import forkmem

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable


def _build_heap(mib: int) -> tuple[list[list[Any]], int]:
    before = forkmem.rss_breakdown().rss_anon
    # Small GC-tracked containers (a list, its int and string: ~180 bytes, 5,600 per MiB). A
    # dict of only ints and strings would not do: CPython stops tracking those, and objects the
    # collector never visits are never copied by it.
    records = [[i, f"item-{i}"] for i in range(mib * 5_600)]
    return records, forkmem.rss_breakdown().rss_anon - before


HEAP, HEAP_BYTES = _build_heap(int(os.environ.get("FORKMEM_EXAMPLE_HEAP_MIB", "100")))


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The WSGI entry point."""
    if environ.get("PATH_INFO") == "/memory":
        gc.collect()
        usage = forkmem.memory()
        payload = {
            "pid": os.getpid(),
            "heap_bytes": HEAP_BYTES,
            "records": len(HEAP),
            "memory": dataclasses.asdict(usage),
        }
        body = json.dumps(payload).encode()
        hold = parse_qs(environ.get("QUERY_STRING", "")).get("hold", ["0"])[0]
        try:
            time.sleep(min(max(float(hold), 0.0), 2.0))
        except ValueError:
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [b"hold must be a number of seconds\n"]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello from a forkmem example worker\n"]
