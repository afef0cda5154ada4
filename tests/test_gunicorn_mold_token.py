"""The refork mold token (a byte in a pipe) and the claims on it, between a real forked worker
and the master's side, with a set of pids for gunicorn's worker table. Real gunicorn with a
SIGKILLed claimant: tests/integration/test_gunicorn_rehearse.py."""

from __future__ import annotations

import logging
import os
import time

import pytest

from forkmem.integrations import _gunicorn_mold_token
from forkmem.integrations._gunicorn_mold_token import MoldToken

pytestmark = pytest.mark.linux_only


def test_a_lost_token_is_issued_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    token = MoldToken()
    token.open()
    caplog.set_level(logging.INFO, logger="forkmem.gunicorn")
    try:
        pid = os.fork()
        if pid == 0:  # a worker that claims the token and dies before it is the mold
            token.forked()
            os._exit(0 if token.claim() else 1)
        assert os.waitpid(pid, 0)[1] == 0
        assert token.mold_announced() == 0
        token.reissue_if_lost({pid})  # not reaped yet: nothing to do
        assert token.taken()
        token.reissue_if_lost({})
        assert f"lost (worker pid {pid}, which claimed it, exited" in caplog.text
        assert not token.taken()
        # Taken without a word (the taker died between the two): issued after the grace.
        monkeypatch.setattr(_gunicorn_mold_token, "UNCLAIMED_GRACE", 0.3)
        assert os.read(token._token[0], 1) == b"m"
        token.reissue_if_lost({})
        assert token.taken()
        time.sleep(0.4)
        token.reissue_if_lost({})
        assert "lost (the worker that took it exited before it said so)" in caplog.text
        assert not token.taken()
        # The mold's own announcement is what the master reads, claims on the way.
        assert token.claim()
        token.announce_mold()
        assert token.mold_announced() == os.getpid()
    finally:
        token.close()
