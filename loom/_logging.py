"""``LOOM_LOG``: turn on loom's own log output from the environment.

When ``LOOM_LOG`` is ``debug``, ``info`` or ``warning`` (also ``error``), the ``loom``
logger gets a stderr handler at that level. Nothing happens when it is unset, so an
application that configures :mod:`logging` itself stays in charge. This runs once, when
loom is imported; calling :func:`configure_from_env` again does nothing.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Final

__all__ = ["LOG_ENV", "configure_from_env"]

LOG_ENV: Final = "LOOM_LOG"

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

_configured = False


def configure_from_env() -> bool:
    """Configure the ``loom`` logger from ``LOOM_LOG``, the first time only.

    Returns True when a handler was installed by this call.
    """
    global _configured
    if _configured:
        return False
    value = os.environ.get(LOG_ENV, "").strip().lower()
    if not value:
        return False
    _configured = True
    level = _LEVELS.get(value)
    logger = logging.getLogger("loom")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    logger.addHandler(handler)
    logger.setLevel(level if level is not None else logging.WARNING)
    if level is None:
        logger.warning(
            "%s=%r is not one of debug, info, warning, error; using warning", LOG_ENV, value
        )
    return True


configure_from_env()
