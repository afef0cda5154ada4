"""The /proc parsers on real and crafted text: a result or ProcParseError, nothing else."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forkmem import ProcParseError
from forkmem._proc import parse_smaps, parse_smaps_rollup, parse_stat_state, parse_status

ROLLUP = b"""\
558e67453000-7fff043dc000 ---p 00000000 00:00 0                          [rollup]
Rss:                1616 kB
Pss:                 178 kB
Pss_Dirty:           116 kB
Pss_Anon:            116 kB
Pss_File:             62 kB
Pss_Shmem:             0 kB
Shared_Clean:       1460 kB
Shared_Dirty:          0 kB
Private_Clean:        40 kB
Private_Dirty:       116 kB
Referenced:         1616 kB
Anonymous:           116 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
"""

SMAPS = b"""\
55d0c8a00000-55d0c8a02000 r--p 00000000 fd:01 1234                       /usr/bin/wei:rd name
Size:                  8 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                   8 kB
Pss:                   4 kB
Pss_Dirty:             0 kB
Shared_Clean:          8 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
Referenced:            8 kB
Anonymous:             0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:    0
VmFlags: rd mr mw me sd
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
Size:                  4 kB
Rss:                  12 kB
Pss:                  12 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:         4 kB
Private_Dirty:         8 kB
Swap:                  4 kB
SwapPss:               4 kB
VmFlags: rd wr mr mw me ac
"""

STATUS = b"""\
Name:\tpython (x): y
Umask:\t0022
State:\tS (sleeping)
VmPeak:\t    3060 kB
VmHWM:\t    1764 kB
VmRSS:\t    1700 kB
RssAnon:\t     116 kB
RssFile:\t    1584 kB
RssShmem:\t       0 kB
VmSwap:\t       0 kB
Kthread:\t0
Groups:\t
"""


def test_rollup_crafted() -> None:
    f = parse_smaps_rollup(ROLLUP, "/proc/1/smaps_rollup")
    assert f[b"Rss"] == 1616 * 1024
    assert f[b"Pss_File"] == 62 * 1024
    assert f[b"Private_Dirty"] == 116 * 1024
    assert len(f) == 22


def test_rollup_accepts_str() -> None:
    assert parse_smaps_rollup(ROLLUP.decode())[b"Pss"] == 178 * 1024


def test_rollup_real_file() -> None:
    with open(f"/proc/{os.getpid()}/smaps_rollup", "rb") as fh:
        f = parse_smaps_rollup(fh.read())
    assert f[b"Rss"] > 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "header"),
        (ROLLUP.split(b"\n", 1)[1], "header"),
        (ROLLUP[: ROLLUP.index(b"Shared_Clean")], "missing field Shared_Clean"),
        (ROLLUP.replace(b"1616 kB", b"16x6 kB", 1), "garbled"),
        (ROLLUP.replace(b"1616 kB", b"+1616 kB", 1), "garbled"),
        (ROLLUP.replace(b"1616 kB", b"1_616 kB", 1), "garbled"),
        (ROLLUP.replace(b"1616 kB", b"1616 MB", 1), "garbled"),
        (ROLLUP.replace(b"1616 kB", b"", 1), "garbled"),
        (ROLLUP + b"Rss: 1 kB\n", "repeated"),
        (ROLLUP + b"garbage line\n", "garbled"),
        (ROLLUP + b"Extra: 1 kB 2 kB\n", "garbled"),
        (ROLLUP.replace(b"Rss:", b"Rss", 1), "garbled"),
        (ROLLUP.replace(b"\nPss:", b"\n\nPss:", 1), "garbled"),
        (ROLLUP.replace(b"[rollup]\n", b"\n[rollup]\n", 1), "garbled"),
    ],
)
def test_rollup_garbled(content: bytes, message: str) -> None:
    with pytest.raises(ProcParseError, match=message) as info:
        parse_smaps_rollup(content, "/proc/7/smaps_rollup")
    assert info.value.path == "/proc/7/smaps_rollup"
    assert "/proc/7/smaps_rollup" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_smaps_crafted_sums_and_counts() -> None:
    sums, mappings = parse_smaps(SMAPS, "/proc/1/smaps")
    assert mappings == 2
    assert sums[b"Rss"] == 20 * 1024
    assert sums[b"Pss"] == 16 * 1024
    assert sums[b"Private_Dirty"] == 8 * 1024
    assert sums[b"Swap"] == 4 * 1024
    assert sums[b"Pss_Dirty"] == 0
    assert b"VmFlags" not in sums
    assert b"THPeligible" not in sums


def test_smaps_empty_is_no_mappings() -> None:
    assert parse_smaps(b"") == ({}, 0)


def test_smaps_real_file_matches_rollup_rss_roughly() -> None:
    pid = os.getpid()
    with open(f"/proc/{pid}/smaps", "rb") as fh:
        sums, mappings = parse_smaps(fh.read())
    with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
        rollup = parse_smaps_rollup(fh.read())
    assert mappings > 10
    assert abs(sums[b"Rss"] - rollup[b"Rss"]) < 4 * 1024 * 1024


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"Rss: 4 kB\n", "before the first mapping"),
        (SMAPS[: SMAPS.index(b"Pss:")], "last mapping lacks"),
        (SMAPS.replace(b"SwapPss:               0 kB\n", b"Rss: 4 kB\n", 1), "repeated"),
        (
            SMAPS.replace(b"Size:                  4 kB\n", b"", 1).replace(
                b"Pss:      ", b"Pss:  x"
            ),
            "number",
        ),
        (SMAPS.replace(b"ffffffffff600000-", b"zzzz-", 1), "unexpected line"),
        (
            SMAPS.replace(b"Shared_Clean:          8 kB\n", b"", 1),
            "lacks its Rss/Pss fields",
        ),
    ],
)
def test_smaps_garbled(content: bytes, message: str) -> None:
    with pytest.raises(ProcParseError, match=message) as info:
        parse_smaps(content, "/proc/7/smaps")
    assert info.value.path == "/proc/7/smaps"


def test_status_crafted() -> None:
    f = parse_status(STATUS, "/proc/1/status")
    assert f[b"State"] == b"S"
    assert f[b"VmRSS"] == 1700 * 1024
    assert f[b"VmHWM"] == 1764 * 1024
    assert f[b"RssFile"] == 1584 * 1024
    assert b"VmPeak" not in f


def test_status_zombie_has_no_vm_lines() -> None:
    f = parse_status(b"Name:\tx\nState:\tZ (zombie)\nTgid:\t5\n")
    assert f == {b"State": b"Z"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "missing State"),
        (b"Name:\tx\n", "missing State"),
        (b"State:\t? (what)\n", "bad State"),
        (b"State:\tS\nVmRSS:\t12\n", "unit"),
        (b"State:\tS\nVmRSS:\t-12 kB\n", "not a number"),
        (b"State:\tSleepy\n", "bad State"),
        (b"State:\t\n", "missing State"),
    ],
)
def test_status_garbled(content: bytes, message: str) -> None:
    with pytest.raises(ProcParseError, match=message):
        parse_status(content, "/proc/7/status")


def test_stat_state() -> None:
    assert parse_stat_state(b"12 (a) b) c) Z 1 2 3") == "Z"
    with open("/proc/self/stat", "rb") as fh:
        assert parse_stat_state(fh.read()) == "R"
    for bad in (b"", b"12 (x", b"12 (x) ", b"12 (x) 42 1"):
        with pytest.raises(ProcParseError):
            parse_stat_state(bad, "/proc/7/stat")


def _mutations(base: bytes) -> st.SearchStrategy[bytes]:
    """Real content cut, spliced and corrupted: closer to truncated reads than random text."""
    return st.one_of(
        st.integers(0, len(base)).map(lambda n: base[:n]),
        st.tuples(st.integers(0, len(base)), st.binary(max_size=40)).map(
            lambda t: base[: t[0]] + t[1] + base[t[0] :]
        ),
        st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)).map(
            lambda t: base[: t[0]] + bytes([t[1]]) + base[t[0] + 1 :]
        ),
        st.lists(st.sampled_from(base.split(b"\n")), max_size=40).map(b"\n".join),
    )


_ANY = st.one_of(st.binary(max_size=400), st.text(max_size=400))
_PARSERS = (parse_smaps_rollup, parse_smaps, parse_status, parse_stat_state)


def _result_or_parse_error(parser: object, content: bytes | str) -> None:
    error: ProcParseError | None = None
    try:
        parser(content, "/proc/42/file")  # type: ignore[operator]
    except ProcParseError as exc:
        error = exc
    assert error is None or error.path == "/proc/42/file"


@settings(max_examples=150, deadline=None, database=None)
@given(content=_ANY)
def test_fuzz_any_text(content: bytes | str) -> None:
    for parser in _PARSERS:
        _result_or_parse_error(parser, content)


@settings(max_examples=150, deadline=None, database=None)
@given(content=_mutations(ROLLUP))
def test_fuzz_rollup_mutations(content: bytes) -> None:
    _result_or_parse_error(parse_smaps_rollup, content)
    _result_or_parse_error(parse_smaps, content)


@settings(max_examples=150, deadline=None, database=None)
@given(content=_mutations(SMAPS))
def test_fuzz_smaps_mutations(content: bytes) -> None:
    _result_or_parse_error(parse_smaps, content)


@settings(max_examples=150, deadline=None, database=None)
@given(content=_mutations(STATUS))
def test_fuzz_status_mutations(content: bytes) -> None:
    _result_or_parse_error(parse_status, content)
    _result_or_parse_error(parse_stat_state, content)


@settings(max_examples=100, deadline=None, database=None)
@given(content=st.text(max_size=300))
def test_fuzz_rollup_with_header(content: str) -> None:
    # Past the header check, so the line loop itself gets exercised.
    _result_or_parse_error(parse_smaps_rollup, "0-1 ---p 0 00:00 0 [rollup]\n" + content)
