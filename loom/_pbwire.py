"""A small hand-written protobuf codec for the per-event messages of the v1 wire.

The v1 ``EventStream`` carries one protobuf ``ClientEvent`` per published event and
one ``ServerEvent`` per delivery (``proto/loom/v1/bridge.proto``). Going through the
generated message classes costs tens of microseconds per message, so the per-event
messages (``Event``, ``Publish``/``Delivery`` and the ``ClientEvent``/``ServerEvent``
oneof wrapper around them) are encoded and decoded here by hand; the control messages
(ack, ping, action results, subscription changes, ...) still go through the generated
classes, this module only unwraps or wraps their bytes.

By the v1 contract ``Publish`` and ``Delivery`` have the same fields, and
``ClientEvent.publish`` and ``ServerEvent.delivery`` are both field 1, so the bytes of
a publish are the bytes of the matching delivery: the bridge forwards the event bytes
it received without decoding them.

Encoding follows the official encoder: proto3 default values (empty strings and
bytes, zero numbers) are not written, negative ``int32``/``int64`` values are 10-byte
varints, map entries always carry both key and value. Decoding follows the official
parser: fields may come in any order, a repeated scalar field keeps its last value,
unknown fields (and known fields with an unexpected wire type) are skipped, strings
must be valid UTF-8. Any malformed input raises :class:`~loom.errors.ProtocolError`.

This module is pure: it encodes and decodes, it does no I/O.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Callable
from typing import Final, NamedTuple, TypeAlias, cast

from loom.envelope import THREAD_ID_KEY, TTL_MS_KEY, Envelope
from loom.errors import ConfigurationError, ProtocolError

__all__ = [
    "ClientEventKind",
    "PublishView",
    "decode_event",
    "encode_delivery",
    "encode_event",
    "encode_publish_event",
    "encode_server_event_field",
    "parse_client_event",
]

Buffer: TypeAlias = bytes | bytearray | memoryview
_Buf: TypeAlias = bytes | memoryview  # what the parsers index: 1-D, unsigned bytes

_MASK64: Final = (1 << 64) - 1
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
_INT32_MIN: Final = -(1 << 31)
_INT32_MAX: Final = (1 << 31) - 1
_MAX_FIELD: Final = (1 << 29) - 1
_MAX_GROUP_DEPTH: Final = 100

# Wire types.
_VARINT: Final = 0
_I64: Final = 1
_LEN: Final = 2
_SGROUP: Final = 3
_EGROUP: Final = 4
_I32: Final = 5

_TTL_KEY_BYTES: Final = TTL_MS_KEY.encode()
_TTL_KEY_LEN: Final = len(_TTL_KEY_BYTES)
_THREAD_KEY_BYTES: Final = THREAD_ID_KEY.encode()
_THREAD_KEY_LEN: Final = len(_THREAD_KEY_BYTES)

_EVENT_FIELDS: Final = {
    1: "id",
    2: "type",
    3: "timestamp_ms",
    4: "source",
    5: "metadata",
    6: "payload",
    7: "confidence",
    8: "tags",
    9: "priority",
}

_F32 = struct.Struct("<f")
_pack_f32 = _F32.pack
_unpack_f32 = _F32.unpack_from


class ClientEventKind(enum.IntEnum):
    """The member of the ``ClientEvent.msg`` oneof (its field number)."""

    PUBLISH = 1
    ACK = 2
    PING = 3
    ACTION_RESULT = 4
    SUBSCRIPTION = 5


_KINDS: Final[tuple[ClientEventKind, ...]] = (ClientEventKind.PUBLISH, *ClientEventKind)


class PublishView(NamedTuple):
    """A ``Publish`` parsed without decoding its event.

    ``event`` is the raw protobuf ``Event`` (a view into the parsed buffer when
    possible); ``expires_ms`` is ``Event.timestamp_ms`` plus the event's
    ``loom.ttl_ms`` metadata value when that is a positive integer, else 0 (never);
    ``thread_id`` is the event's ``loom.thread_id`` metadata value ("" when absent).
    """

    topic: str
    event: memoryview | bytes
    expires_ms: int
    thread_id: str = ""


# ---------------------------------------------------------------------------
# Encoding


_BYTES: Final = tuple(bytes((n,)) for n in range(0x80))


def _varint(value: int) -> bytes:
    """The varint of a non-negative value below 2**64."""
    if value < 0x80:
        return _BYTES[value]
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _prefixes(tag: int) -> tuple[bytes, ...]:
    """``tag`` followed by each one-byte length 0..127."""
    return tuple(bytes((tag, n)) for n in range(0x80))


# Tag byte + one-byte length, for the length-delimited fields 1, 2, 4, 5, 6, 8.
_P1: Final = _prefixes(0x0A)
_P2: Final = _prefixes(0x12)
_P4: Final = _prefixes(0x22)
_P5: Final = _prefixes(0x2A)
_P6: Final = _prefixes(0x32)
_P8: Final = _prefixes(0x42)


def _header(tag: int, length: int) -> bytes:
    """A one-byte tag followed by a varint length."""
    if length < 0x80:
        return bytes((tag, length))
    if length < 0x4000:
        return bytes((tag, (length & 0x7F) | 0x80, length >> 7))
    return bytes((tag,)) + _varint(length)


def encode_event(env: Envelope) -> bytes:
    """Encode an envelope as a protobuf ``Event``.

    The metadata written is :meth:`Envelope.wire_metadata` (the named envelope fields
    under their reserved ``loom.*`` keys). Raises :class:`~loom.errors.ConfigurationError`
    for values the schema cannot carry (a ``timestamp_ms`` outside int64, a
    ``priority`` outside int32, a string that is not encodable as UTF-8).
    """
    out = bytearray()
    try:
        s = env.id
        if s:
            b = s.encode()
            n = len(b)
            out += _P1[n] if n < 0x80 else _header(0x0A, n)
            out += b
        s = env.type
        if s:
            b = s.encode()
            n = len(b)
            out += _P2[n] if n < 0x80 else _header(0x12, n)
            out += b
        ts = env.timestamp_ms
        if ts:
            if not _INT64_MIN <= ts <= _INT64_MAX:
                raise ConfigurationError(f"timestamp_ms {ts} does not fit in int64")
            out.append(0x18)
            out += _varint(ts & _MASK64)
        s = env.source
        if s:
            b = s.encode()
            n = len(b)
            out += _P4[n] if n < 0x80 else _header(0x22, n)
            out += b
        for key, value in env.wire_metadata().items():
            kb = key.encode()
            vb = value.encode()
            kn = len(kb)
            vn = len(vb)
            if kn + vn < 0x7C:  # the entry and both lengths fit in one byte each
                out += _P5[kn + vn + 4]
                out += _P1[kn]
                out += kb
                out += _P2[vn]
                out += vb
            else:
                entry = _header(0x0A, kn) + kb + _header(0x12, vn) + vb
                out += _header(0x2A, len(entry))
                out += entry
        p = env.payload
        if p:
            n = len(p)
            out += _P6[n] if n < 0x80 else _header(0x32, n)
            out += p
        c = env.confidence
        if c or math.copysign(1.0, c) < 0.0:  # -0.0 is written, as protobuf does
            out.append(0x3D)
            try:
                out += _pack_f32(c)
            except OverflowError:  # too large for a float32: +-inf, as protobuf does
                out += _pack_f32(math.copysign(math.inf, c))
        for s in env.tags:
            b = s.encode()
            n = len(b)
            out += _P8[n] if n < 0x80 else _header(0x42, n)
            out += b
        pr = env.priority
        if pr:
            if not _INT32_MIN <= pr <= _INT32_MAX:
                raise ConfigurationError(f"priority {pr} does not fit in int32")
            out.append(0x48)
            out += _varint(pr & _MASK64)
    except UnicodeEncodeError as exc:
        raise ConfigurationError(f"cannot encode event {env.id!r}: {exc}") from exc
    return bytes(out)


def encode_publish_event(topic: str, event_pb: Buffer) -> bytes:
    """``ClientEvent{publish{topic, event}}`` around an already-encoded ``Event``.

    By the v1 contract these are also the bytes of ``ServerEvent{delivery{topic,
    event}}`` (see :data:`encode_delivery`). The event field is always written, even
    when ``event_pb`` is empty (an event with all fields at their defaults).
    """
    tb = topic.encode()
    tn = len(tb)
    en = len(event_pb)
    if tn < 0x80 and en < 0x80:
        inner_len = (tn + 2 if tn else 0) + en + 2
        if inner_len < 0x80:
            if tn:
                return b"".join((_P1[inner_len], _P1[tn], tb, _P2[en], event_pb))
            return b"".join((_P1[inner_len], _P2[en], event_pb))
    topic_part = _header(0x0A, tn) + tb if tn else b""
    event_head = _header(0x12, en)
    inner_len = len(topic_part) + len(event_head) + en
    return b"".join((_header(0x0A, inner_len), topic_part, event_head, event_pb))


encode_delivery = encode_publish_event
"""``ServerEvent{delivery{topic, event}}``: the same bytes as the matching publish."""


def encode_server_event_field(field: int, message_bytes: Buffer) -> bytes:
    """Wrap an already-encoded sub-message as the ``ServerEvent`` oneof member ``field``
    (``delivery=1``, ``pong=2``, ``err=3``, ``action_call=4``, ``subscription=5``)."""
    if not 1 <= field <= _MAX_FIELD:
        raise ConfigurationError(f"invalid protobuf field number {field}")
    return b"".join((_varint((field << 3) | _LEN), _varint(len(message_bytes)), message_bytes))


# ---------------------------------------------------------------------------
# Decoding


def _as_buf(data: Buffer) -> _Buf:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray):
        return memoryview(data)
    if isinstance(data, memoryview):
        if data.format == "B" and data.ndim == 1 and data.c_contiguous:
            return data
        if data.c_contiguous:
            return data.cast("B")
        return data.tobytes()
    raise TypeError(f"expected bytes or memoryview, not {type(data).__name__}")


def _read_varint(buf: _Buf, pos: int, end: int, what: str) -> tuple[int, int]:
    """Decode the varint at ``pos`` (which must end before ``end``); its value is
    truncated to 64 bits, like protobuf does. Returns (value, position after it)."""
    if pos + 1 < end:  # fast paths: one or two bytes
        b0 = buf[pos]
        if b0 < 0x80:
            return b0, pos + 1
        b1 = buf[pos + 1]
        if b1 < 0x80:
            return (b0 & 0x7F) | (b1 << 7), pos + 2
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise ProtocolError(f"malformed {what}: truncated varint at offset {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise ProtocolError(f"malformed {what}: varint longer than 10 bytes at offset {pos}")


def _read_tag(buf: _Buf, pos: int, end: int, what: str) -> tuple[int, int]:
    """A tag that did not fit in one byte."""
    tag, pos = _read_varint(buf, pos, end, what)
    if tag > 0xFFFFFFFF:
        raise ProtocolError(f"malformed {what}: tag {tag} out of range")
    return tag, pos


def _overrun(what: str, field: int, length: int, pos: int, end: int) -> ProtocolError:
    return ProtocolError(
        f"malformed {what}: field {field} of length {length} at offset {pos} "
        f"runs past the end of the message (offset {end})"
    )


def _skip(buf: _Buf, pos: int, end: int, wt: int, field: int, what: str, depth: int = 0) -> int:
    """Skip the value of an unknown field; returns the position after it."""
    if field == 0:
        raise ProtocolError(f"malformed {what}: field number 0 at offset {pos}")
    if wt == _VARINT:
        _, pos = _read_varint(buf, pos, end, what)
        return pos
    if wt == _LEN:
        length, pos = _read_varint(buf, pos, end, what)
        if pos + length > end:
            raise _overrun(what, field, length, pos, end)
        return pos + length
    if wt == _I32 or wt == _I64:
        size = 4 if wt == _I32 else 8
        if pos + size > end:
            raise _overrun(what, field, size, pos, end)
        return pos + size
    if wt == _SGROUP:
        if depth >= _MAX_GROUP_DEPTH:
            raise ProtocolError(f"malformed {what}: groups nested too deep")
        while True:
            if pos >= end:
                raise ProtocolError(f"malformed {what}: unterminated group (field {field})")
            tag, pos = _read_tag(buf, pos, end, what)
            if tag & 7 == _EGROUP:
                if tag >> 3 != field:
                    raise ProtocolError(
                        f"malformed {what}: group {field} closed by end-group {tag >> 3}"
                    )
                return pos
            pos = _skip(buf, pos, end, tag & 7, tag >> 3, what, depth + 1)
    if wt == _EGROUP:
        raise ProtocolError(f"malformed {what}: unexpected end-group (field {field})")
    raise ProtocolError(f"malformed {what}: invalid wire type {wt} (field {field})")


def _map_entry(buf: _Buf, pos: int, end: int) -> tuple[int, int, int, int]:
    """Parse a ``map<string, string>`` entry in ``[pos, end)``; returns the spans of
    its key and value (an absent key or value is an empty span)."""
    ks = ke = vs = ve = pos
    while pos < end:
        tag = buf[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _read_tag(buf, pos, end, "Event.metadata entry")
        field = tag >> 3
        if tag & 7 == _LEN and (field == 1 or field == 2):
            if pos < end and (n := buf[pos]) < 0x80:
                pos += 1
            else:
                n, pos = _read_varint(buf, pos, end, "Event.metadata entry")
            nxt = pos + n
            if nxt > end:
                raise _overrun("Event.metadata entry", field, n, pos, end)
            if field == 1:
                ks, ke = pos, nxt
            else:
                vs, ve = pos, nxt
            pos = nxt
        else:
            pos = _skip(buf, pos, end, tag & 7, field, "Event.metadata entry")
    return ks, ke, vs, ve


def _utf8(data: bytes | memoryview) -> str:
    return str(data, "utf-8")


_bytes_decode = cast("Callable[[bytes | memoryview], str]", bytes.decode)

# A memoryview smaller than this is copied to bytes before decoding: slicing bytes and
# decoding the slices is faster, and for a small message the copy costs less than that.
_COPY_BELOW: Final = 4096


def _decode_event(buf: _Buf, pos: int, end: int) -> Envelope:
    dec = _bytes_decode if isinstance(buf, bytes) else _utf8
    id_ = type_ = source = ""
    timestamp = priority = 0
    confidence = 0.0
    payload: bytes | memoryview = b""
    metadata: dict[str, str] = {}
    tags: list[str] = []
    field = 0
    try:
        while pos < end:
            tag = buf[pos]
            if tag < 0x80:
                pos += 1
            else:
                tag, pos = _read_tag(buf, pos, end, "Event")
            field = tag >> 3
            wt = tag & 7
            if wt == _LEN and 0 < field < 10:
                if pos < end and (n := buf[pos]) < 0x80:
                    pos += 1
                else:
                    n, pos = _read_varint(buf, pos, end, "Event")
                nxt = pos + n
                if nxt > end:
                    raise _overrun("Event", field, n, pos, end)
                if field == 5:
                    # Fast path for the canonical entry: key then value, short lengths.
                    if (
                        n >= 4
                        and buf[pos] == 0x0A
                        and (kn := buf[pos + 1]) < 0x80
                        and (ke := pos + 2 + kn) + 2 <= nxt
                        and buf[ke] == 0x12
                        and (vn := buf[ke + 1]) < 0x80
                        and ke + 2 + vn == nxt
                    ):
                        metadata[dec(buf[pos + 2 : ke])] = dec(buf[ke + 2 : nxt])
                    else:
                        ks, ke, vs, ve = _map_entry(buf, pos, nxt)
                        metadata[dec(buf[ks:ke])] = dec(buf[vs:ve])
                elif field == 1:
                    id_ = dec(buf[pos:nxt])
                elif field == 2:
                    type_ = dec(buf[pos:nxt])
                elif field == 6:
                    payload = buf[pos:nxt]
                elif field == 8:
                    tags.append(dec(buf[pos:nxt]))
                elif field == 4:
                    source = dec(buf[pos:nxt])
                # else: a numeric field with the wrong wire type, skipped like protobuf does
                pos = nxt
            elif wt == _VARINT and (field == 3 or field == 9):
                if pos < end and (v := buf[pos]) < 0x80:
                    pos += 1
                else:
                    v, pos = _read_varint(buf, pos, end, "Event")
                if field == 3:
                    timestamp = v - (1 << 64) if v >> 63 else v
                else:
                    v &= 0xFFFFFFFF
                    priority = v - (1 << 32) if v >> 31 else v
            elif wt == _I32 and field == 7:
                if pos + 4 > end:
                    raise _overrun("Event", field, 4, pos, end)
                confidence = _unpack_f32(buf, pos)[0]
                pos += 4
            else:
                pos = _skip(buf, pos, end, wt, field, "Event")
    except UnicodeDecodeError as exc:
        name = _EVENT_FIELDS.get(field, str(field))
        raise ProtocolError(f"malformed Event: invalid UTF-8 in field {name}: {exc}") from None
    return Envelope.from_wire(
        id=id_,
        type=type_,
        timestamp_ms=timestamp,
        source=source,
        metadata=metadata,
        payload=bytes(payload),
        confidence=confidence,
        tags=tags,
        priority=priority,
    )


def decode_event(data: Buffer) -> Envelope:
    """Decode a protobuf ``Event`` into an envelope (the reserved ``loom.*`` metadata
    keys become the named fields, see :meth:`Envelope.from_wire`).

    Raises :class:`~loom.errors.ProtocolError` when ``data`` is not a valid ``Event``.
    """
    buf = _as_buf(data)
    if not isinstance(buf, bytes) and len(buf) < _COPY_BELOW:
        buf = buf.tobytes()
    return _decode_event(buf, 0, len(buf))


def _scan_event(buf: _Buf, pos: int, end: int) -> tuple[int, str]:
    """``(expires_ms, thread_id)`` of the ``Event`` in ``[pos, end)``: reads only
    ``timestamp_ms`` and the metadata entries, skips (but bounds-checks) the rest."""
    timestamp = 0
    ttl_start = -1
    ttl_end = -1
    thread_start = -1
    thread_end = -1
    while pos < end:
        tag = buf[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _read_tag(buf, pos, end, "Event")
        field = tag >> 3
        wt = tag & 7
        if wt == _LEN and field != 0:
            if pos < end and (n := buf[pos]) < 0x80:
                pos += 1
            else:
                n, pos = _read_varint(buf, pos, end, "Event")
            nxt = pos + n
            if nxt > end:
                raise _overrun("Event", field, n, pos, end)
            if field == 5:
                if (
                    n >= 4
                    and buf[pos] == 0x0A
                    and (kn := buf[pos + 1]) < 0x80
                    and (ke := pos + 2 + kn) + 2 <= nxt
                    and buf[ke] == 0x12
                    and (vn := buf[ke + 1]) < 0x80
                    and ke + 2 + vn == nxt
                ):
                    if kn == _TTL_KEY_LEN and buf[pos + 2 : ke] == _TTL_KEY_BYTES:
                        ttl_start, ttl_end = ke + 2, nxt
                    elif kn == _THREAD_KEY_LEN and buf[pos + 2 : ke] == _THREAD_KEY_BYTES:
                        thread_start, thread_end = ke + 2, nxt
                else:
                    ks, ke, vs, ve = _map_entry(buf, pos, nxt)
                    if ke - ks == _TTL_KEY_LEN and buf[ks:ke] == _TTL_KEY_BYTES:
                        ttl_start, ttl_end = vs, ve
                    elif ke - ks == _THREAD_KEY_LEN and buf[ks:ke] == _THREAD_KEY_BYTES:
                        thread_start, thread_end = vs, ve
            pos = nxt
        elif wt == _VARINT and field != 0:
            if pos < end and (v := buf[pos]) < 0x80:
                pos += 1
            else:
                v, pos = _read_varint(buf, pos, end, "Event")
            if field == 3:
                timestamp = v - (1 << 64) if v >> 63 else v
        elif wt == _I32 and field != 0:
            pos += 4
            if pos > end:
                raise _overrun("Event", field, 4, pos - 4, end)
        else:
            pos = _skip(buf, pos, end, wt, field, "Event")
    thread_id = ""
    if thread_start >= 0:
        try:
            thread_id = str(buf[thread_start:thread_end], "utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(
                f"malformed Event: invalid UTF-8 in metadata[{THREAD_ID_KEY!r}]"
            ) from None
    if ttl_start < 0:
        return 0, thread_id
    try:
        ttl = int(str(buf[ttl_start:ttl_end], "utf-8"))
    except UnicodeDecodeError:
        raise ProtocolError(f"malformed Event: invalid UTF-8 in metadata[{TTL_MS_KEY!r}]") from None
    except ValueError:
        return 0, thread_id
    return (timestamp + ttl if ttl > 0 else 0), thread_id


def _parse_publish(buf: _Buf, pos: int, end: int) -> PublishView:
    topic_start = topic_end = pos
    event_start = event_end = -1
    more_events: list[tuple[int, int]] | None = None
    while pos < end:
        tag = buf[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _read_tag(buf, pos, end, "Publish")
        field = tag >> 3
        if tag & 7 == _LEN and (field == 1 or field == 2):
            if pos < end and (n := buf[pos]) < 0x80:
                pos += 1
            else:
                n, pos = _read_varint(buf, pos, end, "Publish")
            nxt = pos + n
            if nxt > end:
                raise _overrun("Publish", field, n, pos, end)
            if field == 1:
                topic_start, topic_end = pos, nxt
            elif event_start < 0:
                event_start, event_end = pos, nxt
            else:  # a repeated message field merges: concatenate the encodings
                if more_events is None:
                    more_events = []
                more_events.append((pos, nxt))
            pos = nxt
        else:
            pos = _skip(buf, pos, end, tag & 7, field, "Publish")
    try:
        topic = str(buf[topic_start:topic_end], "utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"malformed Publish: invalid UTF-8 in topic: {exc}") from None
    event: memoryview | bytes
    if event_start < 0:
        return PublishView(topic, b"", 0)
    if more_events is None:
        expires, thread_id = _scan_event(buf, event_start, event_end)
        event = (
            memoryview(buf)[event_start:event_end]
            if isinstance(buf, bytes)
            else (buf[event_start:event_end])
        )
        return PublishView(topic, event, expires, thread_id)
    event = b"".join([buf[event_start:event_end], *(buf[s:e] for s, e in more_events)])
    return PublishView(topic, event, *_scan_event(event, 0, len(event)))


def parse_client_event(data: Buffer) -> tuple[ClientEventKind, PublishView | bytes]:
    """Parse the ``ClientEvent.msg`` oneof.

    For a publish, returns ``(PUBLISH, PublishView)``: the topic, the raw ``Event``
    bytes (not decoded: only ``timestamp_ms`` and the metadata are scanned, for
    ``expires_ms``). For the other members, returns the kind and the raw bytes of
    the sub-message, to decode with the generated classes. When several members are
    present the last one wins, as in protobuf (a member repeated in a row merges).
    An empty message, one without a known member, or malformed bytes raise
    :class:`~loom.errors.ProtocolError`.
    """
    buf = _as_buf(data)
    end = len(buf)
    if end == 0:
        raise ProtocolError("malformed ClientEvent: empty message")
    pos = 0
    kind = 0
    start = stop = 0
    more: list[tuple[int, int]] | None = None
    while pos < end:
        tag = buf[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _read_tag(buf, pos, end, "ClientEvent")
        field = tag >> 3
        if tag & 7 == _LEN and 1 <= field <= 5:
            if pos < end and (n := buf[pos]) < 0x80:
                pos += 1
            else:
                n, pos = _read_varint(buf, pos, end, "ClientEvent")
            nxt = pos + n
            if nxt > end:
                raise _overrun("ClientEvent", field, n, pos, end)
            if field != kind:
                kind = field
                start, stop = pos, nxt
                more = None
            else:  # the same member again: protobuf merges it into the first
                if more is None:
                    more = []
                more.append((pos, nxt))
            pos = nxt
        else:
            pos = _skip(buf, pos, end, tag & 7, field, "ClientEvent")
    if kind == 0:
        raise ProtocolError("malformed ClientEvent: no known message in it")
    if more is not None:
        buf = b"".join([buf[start:stop], *(buf[s:e] for s, e in more)])
        start, stop = 0, len(buf)
    if kind == 1:
        return ClientEventKind.PUBLISH, _parse_publish(buf, start, stop)
    return _KINDS[kind], bytes(buf[start:stop])
