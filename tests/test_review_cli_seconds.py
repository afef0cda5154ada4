"""Seconds options of the CLI: a value time.sleep() cannot take is a usage error, not exit 3."""

from __future__ import annotations

import os

import pytest

from forkmem.cli import main


@pytest.mark.parametrize(
    "argv",
    [
        ["watch", "{pid}", "--duration", "inf"],
        ["watch", "{pid}", "--duration", "1e308", "--interval", "1e308"],
        ["watch", "{pid}", "--duration", "1", "--interval", "inf"],
        ["memory", "--watch", "1e308", "--count", "2", "{pid}"],
        ["memory", "--watch", "inf", "--count", "2", "{pid}"],
    ],
)
def test_huge_seconds_are_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # The old code sampled once, then time.sleep() raised OverflowError: exit 3, a traceback.
    code = main([word.format(pid=os.getpid()) for word in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert "seconds" in err
