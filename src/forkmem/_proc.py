"""Pure parsers for the kernel's per-process memory files.

Each parser takes the file's raw content (``bytes``, or ``str`` for tests) plus the path it came
from, and returns plain numbers. Anything truncated or garbled raises
[`ProcParseError`][forkmem.ProcParseError] naming that path; no other exception escapes. Reading the
files (and mapping ``OSError``) is the backends' job, so these stay testable on crafted text.
"""

from __future__ import annotations

from forkmem.errors import ProcParseError

__all__ = [
    "ROLLUP_REQUIRED",
    "parse_smaps",
    "parse_smaps_rollup",
    "parse_stat_state",
    "parse_status",
]

# Fields present in every smaps/smaps_rollup since Linux 4.14 (the first kernel with rollup);
# a read that lacks one was cut short.
ROLLUP_REQUIRED = (
    b"Rss",
    b"Pss",
    b"Shared_Clean",
    b"Shared_Dirty",
    b"Private_Clean",
    b"Private_Dirty",
    b"Swap",
)

_KB = b" kB"
_KB_UNIT = b"kB"


def _as_bytes(content: bytes | str) -> bytes:
    if isinstance(content, str):
        # surrogatepass: test input may hold lone surrogates; they must fail as garbage, not crash.
        return content.encode("utf-8", "surrogatepass")
    return content


def _kb_value(value: bytes, key: bytes, path: str) -> int:
    """Return ``value`` (``'   1616 kB'``) in bytes."""
    if not value.endswith(_KB):
        raise ProcParseError(f"field {key.decode('ascii', 'replace')} has no 'kB' unit", path=path)
    number = value[:-3].strip()
    # isdigit on bytes is ASCII-only; int() alone would also take '+1', '1_0' or '٣'.
    if not number.isdigit():
        raise ProcParseError(
            f"field {key.decode('ascii', 'replace')} is not a number: {number[:40]!r}", path=path
        )
    return int(number) * 1024


def _check_required(fields: dict[bytes, int], path: str) -> None:
    for key in ROLLUP_REQUIRED:
        if key not in fields:
            raise ProcParseError(
                f"missing field {key.decode()} (truncated or not an smaps file)", path=path
            )


def parse_smaps_rollup(content: bytes | str, path: str = "smaps_rollup") -> dict[bytes, int]:
    """Parse ``/proc/PID/smaps_rollup`` into ``{b"Rss": bytes, b"Pss": bytes, ...}``.

    Values are converted from kB to bytes. The first line must be the ``[rollup]`` header;
    every other line must be ``Name:  N kB``.
    """
    data = _as_bytes(content)
    # Hot path (every forkmem.memory call): split once in C and check the whole token list
    # with a few C-level calls instead of a Python loop per line.
    tokens = data.split()
    if len(tokens) < 6 or tokens[5] != b"[rollup]":
        raise ProcParseError("first line is not the [rollup] header", path=path)
    body = tokens[6:]
    keys, values, units = body[0::3], body[1::3], body[2::3]
    n = len(keys)
    if (
        len(body) != 3 * n
        or units.count(_KB_UNIT) != n
        or (b" ".join(keys) + b" ").count(b": ") != n
        or not b"".join(values).isdigit()
        or data.count(b"\n") - 1 != n - (not data.endswith(b"\n"))
    ):
        raise ProcParseError("a line is not 'Name: N kB' (garbled or truncated)", path=path)
    fields = dict(zip([k[:-1] for k in keys], [int(v) << 10 for v in values], strict=True))
    if len(fields) != n:
        raise ProcParseError("a field is repeated", path=path)
    _check_required(fields, path)
    return fields


def _is_vma_header(line: bytes) -> bool:
    # "7f12a000-7f12b000 r-xp 00000000 08:01 1234   /usr/lib/x.so" (path may contain ':').
    start, dash, _ = line.partition(b"-")
    return bool(dash) and len(start) > 0 and all(c in b"0123456789abcdef" for c in start)


def parse_smaps(content: bytes | str, path: str = "smaps") -> tuple[dict[bytes, int], int]:
    """Parse ``/proc/PID/smaps`` and sum each ``kB`` field over all mappings.

    Returns ``(sums, mappings)``: ``sums`` maps field names to bytes like
    `parse_smaps_rollup()`; ``mappings`` is the number of VMAs. Lines without a ``kB`` unit
    (``VmFlags``, ``THPeligible``, ``ProtectionKey``) are skipped. Note the kernel rounds ``Pss``
    per mapping here, so the sum can be a few kB below the rollup's figure.
    """
    data = _as_bytes(content)
    sums: dict[bytes, int] = {}
    mappings = 0
    seen: set[bytes] = set()
    for line in data.split(b"\n"):
        if not line:
            continue
        key, sep, value = line.partition(b":")
        if sep and key and b" " not in key:
            if mappings == 0:
                raise ProcParseError("field line before the first mapping header", path=path)
            if key in seen:
                raise ProcParseError(
                    f"field {key.decode('ascii', 'replace')} repeated in one mapping", path=path
                )
            seen.add(key)
            if value.endswith(_KB):
                sums[key] = sums.get(key, 0) + _kb_value(value, key, path)
            continue
        if not _is_vma_header(line):
            raise ProcParseError(f"unexpected line {line[:60]!r}", path=path)
        if mappings and not seen.issuperset(ROLLUP_REQUIRED):
            raise ProcParseError("a mapping lacks its Rss/Pss fields (truncated)", path=path)
        mappings += 1
        seen = set()
    if mappings == 0:
        # An empty smaps is a zombie or kernel thread; the caller decides what that means.
        return {}, 0
    if not seen.issuperset(ROLLUP_REQUIRED):
        raise ProcParseError("the last mapping lacks its Rss/Pss fields (truncated)", path=path)
    return sums, mappings


def parse_status(content: bytes | str, path: str = "status") -> dict[bytes, int | bytes]:
    """Parse ``/proc/PID/status``: ``kB`` fields in bytes, ``State`` as its one-letter code.

    Returns only what the fast tier needs: ``VmRSS``, ``RssAnon``, ``RssFile``, ``RssShmem``,
    ``VmSwap``, ``VmHWM`` (when present: zombies and kernel threads have none of them) and
    ``State`` (e.g. ``b"Z"``).
    """
    # Hot path (rss_breakdown): the file has ~60 lines and we want 7 of them, so look each up
    # with bytes.find (C speed) rather than walking every line in Python.
    data = b"\n" + _as_bytes(content)
    out: dict[bytes, int | bytes] = {}
    for key, needle in _STATUS_KB:
        start = data.find(needle)
        if start < 0:
            continue
        start += len(needle)
        end = data.find(b"\n", start)
        out[key] = _kb_value(data[start:end] if end >= 0 else data[start:], key, path)
    start = data.find(b"\nState:")
    state = data[start + 7 : start + 24].split()[:1] if start >= 0 else []
    if not state:
        raise ProcParseError("missing State (truncated or not a status file)", path=path)
    if len(state[0]) != 1 or not state[0].isalpha():
        raise ProcParseError(f"bad State {state[0][:20]!r}", path=path)
    out[b"State"] = state[0]
    return out


_STATUS_KB = tuple(
    (key, b"\n" + key + b":")
    for key in (b"VmRSS", b"RssAnon", b"RssFile", b"RssShmem", b"VmSwap", b"VmHWM")
)


def parse_stat_state(content: bytes | str, path: str = "stat") -> str:
    """Return the one-letter state from ``/proc/PID/stat`` (``"R"``, ``"S"``, ``"Z"``...).

    The command name in parentheses may itself contain spaces and ``)``; the state is the first
    field after the *last* ``)``.
    """
    data = _as_bytes(content)
    _, paren, rest = data.rpartition(b")")
    fields = rest.split()
    if not paren or not fields or len(fields[0]) != 1 or not fields[0].isalpha():
        raise ProcParseError("no process state after the command name", path=path)
    return fields[0].decode("ascii")
