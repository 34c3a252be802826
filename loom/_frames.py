"""Frames of loom's batched wire (the ``loom.batch.v1`` feature).

When both ends are loom, events do not travel as one protobuf message each: many
frames are msgpack-encoded into one ``FrameBatch`` gRPC message. An event inside a
frame is itself a msgpack-encoded :class:`~loom.envelope.Envelope` carried as
``msgspec.Raw``, so the bridge routes it without decoding or re-encoding it.

This module is pure: it encodes and decodes, it does no I/O.
"""

from __future__ import annotations

from typing import Final

import msgspec

from loom.envelope import Envelope
from loom.errors import ProtocolError

FEATURE_BATCH: Final = "loom.batch.v1"
FEATURE_SUBSCRIBE: Final = "loom.subscribe.v1"
AGENT_ID_HEADER: Final = "loom-agent-id"
"""Request metadata that names the agent on an ``EventBatchStream``."""
SUPPORTED_FEATURES: Final = frozenset({FEATURE_BATCH, FEATURE_SUBSCRIBE})

REPLACED: Final = "REPLACED"
"""Error code of the bridge's farewell on a stream whose agent id a newer stream took."""

# ActionResult status numbers, as in the v1 ``ActionStatus`` enum.
STATUS_OK: Final = 0
STATUS_ERROR: Final = 1
STATUS_TIMEOUT: Final = 2
STATUS_RETRYABLE: Final = 3


class Publish(msgspec.Struct, tag=1, array_like=True, gc=False):
    """Client -> bridge: publish ``event`` (an encoded Envelope) on ``topic``.
    ``expires_ms`` is the wall-clock ms after which the event is stale (0 = never);
    ``thread_id`` repeats the envelope's thread so the bridge can deliver the event to
    the thread's members without decoding it."""

    topic: str
    expires_ms: int
    event: msgspec.Raw
    thread_id: str = ""


class Deliver(msgspec.Struct, tag=2, array_like=True, gc=False):
    """Bridge -> client: an event on a topic the client subscribed to."""

    topic: str
    event: msgspec.Raw


class Subscribe(msgspec.Struct, tag=3, array_like=True, gc=False):
    """Client -> bridge: add and remove subscriptions (topics or patterns) and join or
    leave threads; answered by ``Subscribed`` once in effect. A thread member receives
    every event published with that thread_id, whatever its topic."""

    id: str
    add: list[str] = []
    remove: list[str] = []
    qos: int = 1
    join: list[str] = []
    leave: list[str] = []


class Subscribed(msgspec.Struct, tag=4, array_like=True, gc=False):
    """Bridge -> client: the ``Subscribe`` with this id is in effect (or failed)."""

    id: str
    error: str = ""


class Call(msgspec.Struct, tag=5, array_like=True, gc=False):
    """A capability call: client -> bridge, and bridge -> the providing agent."""

    id: str
    capability: str
    version: str
    payload: bytes
    timeout_ms: int
    headers: dict[str, str] = {}
    correlation_id: str = ""


class Result(msgspec.Struct, tag=6, array_like=True, gc=False):
    """The answer to a ``Call``: provider -> bridge, and bridge -> the caller."""

    id: str
    status: int
    output: bytes = b""
    error_code: str = ""
    error_message: str = ""


class Ping(msgspec.Struct, tag=7, array_like=True, gc=False):
    timestamp_ms: int


class Pong(msgspec.Struct, tag=8, array_like=True, gc=False):
    timestamp_ms: int


class Error(msgspec.Struct, tag=9, array_like=True, gc=False):
    """Bridge -> client: something the client sent was refused; ``ref`` names it."""

    code: str
    message: str
    ref: str = ""


Frame = Publish | Deliver | Subscribe | Subscribed | Call | Result | Ping | Pong | Error

_encoder = msgspec.msgpack.Encoder()
_batch_decoder = msgspec.msgpack.Decoder(list[Frame])
_envelope_decoder = msgspec.msgpack.Decoder(Envelope)


def encode_batch(frames: list[Frame]) -> bytes:
    """Encode frames into the payload of one ``FrameBatch``."""
    return _encoder.encode(frames)


def decode_batch(data: bytes) -> list[Frame]:
    """Decode a ``FrameBatch`` payload; malformed input raises :class:`ProtocolError`."""
    try:
        return _batch_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed frame batch: {exc}") from None


def encode_envelope(envelope: Envelope) -> msgspec.Raw:
    return msgspec.Raw(_encoder.encode(envelope))


def decode_envelope(raw: msgspec.Raw | bytes) -> Envelope:
    """Decode an event carried in a frame; malformed input raises :class:`ProtocolError`."""
    try:
        return _envelope_decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed event: {exc}") from None


def publish_frame(topic: str, envelope: Envelope) -> Publish:
    return Publish(topic, envelope.expires_ms, encode_envelope(envelope), envelope.thread_id or "")


# A FrameBatch message has one field (1: bytes data); its protobuf encoding is a tag
# byte, a varint length and the data, cheap enough to do by hand on the hot path.
_FRAME_BATCH_TAG: Final = 0x0A


def wrap_frame_batch(data: bytes) -> bytes:
    """Protobuf-encode ``FrameBatch{data}``."""
    n = len(data)
    head = bytearray((_FRAME_BATCH_TAG,))
    while n > 0x7F:
        head.append((n & 0x7F) | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head) + data


def unwrap_frame_batch(message: bytes) -> bytes:
    """Protobuf-decode ``FrameBatch`` and return its data (ignores unknown fields)."""
    if not message:
        return b""
    view = memoryview(message)
    pos, end, data = 0, len(message), b""
    while pos < end:
        key, pos = _varint(view, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 2:
            length, pos = _varint(view, pos)
            if pos + length > end:
                raise ProtocolError("malformed FrameBatch: truncated field")
            if field == 1:
                data = bytes(view[pos : pos + length])
            pos += length
        elif wire_type == 0:
            _, pos = _varint(view, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise ProtocolError(f"malformed FrameBatch: wire type {wire_type}")
    if pos != end:
        raise ProtocolError("malformed FrameBatch: truncated field")
    return data


def _varint(view: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    end = len(view)
    while True:
        if pos >= end or shift > 63:
            raise ProtocolError("malformed varint")
        b = view[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
