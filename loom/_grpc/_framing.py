"""gRPC message framing (sans-IO).

Every gRPC message on the wire is a 5-byte prefix (one flag byte, then the
payload length as a big-endian ``uint32``) followed by the payload. Compression
is never negotiated by loom, so the flag byte must be 0.
"""

from __future__ import annotations

import struct
from collections import deque

from loom.errors import MessageTooLarge, ProtocolError

__all__ = ["PREFIX_SIZE", "MessageDecoder", "encode_message"]

PREFIX_SIZE = 5
_PREFIX = struct.Struct(">BI")
_MAX_LENGTH = 2**32 - 1


def encode_message(message: bytes, max_message_size: int) -> bytes:
    """Return ``message`` with its gRPC length prefix (uncompressed).

    Raises :class:`~loom.errors.MessageTooLarge` when the payload is longer than
    ``max_message_size``.
    """
    size = len(message)
    if size > max_message_size or size > _MAX_LENGTH:
        raise MessageTooLarge(size, max_message_size)
    return _PREFIX.pack(0, size) + message


class MessageDecoder:
    """Incremental decoder of length-prefixed gRPC messages.

    Feed it the bytes of one stream in whatever chunks they arrive; complete
    messages come out of :meth:`next_message` in order. A message whose declared
    length is above the limit is rejected as soon as its prefix is seen, before
    its body is buffered.
    """

    def __init__(self, max_message_size: int) -> None:
        self._max_message_size = max_message_size
        self._buffer = bytearray()
        self._expected: int | None = None  # body length of the message in progress
        self._messages: deque[bytes] = deque()

    def feed(self, data: bytes) -> None:
        """Add bytes of the stream.

        Raises :class:`~loom.errors.MessageTooLarge` for a message above the limit
        and :class:`~loom.errors.ProtocolError` for a compressed or malformed
        prefix. After an error the decoder must not be used again.
        """
        self._buffer += data
        buffer = self._buffer
        offset = 0
        while True:
            if self._expected is None:
                if len(buffer) - offset < PREFIX_SIZE:
                    break
                flag, length = _PREFIX.unpack_from(buffer, offset)
                if flag != 0:
                    if flag == 1:
                        raise ProtocolError(
                            "received a compressed message, but none was negotiated"
                        )
                    raise ProtocolError(f"invalid gRPC message flag {flag:#x}")
                if length > self._max_message_size:
                    raise MessageTooLarge(length, self._max_message_size)
                offset += PREFIX_SIZE
                self._expected = length
            end = offset + self._expected
            if len(buffer) < end:
                break
            with memoryview(buffer) as view:  # one copy, not two
                self._messages.append(bytes(view[offset:end]))
            offset = end
            self._expected = None
        if offset:
            del buffer[:offset]

    def next_message(self) -> bytes | None:
        """Pop the next complete message, or ``None`` when none is complete yet."""
        if self._messages:
            return self._messages.popleft()
        return None

    @property
    def has_partial_message(self) -> bool:
        """Whether bytes of an unfinished message (or prefix) are held."""
        return self._expected is not None or bool(self._buffer)
