"""Keep h2's frame tracing off the hot path.

h2 logs every received frame with ``logger.trace("...", repr(frame))``; the ``repr``
runs even when tracing is off, and hyperframe's ``repr`` of a DATA frame hex-encodes
the whole payload only to keep its first 20 characters. For a 4 KiB event that is
most of the cost of receiving it. This replaces hyperframe's helper with one that
encodes only the bytes it shows; its output is unchanged.
"""

from __future__ import annotations

import binascii

import hyperframe.frame

_SHOWN = 10  # bytes: 20 hex characters


def _raw_data_repr(data: bytes | None) -> str:
    if not data:
        return "None"
    text = binascii.hexlify(data[:_SHOWN]).decode("ascii")
    if len(data) > _SHOWN:
        text += "..."
    return "<hex:" + text + ">"


def install() -> None:
    """Idempotent; called when loom's gRPC client or server is imported."""
    hyperframe.frame._raw_data_repr = _raw_data_repr
