"""``FORKMEM_DISABLE=1``: every integration does nothing, for A/B comparisons (private)."""

from __future__ import annotations

import logging
import os

__all__ = ["DISABLE_ENV", "disabled"]

_logger = logging.getLogger("forkmem")

DISABLE_ENV = "FORKMEM_DISABLE"
_OFF = frozenset({"", "0", "false", "no", "off"})
_logged: set[str] = set()


def disabled(integration: str) -> bool:
    """True when ``FORKMEM_DISABLE`` is set to anything but ``""``, ``0``, ``false``, ``no`` or
    ``off``: the integration then behaves as if forkmem were not installed. Logged once per
    integration, so an A/B run says which side it is."""
    if os.environ.get(DISABLE_ENV, "").strip().lower() in _OFF:
        return False
    if integration not in _logged:
        _logged.add(integration)
        _logger.warning(
            "forkmem: %s is set; the %s integration does nothing", DISABLE_ENV, integration
        )
    return True
