"""The event envelope: an event plus the metadata that threads, correlates and routes it."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

__all__ = [
    "CORRELATION_ID_KEY",
    "REPLY_TO_KEY",
    "RESERVED_KEYS",
    "SENDER_KEY",
    "THREAD_ID_KEY",
    "TTL_MS_KEY",
    "Envelope",
    "new_id",
    "reply_topic",
]

THREAD_ID_KEY = "loom.thread_id"
CORRELATION_ID_KEY = "loom.correlation_id"
SENDER_KEY = "loom.sender"
REPLY_TO_KEY = "loom.reply_to"
TTL_MS_KEY = "loom.ttl_ms"
RESERVED_KEYS = frozenset({THREAD_ID_KEY, CORRELATION_ID_KEY, SENDER_KEY, REPLY_TO_KEY, TTL_MS_KEY})

_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def new_id() -> str:
    """A process-unique, globally-unlikely-to-collide event id (cheaper than uuid4)."""
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


def reply_topic(agent_id: str) -> str:
    """The private reply topic of an agent: ``agent.{agent_id}.replies``."""
    return f"agent.{agent_id}.replies"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Envelope(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """An event with its routing metadata.

    ``thread_id`` groups related events, ``correlation_id`` links a reply to its
    request, ``sender`` is the emitting agent, ``reply_to`` the topic replies go to and
    ``ttl_ms`` how long the event stays deliverable after ``timestamp_ms``.
    ``metadata`` holds any other string key/values; on the v1 wire the named fields
    travel in metadata under the reserved ``loom.*`` keys.

    Envelopes are not tracked by Python's cycle collector (they hold only strings,
    bytes and numbers), which keeps garbage collection off the per-event path.
    """

    id: str
    type: str
    payload: bytes = b""
    timestamp_ms: int = 0
    source: str = ""
    thread_id: str | None = None
    correlation_id: str | None = None
    sender: str | None = None
    reply_to: str | None = None
    ttl_ms: int | None = None
    metadata: dict[str, str] = {}
    tags: list[str] = []
    confidence: float = 0.0
    priority: int = 0

    @classmethod
    def new(
        cls,
        event_type: str | None = None,
        payload: bytes = b"",
        *,
        event_id: str | None = None,
        type: str | None = None,
        id: str | None = None,
        thread_id: str | None = None,
        correlation_id: str | None = None,
        sender: str | None = None,
        reply_to: str | None = None,
        ttl_ms: int | None = None,
        source: str = "",
        metadata: Mapping[str, str] | None = None,
        tags: Iterable[str] | None = None,
        timestamp_ms: int | None = None,
        confidence: float = 0.0,
        priority: int = 0,
    ) -> Envelope:
        """Create an envelope; a missing id is generated and the timestamp is now.

        ``event_type`` and ``type`` are the same thing (likewise ``event_id`` and
        ``id``); give either.
        """
        kind = event_type if event_type is not None else type
        if kind is None:
            raise TypeError("Envelope.new() needs event_type= (or type=)")
        if type is not None and event_type is not None and type != event_type:
            raise TypeError("Envelope.new() got different event_type= and type=")
        ident = event_id if event_id is not None else id
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError(f"payload must be bytes, not {payload.__class__.__name__}")
        return cls(
            id=ident if ident is not None else new_id(),
            type=kind,
            payload=bytes(payload),
            timestamp_ms=timestamp_ms if timestamp_ms is not None else _now_ms(),
            source=source,
            thread_id=thread_id,
            correlation_id=correlation_id,
            sender=sender,
            reply_to=reply_to,
            ttl_ms=ttl_ms,
            metadata=dict(metadata) if metadata else {},
            tags=list(tags) if tags else [],
            confidence=confidence,
            priority=priority,
        )

    @property
    def expires_ms(self) -> int:
        """Wall-clock millisecond after which the event is stale; 0 means never."""
        if self.ttl_ms is None or self.ttl_ms <= 0:
            return 0
        return self.timestamp_ms + self.ttl_ms

    def wire_metadata(self) -> dict[str, str]:
        """``metadata`` plus the named fields under their reserved ``loom.*`` keys."""
        meta = dict(self.metadata)
        if self.thread_id is not None:
            meta[THREAD_ID_KEY] = self.thread_id
        if self.correlation_id is not None:
            meta[CORRELATION_ID_KEY] = self.correlation_id
        if self.sender is not None:
            meta[SENDER_KEY] = self.sender
        if self.reply_to is not None:
            meta[REPLY_TO_KEY] = self.reply_to
        if self.ttl_ms is not None:
            meta[TTL_MS_KEY] = str(self.ttl_ms)
        return meta

    @classmethod
    def from_wire(
        cls,
        *,
        id: str,
        type: str,
        timestamp_ms: int,
        source: str,
        metadata: Mapping[str, str],
        payload: bytes,
        confidence: float = 0.0,
        tags: Iterable[str] = (),
        priority: int = 0,
    ) -> Envelope:
        """Build an envelope from v1 Event fields, lifting the reserved metadata keys."""
        meta = dict(metadata)
        ttl_text = meta.pop(TTL_MS_KEY, None)
        ttl: int | None
        try:
            ttl = int(ttl_text) if ttl_text is not None else None
        except ValueError:
            ttl = None
        return cls(
            id=id,
            type=type,
            payload=bytes(payload),
            timestamp_ms=timestamp_ms,
            source=source,
            thread_id=meta.pop(THREAD_ID_KEY, None),
            correlation_id=meta.pop(CORRELATION_ID_KEY, None),
            sender=meta.pop(SENDER_KEY, None),
            reply_to=meta.pop(REPLY_TO_KEY, None),
            ttl_ms=ttl,
            metadata=meta,
            tags=list(tags),
            confidence=confidence,
            priority=priority,
        )

    @classmethod
    def from_proto(cls, ev: Any) -> Envelope:
        """Create from a protobuf ``Event`` (generated betterproto2 or official protobuf)."""
        return cls.from_wire(
            id=ev.id,
            type=ev.type,
            timestamp_ms=int(ev.timestamp_ms),
            source=ev.source,
            metadata=dict(ev.metadata),
            payload=bytes(ev.payload),
            confidence=float(ev.confidence),
            tags=list(ev.tags),
            priority=int(ev.priority),
        )

    def to_proto(self, pb_event_cls: Any = None) -> Any:
        """Convert to a protobuf ``Event`` of the given class (default: loom's generated one)."""
        if pb_event_cls is None:
            from loom.proto.generated.loom.v1 import Event

            pb_event_cls = Event
        return pb_event_cls(
            id=self.id,
            type=self.type,
            timestamp_ms=self.timestamp_ms,
            source=self.source,
            metadata=self.wire_metadata(),
            payload=self.payload,
            confidence=self.confidence,
            tags=list(self.tags),
            priority=self.priority,
        )
