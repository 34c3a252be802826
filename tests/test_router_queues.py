"""Delivery queues, outboxes and per-topic counters of the bridge router."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loom.bridge._queues import (
    DEFAULT_CAPACITY,
    OTHER_TOPIC,
    DeliveryQueue,
    OfferResult,
    Outbox,
    QoS,
    QueuedEvent,
    StatsTable,
    TopicSnapshot,
    TopicStats,
    now_ms,
)
from loom.errors import ConfigurationError

ACCEPTED = OfferResult.ACCEPTED
DROPPED = OfferResult.DROPPED
FULL = OfferResult.FULL
EXPIRED = OfferResult.EXPIRED


class Clock:
    """Fake millisecond clock."""

    def __init__(self, now: int = 1_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def ev(stats: TopicStats, item: object = None, expires_at_ms: int = 0) -> QueuedEvent:
    return QueuedEvent(stats.topic, stats, expires_at_ms, item)


def accounted(s: TopicStats) -> int:
    return s.delivered + s.dropped + s.expired + s.backlog


# -- basics --------------------------------------------------------------------


def test_qos_numbers_and_defaults() -> None:
    assert [int(q) for q in QoS] == [0, 1, 2]
    assert DEFAULT_CAPACITY == {QoS.REALTIME: 64, QoS.BATCHED: 1024, QoS.BACKGROUND: 4096}
    q = DeliveryQueue(QoS.BATCHED)
    assert (q.qos, q.capacity, q.closed, len(q)) == (QoS.BATCHED, 1024, False, 0)
    assert DeliveryQueue(QoS(0)).capacity == 64


def test_now_ms_is_integer_milliseconds() -> None:
    t = now_ms()
    assert isinstance(t, int)
    assert t > 1_600_000_000_000  # after 2020, in ms


@pytest.mark.parametrize("capacity", [0, -1])
def test_bad_capacity(capacity: int) -> None:
    with pytest.raises(ConfigurationError, match="capacity must be >= 1"):
        DeliveryQueue(QoS.REALTIME, capacity)
    with pytest.raises(ConfigurationError, match="BATCHED must be >= 1"):
        Outbox({QoS.BATCHED: capacity})


def test_fifo_take_and_counters() -> None:
    s = TopicStats("t")
    q = DeliveryQueue(QoS.BATCHED, capacity=10)
    events = [ev(s, i) for i in range(5)]
    for e in events:
        assert q.offer(e) is ACCEPTED
    assert (len(q), s.backlog) == (5, 5)
    assert q.take(0) == []
    assert [e.item for e in q.take(2)] == [0, 1]
    assert [e.item for e in q.take(10)] == [2, 3, 4]
    assert q.take(10) == []
    assert (s.delivered, s.backlog, s.dropped, s.expired) == (5, 0, 0, 0)


def test_realtime_full_drops_new_event() -> None:
    s = TopicStats("t")
    q = DeliveryQueue(QoS.REALTIME, capacity=2)
    assert [q.offer(ev(s, i)) for i in range(4)] == [ACCEPTED, ACCEPTED, DROPPED, DROPPED]
    assert (s.dropped, s.backlog) == (2, 2)
    assert [e.item for e in q.take(5)] == [0, 1]


@pytest.mark.parametrize("qos", [QoS.BATCHED, QoS.BACKGROUND])
def test_batched_full_asks_caller_to_wait(qos: QoS) -> None:
    s = TopicStats("t")
    q = DeliveryQueue(qos, capacity=1)
    assert q.offer(ev(s, 0)) is ACCEPTED
    assert q.offer(ev(s, 1)) is FULL
    assert (s.dropped, s.expired, s.backlog) == (0, 0, 1)  # FULL counts nothing
    q.take(1)
    assert q.offer(ev(s, 1)) is ACCEPTED


def test_ttl_on_offer_and_on_take() -> None:
    clock = Clock(1_000)
    s = TopicStats("t")
    q = DeliveryQueue(QoS.BACKGROUND, capacity=10, clock=clock)
    assert q.offer(ev(s, "late", expires_at_ms=1_000)) is EXPIRED  # deadline reached
    assert q.offer(ev(s, "never", expires_at_ms=0)) is ACCEPTED
    assert q.offer(ev(s, "soon", expires_at_ms=1_005)) is ACCEPTED
    assert q.offer(ev(s, "later", expires_at_ms=1_050)) is ACCEPTED
    assert s.expired == 1
    clock.now = 1_010
    assert [e.item for e in q.take(10)] == ["never", "later"]
    assert (s.expired, s.delivered, s.backlog) == (2, 2, 0)


def test_take_limit_counts_only_returned_events() -> None:
    clock = Clock(0)
    s = TopicStats("t")
    q = DeliveryQueue(QoS.BATCHED, capacity=10, clock=clock)
    for i in range(3):
        q.offer(ev(s, f"x{i}", expires_at_ms=5))
    q.offer(ev(s, "a"))
    q.offer(ev(s, "b"))
    clock.now = 5
    assert [e.item for e in q.take(1)] == ["a"]  # the expired ones are skipped
    assert (s.expired, s.delivered, len(q)) == (3, 1, 1)


def test_close_drops_backlog_and_later_offers() -> None:
    s = TopicStats("t")
    q = DeliveryQueue(QoS.BATCHED, capacity=10)
    for i in range(3):
        q.offer(ev(s, i))
    assert q.close() == 3
    assert q.closed
    assert (len(q), s.backlog, s.dropped) == (0, 0, 3)
    assert q.offer(ev(s)) is DROPPED
    assert s.dropped == 4
    assert q.close() == 0
    assert q.take(10) == []


def test_one_event_offered_to_many_queues() -> None:
    table = StatsTable()
    stats = table.record_publish("t", 3)
    shared = ev(stats, "payload")
    queues = [DeliveryQueue(QoS.REALTIME, capacity=1) for _ in range(3)]
    queues[0].offer(ev(stats))  # fill the first one
    assert [q.offer(shared) for q in queues] == [DROPPED, ACCEPTED, ACCEPTED]
    assert (stats.published, stats.subscribers, stats.backlog, stats.dropped) == (1, 3, 3, 1)


# -- stats table -----------------------------------------------------------------


def test_stats_table_and_snapshot() -> None:
    table = StatsTable()
    a = table.get("a")
    assert table.get("a") is a
    assert table.record_publish("a", 2) is a
    table.record_publish("a", 5)
    a.delivered += 3
    table.record_publish("b", 0)
    snap = table.snapshot()
    assert snap == [
        TopicSnapshot(
            "a", published=2, delivered=3, dropped=0, expired=0, subscribers=5, backlog=0
        ),
        TopicSnapshot(
            "b", published=1, delivered=0, dropped=0, expired=0, subscribers=0, backlog=0
        ),
    ]
    assert msgspec.json.decode(msgspec.json.encode(snap[0]))["published"] == 2
    a.delivered += 1
    assert snap[0].delivered == 3  # a copy
    assert len(table) == 2


def test_stats_table_is_bounded() -> None:
    table = StatsTable(max_topics=2)
    table.record_publish("a", 1)
    table.record_publish("b", 1)
    c = table.record_publish("c", 4)
    d = table.record_publish("d", 7)
    assert c is d
    assert c.topic == OTHER_TOPIC
    assert table.get("a").topic == "a"  # known topics keep their entry
    assert [s.topic for s in table.snapshot()] == ["a", "b", OTHER_TOPIC]
    assert (c.published, c.subscribers) == (2, 7)
    assert len(table) == 3
    with pytest.raises(ConfigurationError):
        StatsTable(max_topics=-1)


# -- outbox ----------------------------------------------------------------------


def test_outbox_priority_and_lazy_queues() -> None:
    s = TopicStats("t")
    box = Outbox({QoS.REALTIME: 2})
    assert box.queues() == []
    assert box.take(10) == []
    bg = box.queue(QoS.BACKGROUND)
    assert box.queue(QoS.BACKGROUND) is bg
    assert bg.capacity == DEFAULT_CAPACITY[QoS.BACKGROUND]
    bg.offer(ev(s, "bg1"))
    bg.offer(ev(s, "bg2"))
    box.queue(QoS.BATCHED).offer(ev(s, "b1"))
    rt = box.queue(QoS.REALTIME)
    assert rt.capacity == 2
    rt.offer(ev(s, "rt1"))
    assert [q.qos for q in box.queues()] == [QoS.REALTIME, QoS.BATCHED, QoS.BACKGROUND]
    assert len(box) == 4
    assert [e.item for e in box.take(2)] == ["rt1", "b1"]
    rt.offer(ev(s, "rt2"))
    assert [e.item for e in box.take(10)] == ["rt2", "bg1", "bg2"]
    assert len(box) == 0


def test_outbox_close() -> None:
    s = TopicStats("t")
    box = Outbox()
    box.queue(QoS.REALTIME).offer(ev(s))
    box.queue(QoS.BATCHED).offer(ev(s))
    assert box.close() == 2
    assert box.closed
    assert (s.dropped, s.backlog) == (2, 0)
    late = box.queue(QoS.BACKGROUND)  # created after close: already closed
    assert late.closed
    assert late.offer(ev(s)) is DROPPED


# -- waiting (both backends) -------------------------------------------------------


@pytest.mark.anyio
async def test_wait_for_space_wakes_after_take() -> None:
    s = TopicStats("t")
    q = DeliveryQueue(QoS.BATCHED, capacity=1)
    q.offer(ev(s, 0))
    assert q.offer(ev(s, 1)) is FULL
    woke: list[str] = []

    async def waiter(name: str) -> None:
        await q.wait_for_space()
        woke.append(name)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, "w1")
            tg.start_soon(waiter, "w2")
            await anyio.wait_all_tasks_blocked()
            assert woke == []
            q.take(1)
    assert sorted(woke) == ["w1", "w2"]
    assert q.offer(ev(s, 1)) is ACCEPTED


@pytest.mark.anyio
async def test_wait_for_space_returns_at_once_when_room() -> None:
    q = DeliveryQueue(QoS.BACKGROUND, capacity=1)
    with anyio.fail_after(5):
        await q.wait_for_space()
        await q.wait_for_space()


@pytest.mark.anyio
async def test_wait_nonempty_wakes_after_offer() -> None:
    s = TopicStats("t")
    q = DeliveryQueue(QoS.REALTIME)
    got: list[object] = []

    async def consumer() -> None:
        await q.wait_nonempty()
        got.extend(e.item for e in q.take(10))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer)
            await anyio.wait_all_tasks_blocked()
            assert got == []
            q.offer(ev(s, "x"))
        assert got == ["x"]
        q.offer(ev(s, "y"))
        await q.wait_nonempty()  # already non-empty: returns at once


@pytest.mark.anyio
async def test_waiters_wake_on_close() -> None:
    s = TopicStats("t")
    full = DeliveryQueue(QoS.BATCHED, capacity=1)
    full.offer(ev(s))
    empty = DeliveryQueue(QoS.BATCHED)
    box = Outbox()
    woke: list[str] = []

    async def wait(name: str, fn: Callable[[], Awaitable[None]]) -> None:
        await fn()
        woke.append(name)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, "space", full.wait_for_space)
            tg.start_soon(wait, "nonempty", empty.wait_nonempty)
            tg.start_soon(wait, "outbox", box.wait_nonempty)
            await anyio.wait_all_tasks_blocked()
            assert woke == []
            full.close()
            empty.close()
            box.close()
        assert sorted(woke) == ["nonempty", "outbox", "space"]
        # closed: waits return at once
        await full.wait_for_space()
        await empty.wait_nonempty()
        await box.wait_nonempty()


@pytest.mark.anyio
async def test_outbox_wait_nonempty_wakes_on_any_queue() -> None:
    s = TopicStats("t")
    box = Outbox()
    box.queue(QoS.REALTIME)  # exists but stays empty
    got: list[object] = []

    async def consumer() -> None:
        await box.wait_nonempty()
        got.extend(e.item for e in box.take(10))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer)
            await anyio.wait_all_tasks_blocked()
            # a queue created after the wait began still wakes the outbox
            box.queue(QoS.BACKGROUND).offer(ev(s, "bg"))
        assert got == ["bg"]
        box.queue(QoS.BATCHED).offer(ev(s, "b"))
        await box.wait_nonempty()
        assert [e.item for e in box.take(10)] == ["b"]


@pytest.mark.anyio
async def test_producer_consumer_with_backpressure() -> None:
    s = TopicStats("t")
    q = DeliveryQueue(QoS.BATCHED, capacity=3)
    received: list[object] = []
    n = 50

    async def producer() -> None:
        for i in range(n):
            e = ev(s, i)
            while q.offer(e) is FULL:
                await q.wait_for_space()

    async def consumer() -> None:
        while len(received) < n:
            await q.wait_nonempty()
            received.extend(e.item for e in q.take(2))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consumer)
            tg.start_soon(producer)
    assert received == list(range(n))
    assert (s.delivered, s.dropped, s.backlog) == (n, 0, 0)


# -- accounting invariant (property test) ----------------------------------------

TOPICS = ["a", "b", "c", "d"]
qos_levels = st.sampled_from(list(QoS))
offer_op = st.tuples(
    st.just("offer"),
    st.integers(0, 5),  # target queue (0..2 standalone, 3..5 outbox by QoS)
    st.sampled_from(TOPICS),
    st.one_of(st.none(), st.integers(0, 6)),  # ttl (None = never expires)
)
take_op = st.tuples(st.just("take"), st.integers(0, 3), st.integers(0, 4))  # 3 = outbox
close_op = st.tuples(st.just("close"), st.integers(0, 3))  # 3 = outbox
tick_op = st.tuples(st.just("tick"), st.integers(0, 4))
# offers, takes and ticks are common, closes rare, so queues fill up and events expire
ops = st.lists(
    st.one_of(offer_op, offer_op, offer_op, take_op, take_op, tick_op, close_op),
    min_size=5,
    max_size=80,
)


class Model:
    """Expected content of one queue."""

    def __init__(self, q: DeliveryQueue) -> None:
        self.q = q
        self.items: deque[QueuedEvent] = deque()

    def offer(self, e: QueuedEvent, now: int) -> OfferResult:
        if self.q.closed:
            return DROPPED
        if e.expires_at_ms and e.expires_at_ms <= now:
            return EXPIRED
        if len(self.items) >= self.q.capacity:
            return DROPPED if self.q.qos is QoS.REALTIME else FULL
        self.items.append(e)
        return ACCEPTED

    def take(self, limit: int, now: int) -> list[QueuedEvent]:
        out: list[QueuedEvent] = []
        while self.items and len(out) < limit:
            e = self.items.popleft()
            if not e.expires_at_ms or e.expires_at_ms > now:
                out.append(e)
        return out


@settings(max_examples=200, deadline=None)
@given(
    configs=st.lists(st.tuples(qos_levels, st.integers(1, 4)), min_size=3, max_size=3),
    outbox_caps=st.fixed_dictionaries({q: st.integers(1, 4) for q in QoS}),
    max_topics=st.integers(0, 4),
    ops=ops,
)
def test_accounting_invariant(
    configs: list[tuple[QoS, int]],
    outbox_caps: dict[QoS, int],
    max_topics: int,
    ops: list[tuple[Any, ...]],
) -> None:
    clock = Clock(100)
    table = StatsTable(max_topics=max_topics)
    queues = [DeliveryQueue(qos, cap, clock) for qos, cap in configs]
    box = Outbox(outbox_caps, clock)
    models: dict[int, Model] = {id(q): Model(q) for q in queues}
    offered: dict[str, int] = {}
    all_stats: dict[str, TopicStats] = {}

    def target(i: int) -> DeliveryQueue:
        if i < 3:
            return queues[i]
        q = box.queue(QoS(i - 3))
        models.setdefault(id(q), Model(q))
        return q

    for op in ops:
        kind = op[0]
        if kind == "offer":
            _, i, topic, ttl = op
            stats = table.record_publish(topic, 1)
            all_stats[stats.topic] = stats
            expires = 0 if ttl is None else clock.now + ttl
            e = QueuedEvent(topic, stats, expires, object())
            q = target(i)
            result = q.offer(e)
            assert result is models[id(q)].offer(e, clock.now)
            if result is not FULL:
                offered[stats.topic] = offered.get(stats.topic, 0) + 1
        elif kind == "take":
            _, i, limit = op
            if i < 3:
                got = queues[i].take(limit)
                expected = models[id(queues[i])].take(limit, clock.now)
            else:
                got = box.take(limit)
                expected = []
                for q in box.queues():
                    expected += models[id(q)].take(limit - len(expected), clock.now)
            assert [id(e) for e in got] == [id(e) for e in expected]
            assert len(got) <= limit
        elif kind == "close":
            _, i = op
            closing = [queues[i]] if i < 3 else box.queues()
            n = sum(len(models[id(q)].items) for q in closing)
            assert (queues[i].close() if i < 3 else box.close()) == n
            for q in closing:
                models[id(q)].items.clear()
        else:
            clock.now += op[1]

        # the invariant, for every topic bucket
        for name, s in all_stats.items():
            assert accounted(s) == offered.get(name, 0), (name, s)
            queued = sum(1 for m in models.values() for e in m.items if e.stats is s)
            assert s.backlog == queued >= 0
        for m in models.values():
            assert len(m.q) == len(m.items)
    assert len(box) == sum(len(q) for q in box.queues())
