"""Classes' shared key tables made immortal by immortalize(): a child making new instances'
``__dict__`` no longer writes (and copies) the tables. Real forks, real page counts."""

from __future__ import annotations

from typing import Any

import forkmem
from _forking import run_forked
from _immortal_runtime import needs_immortal
from forkmem import _immortal, _shared_keys
from forkmem._object_header import address_view
from forkmem.testing import run_in_child

pytestmark = needs_immortal


def _classes(count: int) -> list[type]:
    def init(self: Any) -> None:
        self.first = 1
        self.second = 2

    return [type(f"Record{i}", (), {"__init__": init}) for i in range(count)]


def _count(cls: type) -> int:
    """The reference count of ``cls``'s shared key table."""
    layout = _shared_keys.keys_layout()
    view = address_view()
    assert layout is not None
    assert view is not None
    return _shared_keys._read(view, _shared_keys._read(view, id(cls) + layout.offset))


def test_the_layout_is_found_here() -> None:
    layout = _shared_keys.keys_layout()
    assert layout is not None
    assert layout.offset > 0
    assert layout.immortal >= 1 << 31


def test_warmup_makes_the_tables_immortal_and_instances_still_behave() -> None:
    def child() -> dict[str, Any]:
        (cls,) = _classes(1)
        kept = [cls() for _ in range(3)]
        before = _count(cls)
        dicts = [vars(obj) for obj in kept]  # each made dict holds one count on the table
        counted = _count(cls) - before
        del dicts
        report = forkmem.warmup(immortalize=True)
        immortal = _count(cls)
        fresh = cls()
        fresh.third = 3  # a new name: the table takes it, or the dict stops sharing it
        del kept[0].first
        made = [vars(obj) for obj in (*kept, fresh)]
        return {
            "counted": counted,
            "immortal": immortal == _shared_keys.keys_layout().immortal,  # type: ignore[union-attr]
            "after": _count(cls) == immortal,
            "dicts": [sorted(d) for d in made],
            "warmup": report.immortalized > 0,
        }

    r = run_forked(child)
    assert r["counted"] == 3
    assert r["immortal"]
    assert r["after"]
    assert r["dicts"] == [
        ["second"],
        ["first", "second"],
        ["first", "second"],
        ["first", "second", "third"],
    ]
    assert r["warmup"]


def _child_copies(immortal_keys: bool) -> int:
    classes = _classes(3000)
    kept = [cls() for cls in classes]  # no __dict__ made yet: the values live in the instance
    if not immortal_keys:
        _immortal.immortalize_keys = lambda classes: 0  # type: ignore[assignment]
    forkmem.warmup(immortalize=True)

    def worker() -> None:
        for obj in kept:
            vars(obj)  # makes the dict, which counts its class's table: +1 on every table

    return run_in_child(worker).copied


def test_a_child_making_instance_dicts_copies_the_tables_only_while_they_are_mortal() -> None:
    mortal = run_forked(lambda: _child_copies(False))
    immortal = run_forked(lambda: _child_copies(True))
    # Both write each instance (its dict pointer); mortal tables cost ~1,300 pages more here.
    assert mortal - immortal > 300 * 4096, (mortal, immortal)


def test_immortalize_reports_the_tables() -> None:
    def child() -> int:
        classes = _classes(20)
        kept = [cls() for cls in classes]
        result = _immortal.immortalize([classes, kept])
        return result.shared_keys

    assert run_forked(child) >= 20
