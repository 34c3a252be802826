"""Per-subscriber delivery queues with QoS, TTL and per-topic counters.

The router offers each published event to the :class:`DeliveryQueue` of every
matching subscriber; the subscriber's transport takes events out in batches.
A full queue either drops the event (``REALTIME``: late data is useless) or
tells the publisher to wait (``BATCHED`` / ``BACKGROUND``: back-pressure).

Accounting invariant, per topic: every offer that does not return
:attr:`OfferResult.FULL` ends up counted exactly once, as ``delivered``,
``dropped`` or ``expired``, or is still queued (``backlog``).

No I/O here; the only async parts are the waits, which use :mod:`anyio` events
created lazily, so the same objects work under asyncio and trio. All methods
must be called from the event loop thread that runs the transports.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Final

import anyio
import msgspec

from loom.errors import ConfigurationError

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_MAX_TOPICS",
    "OTHER_TOPIC",
    "DeliveryQueue",
    "OfferResult",
    "Outbox",
    "QoS",
    "QueuedEvent",
    "StatsTable",
    "TopicSnapshot",
    "TopicStats",
    "now_ms",
]


def now_ms() -> int:
    """Wall-clock time in integer milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


class QoS(enum.IntEnum):
    """Delivery class of a subscription (same numbers as the wire enum)."""

    REALTIME = 0
    BATCHED = 1
    BACKGROUND = 2


DEFAULT_CAPACITY: Final[Mapping[QoS, int]] = {
    QoS.REALTIME: 64,
    QoS.BATCHED: 1024,
    QoS.BACKGROUND: 4096,
}

DEFAULT_MAX_TOPICS: Final = 10_000
OTHER_TOPIC: Final = "_other"
"""Name of the bucket that aggregates topics beyond :class:`StatsTable`'s limit."""


class TopicStats:
    """Mutable counters of one topic, updated in place on the delivery path.

    ``subscribers`` is a gauge (matching subscribers at the last publish) and so
    is ``backlog`` (events of this topic queued right now); the rest count up.
    """

    __slots__ = ("backlog", "delivered", "dropped", "expired", "published", "subscribers", "topic")

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.published = 0
        self.delivered = 0
        self.dropped = 0
        self.expired = 0
        self.subscribers = 0
        self.backlog = 0

    def snapshot(self) -> TopicSnapshot:
        return TopicSnapshot(
            topic=self.topic,
            published=self.published,
            delivered=self.delivered,
            dropped=self.dropped,
            expired=self.expired,
            subscribers=self.subscribers,
            backlog=self.backlog,
        )

    def __repr__(self) -> str:
        return (
            f"TopicStats({self.topic!r}, published={self.published},"
            f" delivered={self.delivered}, dropped={self.dropped}, expired={self.expired},"
            f" subscribers={self.subscribers}, backlog={self.backlog})"
        )


class TopicSnapshot(msgspec.Struct, frozen=True):
    """Immutable copy of one topic's counters, ready to encode (JSON, msgpack)."""

    topic: str
    published: int
    delivered: int
    dropped: int
    expired: int
    subscribers: int
    backlog: int


class StatsTable:
    """The :class:`TopicStats` of every topic, bounded in size.

    At most ``max_topics`` topics get their own entry; events of any further
    topic are aggregated into one extra entry named :data:`OTHER_TOPIC`, so a
    publisher inventing topic names cannot grow the table without limit.
    """

    __slots__ = ("_max_topics", "_other", "_stats")

    def __init__(self, max_topics: int = DEFAULT_MAX_TOPICS) -> None:
        if max_topics < 0:
            raise ConfigurationError(f"max_topics must be >= 0, got {max_topics}")
        self._max_topics = max_topics
        self._stats: dict[str, TopicStats] = {}
        self._other: TopicStats | None = None

    def get(self, topic: str) -> TopicStats:
        """The counters of ``topic`` (created on first use, or the ``_other`` bucket)."""
        stats = self._stats.get(topic)
        if stats is not None:
            return stats
        if len(self._stats) < self._max_topics:
            stats = self._stats[topic] = TopicStats(topic)
            return stats
        if self._other is None:
            self._other = TopicStats(OTHER_TOPIC)
        return self._other

    def record_publish(self, topic: str, subscriber_count: int) -> TopicStats:
        """Count one publish to ``topic`` with ``subscriber_count`` matching subscribers."""
        stats = self.get(topic)
        stats.published += 1
        stats.subscribers = subscriber_count
        return stats

    def snapshot(self) -> list[TopicSnapshot]:
        """Copies of all counters, in order of first use (``_other`` last, if any)."""
        out = [s.snapshot() for s in self._stats.values()]
        if self._other is not None:
            out.append(self._other.snapshot())
        return out

    def __len__(self) -> int:
        return len(self._stats) + (self._other is not None)


class QueuedEvent:
    """One event waiting in a queue: its topic, counters, expiry and opaque payload.

    ``expires_at_ms`` is an absolute time in ms (0 = never expires). ``item`` is
    whatever the transport needs to send it. Nothing in it is subscriber
    specific, so one instance can be offered to every matching subscriber.
    """

    __slots__ = ("expires_at_ms", "item", "stats", "topic")

    def __init__(self, topic: str, stats: TopicStats, expires_at_ms: int, item: object) -> None:
        self.topic = topic
        self.stats = stats
        self.expires_at_ms = expires_at_ms
        self.item = item

    def __repr__(self) -> str:
        return (
            f"QueuedEvent({self.topic!r}, expires_at_ms={self.expires_at_ms}, item={self.item!r})"
        )


class OfferResult(enum.Enum):
    """What :meth:`DeliveryQueue.offer` did with an event."""

    ACCEPTED = enum.auto()
    """Queued."""
    DROPPED = enum.auto()
    """Discarded and counted as dropped (full realtime queue, or queue closed)."""
    FULL = enum.auto()
    """Not queued and not counted: wait with ``wait_for_space()`` and offer again."""
    EXPIRED = enum.auto()
    """Its TTL had already passed; counted as expired."""


_ACCEPTED: Final = OfferResult.ACCEPTED
_DROPPED: Final = OfferResult.DROPPED
_FULL: Final = OfferResult.FULL
_EXPIRED: Final = OfferResult.EXPIRED


class DeliveryQueue:
    """Bounded FIFO of events for one subscriber at one QoS level.

    ``REALTIME`` queues drop new events when full; ``BATCHED`` and
    ``BACKGROUND`` queues answer :attr:`OfferResult.FULL` so the caller can
    apply back-pressure. Expired events are skipped (and counted) when taken.
    """

    __slots__ = (
        "_capacity",
        "_clock",
        "_closed",
        "_drop_when_full",
        "_items",
        "_nonempty",
        "_outbox",
        "_qos",
        "_space",
    )

    def __init__(
        self, qos: QoS, capacity: int | None = None, clock: Callable[[], int] = now_ms
    ) -> None:
        qos = QoS(qos)
        if capacity is None:
            capacity = DEFAULT_CAPACITY[qos]
        if capacity < 1:
            raise ConfigurationError(f"queue capacity must be >= 1, got {capacity}")
        self._qos = qos
        self._capacity = capacity
        self._clock = clock
        self._drop_when_full = qos is QoS.REALTIME
        self._items: deque[QueuedEvent] = deque()
        self._closed = False
        self._space: anyio.Event | None = None
        self._nonempty: anyio.Event | None = None
        self._outbox: Outbox | None = None

    @property
    def qos(self) -> QoS:
        return self._qos

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<DeliveryQueue {self._qos.name} {len(self._items)}/{self._capacity}{state}>"

    def offer(self, ev: QueuedEvent) -> OfferResult:
        """Try to queue ``ev``; see :class:`OfferResult` for what happened."""
        if self._closed:
            ev.stats.dropped += 1
            return _DROPPED
        expires = ev.expires_at_ms
        if expires and expires <= self._clock():
            ev.stats.expired += 1
            return _EXPIRED
        items = self._items
        if len(items) >= self._capacity:
            if self._drop_when_full:
                ev.stats.dropped += 1
                return _DROPPED
            return _FULL
        items.append(ev)
        ev.stats.backlog += 1
        event = self._nonempty
        if event is not None:
            self._nonempty = None
            event.set()
        outbox = self._outbox
        if outbox is not None and outbox._nonempty is not None:
            outbox._wake()
        return _ACCEPTED

    async def wait_for_space(self) -> None:
        """Return once the queue has room (or is closed); then offer again."""
        while len(self._items) >= self._capacity and not self._closed:
            event = self._space
            if event is None:
                event = self._space = anyio.Event()
            await event.wait()

    async def wait_nonempty(self) -> None:
        """Return once the queue holds at least one event (or is closed)."""
        while not self._items and not self._closed:
            event = self._nonempty
            if event is None:
                event = self._nonempty = anyio.Event()
            await event.wait()

    def take(self, limit: int) -> list[QueuedEvent]:
        """Pop up to ``limit`` unexpired events, oldest first, counting them delivered."""
        out: list[QueuedEvent] = []
        if self._items and limit > 0:
            self._take_into(out, limit)
        return out

    def _take_into(self, out: list[QueuedEvent], limit: int) -> None:
        items = self._items
        popleft = items.popleft
        append = out.append
        now = -1
        taken = 0
        while items and taken < limit:
            ev = popleft()
            stats = ev.stats
            stats.backlog -= 1
            expires = ev.expires_at_ms
            if expires:
                if now < 0:
                    now = self._clock()
                if expires <= now:
                    stats.expired += 1
                    continue
            stats.delivered += 1
            append(ev)
            taken += 1
        event = self._space
        if event is not None:
            self._space = None
            event.set()

    def close(self) -> int:
        """The subscriber went away: drop what is queued and wake all waiters.

        Returns how many events were dropped. Later offers return ``DROPPED``.
        """
        self._closed = True
        items = self._items
        dropped = len(items)
        for ev in items:
            stats = ev.stats
            stats.backlog -= 1
            stats.dropped += 1
        items.clear()
        for event in (self._space, self._nonempty):
            if event is not None:
                event.set()
        self._space = self._nonempty = None
        return dropped


class Outbox:
    """Everything waiting for one connected agent: one :class:`DeliveryQueue` per QoS used.

    Queues are created on first use. :meth:`take` drains ``REALTIME`` first,
    then ``BATCHED``, then ``BACKGROUND``, so bulk traffic never delays
    latency-sensitive events.
    """

    __slots__ = ("_capacity", "_clock", "_closed", "_nonempty", "_queues")

    def __init__(
        self, capacity: Mapping[QoS, int] | None = None, clock: Callable[[], int] = now_ms
    ) -> None:
        self._capacity: dict[QoS, int] = dict(DEFAULT_CAPACITY)
        if capacity is not None:
            for qos, cap in capacity.items():
                if cap < 1:
                    raise ConfigurationError(
                        f"queue capacity for {QoS(qos).name} must be >= 1, got {cap}"
                    )
                self._capacity[QoS(qos)] = cap
        self._clock = clock
        self._queues: list[DeliveryQueue | None] = [None] * len(QoS)
        self._closed = False
        self._nonempty: anyio.Event | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues if q is not None)

    def __repr__(self) -> str:
        queues = ", ".join(repr(q) for q in self._queues if q is not None)
        return f"<Outbox [{queues}]{' closed' if self._closed else ''}>"

    def queue(self, qos: QoS) -> DeliveryQueue:
        """The queue for ``qos``, created on first use (already closed if the outbox is)."""
        q = self._queues[qos]
        if q is None:
            q = DeliveryQueue(qos, self._capacity[QoS(qos)], self._clock)
            q._outbox = self
            if self._closed:
                q.close()
            self._queues[qos] = q
        return q

    def queues(self) -> list[DeliveryQueue]:
        """The queues created so far, highest priority first."""
        return [q for q in self._queues if q is not None]

    def take(self, limit: int) -> list[QueuedEvent]:
        """Pop up to ``limit`` events: realtime first, then batched, then background."""
        out: list[QueuedEvent] = []
        for q in self._queues:
            if q is not None and q._items:
                remaining = limit - len(out)
                if remaining <= 0:
                    break
                q._take_into(out, remaining)
        return out

    async def wait_nonempty(self) -> None:
        """Return once any queue holds an event (or the outbox is closed)."""
        while not self._closed and not any(q._items for q in self._queues if q is not None):
            event = self._nonempty
            if event is None:
                event = self._nonempty = anyio.Event()
            await event.wait()

    async def wait_changed(self) -> None:
        """Return at the next event queued, :meth:`notify` or close (or at once if
        closed), for a writer that also waits on things of its own."""
        if self._closed:
            return
        event = self._nonempty
        if event is None:
            event = self._nonempty = anyio.Event()
        await event.wait()

    def notify(self) -> None:
        """Wake :meth:`wait_changed` (something else for the agent is ready)."""
        self._wake()

    def _wake(self) -> None:
        event = self._nonempty
        if event is not None:
            self._nonempty = None
            event.set()

    def close(self) -> int:
        """The agent went away: close every queue; return how many events were dropped."""
        self._closed = True
        dropped = sum(q.close() for q in self._queues if q is not None)
        self._wake()
        return dropped
