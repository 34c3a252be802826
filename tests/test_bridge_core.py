"""BridgeCore and AgentLink without any I/O: registrations, links, routing, calls.

The tests drive :meth:`AgentLink.handle` / :meth:`AgentLink.wait` /
:meth:`AgentLink.take` directly, the way a transport does, under asyncio and trio.
"""

from __future__ import annotations

import anyio
import msgspec
import pytest

from loom import _frames as fr
from loom import _pbwire
from loom._session import CapabilityInfo, Registration
from loom.bridge._core import AgentLink, BridgeCore, BridgeLimits, RoutedEvent
from loom.bridge._queues import QoS
from loom.envelope import Envelope
from loom.errors import BridgeRejected, ProtocolError

pytestmark = pytest.mark.anyio

WAIT = 5  # seconds; a bound on waits that should end at once


def reg(
    agent_id: str,
    topics: list[str] | None = None,
    caps: list[tuple[str, str]] | None = None,
    qos: dict[str, int] | None = None,
) -> Registration:
    return Registration(
        agent_id=agent_id,
        topics=topics or [],
        capabilities=[CapabilityInfo(name, version) for name, version in caps or []],
        subscription_qos=qos or {},
    )


def connect(
    core: BridgeCore,
    agent_id: str,
    topics: list[str] | None = None,
    *,
    caps: list[tuple[str, str]] | None = None,
    qos: dict[str, int] | None = None,
) -> AgentLink:
    core.register(reg(agent_id, topics, caps, qos))
    return core.attach(agent_id, batched=True)


def pub(topic: str, event_id: str, *, thread_id: str | None = None, ttl_ms: int | None = None):
    env = Envelope.new("t", event_id=event_id, thread_id=thread_id, ttl_ms=ttl_ms)
    return fr.publish_frame(topic, env)


def take_events(link: AgentLink, limit: int = 10_000) -> list[tuple[str, str]]:
    """(topic, event id) of every queued event; control frames must be empty."""
    events, control = link.take(limit)
    assert control == []
    return [(q.topic, fr.decode_envelope(q.item.batched()).id) for q in events]  # type: ignore[attr-defined]


def take_control(link: AgentLink) -> list[fr.Frame]:
    events, control = link.take(10_000)
    assert events == []
    return control


def stats_of(core: BridgeCore, topic: str):
    topics, _, _ = core.stats()
    return {t.topic: t for t in topics}[topic]


# -- registration ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registration", "message"),
    [
        (reg(""), "non-empty"),
        (reg("   "), "non-empty"),
        (reg("x" * 257), "longer than 256"),
        (reg("a", ["bad topic"]), "whitespace"),
        (reg("a", ["a..b"]), "empty segment"),
        (reg("a", ["a.>.b"]), "last segment"),
        (reg("a", qos={"t": 7}), "invalid QoS"),
        (reg("a", qos={"a b": 0}), "whitespace"),
        (reg("a", caps=[("", "1")]), "empty name"),
    ],
)
async def test_register_refuses_invalid(registration: Registration, message: str) -> None:
    core = BridgeCore()
    with pytest.raises(BridgeRejected, match=message):
        core.register(registration)
    assert not core.is_registered(registration.agent_id)


async def test_register_filters_features() -> None:
    core = BridgeCore()
    accepted = core.register(
        reg("a"), [fr.FEATURE_SUBSCRIBE, "nope", fr.FEATURE_BATCH, fr.FEATURE_SUBSCRIBE]
    )
    assert accepted == [fr.FEATURE_SUBSCRIBE, fr.FEATURE_BATCH]
    assert core.features_of("a") == accepted
    assert core.features_of("unknown") == []
    assert core.is_registered("a")
    assert core.register(reg("a")) == []  # re-registration replaces, features too
    assert core.features_of("a") == []


async def test_attach_needs_registration() -> None:
    core = BridgeCore()
    with pytest.raises(BridgeRejected, match="not registered"):
        core.attach("ghost", batched=False)
    assert core.connected == 0


async def test_max_registrations_forgets_a_disconnected_agent() -> None:
    core = BridgeCore(BridgeLimits(max_registrations=2))
    connect(core, "a")
    core.register(reg("b"))  # registered, never connected
    core.register(reg("c"))  # forgets "b", the disconnected one
    assert core.is_registered("a") and core.is_registered("c")
    assert not core.is_registered("b")
    core.attach("c", batched=True)
    with pytest.raises(BridgeRejected, match="too many"):
        core.register(reg("d"))
    core.register(reg("a", ["t"]))  # an id already known is always accepted


async def test_reregistration_takes_effect_on_the_next_stream() -> None:
    core = BridgeCore()
    old = connect(core, "a", ["t1"])
    core.register(reg("a", ["t2"]))
    pubber = connect(core, "p")
    await pubber.handle([pub("t1", "e1"), pub("t2", "e2")])
    assert take_events(old) == [("t1", "e1")]  # the open stream keeps the old topics
    new = core.attach("a", batched=False)
    assert old.closed
    await pubber.handle([pub("t1", "e3"), pub("t2", "e4")])
    assert take_events(new) == [("t2", "e4")]
    assert core.subscriptions_of(new) == ["t2"]


# -- links: attach, takeover, detach ------------------------------------------------


async def test_takeover_closes_the_older_stream() -> None:
    core = BridgeCore()
    first = connect(core, "a", ["t"], caps=[("echo", "1")])
    second = core.attach("a", batched=False)
    assert first.closed and "replaced" in first.close_reason
    assert not second.closed
    assert core.connected == 1
    with anyio.fail_after(WAIT):
        await first.wait()  # a closed link's writer wakes up at once
    # the transport of the older stream detaches it when it ends: no effect on the newer
    core.detach(first, "stream ended")
    assert core.connected == 1
    assert core.subscriptions_of(second) == ["t"]
    assert core.subscriptions_of(first) == []
    await second.handle([pub("t", "e1")])
    assert take_events(second) == [("t", "e1")]
    assert [c[2] for c in core.capabilities()] == ["a"]


async def test_detach_undoes_attach_and_is_idempotent() -> None:
    core = BridgeCore()
    link = connect(core, "a", ["t", "x.>"], caps=[("echo", "")])
    await link.handle([fr.Subscribe("s", join=["th"])])
    assert take_control(link) == [fr.Subscribed("s")]
    core.detach(link)
    core.detach(link)
    assert link.closed and link.close_reason == "stream closed"
    assert core.connected == 0
    assert core.subscriptions_of(link) == []
    assert core.capabilities() == []
    assert core._threads == {} and core._link_threads == {}
    other = connect(core, "b")
    await other.handle([pub("t", "e", thread_id="th")])
    assert stats_of(core, "t").subscribers == 0
    assert core.is_registered("a")  # the registration stays for a reconnect


async def test_link_wait_and_push_control() -> None:
    core = BridgeCore()
    link = connect(core, "a")
    async with anyio.create_task_group() as tg:
        woke = anyio.Event()

        async def waiter() -> None:
            await link.wait()
            woke.set()

        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert not woke.is_set()
        link.push_control(fr.Pong(1))
        with anyio.fail_after(WAIT):
            await woke.wait()
    assert take_control(link) == [fr.Pong(1)]
    link.close("bye")
    link.push_control(fr.Pong(2))  # ignored once closed
    assert link.take(10) == ([], [])
    with anyio.fail_after(WAIT):
        await link.wait()
    assert "AgentLink('a'" in repr(link)


# -- publish routing -------------------------------------------------------------------


async def test_subscriptions_start_at_attach() -> None:
    core = BridgeCore()
    core.register(reg("a", ["t"]))
    pubber = connect(core, "p")
    await pubber.handle([pub("t", "before")])
    s = stats_of(core, "t")
    assert (s.published, s.subscribers, s.delivered) == (1, 0, 0)  # counted, not an error
    link = core.attach("a", batched=True)
    assert take_events(link) == []
    await pubber.handle([pub("t", "after")])
    assert take_events(link) == [("t", "after")]


async def test_publish_routes_exact_and_wildcards_and_self() -> None:
    core = BridgeCore()
    a = connect(core, "a", ["orders.eu.created"])
    b = connect(core, "b", ["orders.*.created"])
    c = connect(core, "c", ["orders.>"])
    d = connect(core, "d", ["other"])
    await a.handle([pub("orders.eu.created", "e1"), pub("orders.us.created", "e2")])
    await a.handle([pub("orders.eu", "e3")])
    assert take_events(a) == [("orders.eu.created", "e1")]  # the publisher's own event
    assert take_events(b) == [("orders.eu.created", "e1"), ("orders.us.created", "e2")]
    assert take_events(c) == [
        ("orders.eu.created", "e1"),
        ("orders.us.created", "e2"),
        ("orders.eu", "e3"),
    ]
    assert take_events(d) == []
    s = stats_of(core, "orders.eu.created")
    assert (s.published, s.delivered, s.subscribers, s.backlog) == (1, 3, 3, 0)


async def test_invalid_topic_is_refused_and_the_link_goes_on() -> None:
    core = BridgeCore()
    a = connect(core, "a", ["ok"])
    await a.handle([pub("bad..topic", "e1"), pub("with.*", "e2"), pub("ok", "e3")])
    events, control = a.take(100)
    assert [(q.topic) for q in events] == ["ok"]
    assert [(e.code, e.ref) for e in control] == [  # type: ignore[union-attr]
        ("INVALID_TOPIC", "bad..topic"),
        ("INVALID_TOPIC", "with.*"),
    ]
    assert not a.closed


async def test_ping_pong_and_unexpected_frames() -> None:
    core = BridgeCore()
    a = connect(core, "a")
    await a.handle([fr.Ping(12345), fr.Deliver("t", msgspec.Raw(b"\x90")), fr.Pong(1)])
    control = take_control(a)
    assert control[0] == fr.Pong(12345)
    assert [type(c) for c in control[1:]] == [fr.Error, fr.Error]
    assert all(c.code == "UNEXPECTED_FRAME" for c in control[1:])  # type: ignore[union-attr]


async def test_thread_members_get_events_once_on_any_topic() -> None:
    core = BridgeCore()
    both = connect(core, "both", ["t"])
    member = connect(core, "member")
    outsider = connect(core, "outsider", ["t"])
    await both.handle([fr.Subscribe("1", join=["th"])])
    await member.handle([fr.Subscribe("2", join=["th", "other"])])
    assert take_control(both) == [fr.Subscribed("1")]
    assert take_control(member) == [fr.Subscribed("2")]
    p = connect(core, "p")
    await p.handle(
        [pub("t", "e1", thread_id="th"), pub("x.y", "e2", thread_id="th"), pub("t", "e3")]
    )
    assert take_events(both) == [("t", "e1"), ("x.y", "e2"), ("t", "e3")]
    assert take_events(member) == [("t", "e1"), ("x.y", "e2")]
    assert take_events(outsider) == [("t", "e1"), ("t", "e3")]
    assert stats_of(core, "t").delivered == 5  # e1 to three links, e3 to two
    await member.handle([fr.Subscribe("3", leave=["th", "never-joined"])])
    assert take_control(member) == [fr.Subscribed("3")]
    await p.handle([pub("x.y", "e4", thread_id="th"), pub("x.y", "e5", thread_id="other")])
    assert take_events(member) == [("x.y", "e5")]
    assert take_events(both) == [("x.y", "e4")]
    await member.handle([fr.Subscribe("4", leave=["other"])])
    take_control(member)
    assert "other" not in core._threads and member not in core._link_threads


async def test_dynamic_subscribe_and_unsubscribe() -> None:
    core = BridgeCore()
    a = connect(core, "a")
    p = connect(core, "p")
    await a.handle([fr.Subscribe("s1", add=["x.*", "y"], qos=QoS.REALTIME)])
    assert take_control(a) == [fr.Subscribed("s1")]
    assert core.subscriptions_of(a) == ["x.*", "y"]
    await p.handle([pub("x.1", "e1"), pub("y", "e2")])
    assert take_events(a) == [("x.1", "e1"), ("y", "e2")]
    assert a.outbox.queue(QoS.REALTIME) is a.outbox.queues()[0]
    await a.handle([fr.Subscribe("s2", remove=["x.*", "not-subscribed"])])
    assert take_control(a) == [fr.Subscribed("s2")]
    await p.handle([pub("x.1", "e3"), pub("y", "e4")])
    assert take_events(a) == [("y", "e4")]
    # re-adding a pattern replaces its QoS
    await a.handle([fr.Subscribe("s3", add=["y"], qos=QoS.BACKGROUND)])
    take_control(a)
    assert core._index.match("y") == ((a, QoS.BACKGROUND),)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (fr.Subscribe("e", add=["bad topic"]), "whitespace"),
        (fr.Subscribe("e", remove=["a..b"]), "empty segment"),
        (fr.Subscribe("e", add=["ok"], qos=9), "invalid QoS"),
        (fr.Subscribe("e", join=[""]), "thread_id must be non-empty"),
        (fr.Subscribe("e", leave=[""]), "thread_id must be non-empty"),
    ],
)
async def test_refused_subscription_changes(change: fr.Subscribe, error: str) -> None:
    core = BridgeCore()
    a = connect(core, "a", ["keep"])
    await a.handle([change])
    [answer] = take_control(a)
    assert isinstance(answer, fr.Subscribed) and answer.id == "e"
    assert error in answer.error
    assert core.subscriptions_of(a) == ["keep"]  # nothing changed


# -- QoS ---------------------------------------------------------------------------------


async def test_realtime_subscription_drops_when_full() -> None:
    core = BridgeCore()
    rt = connect(core, "rt", ["t"], qos={"t": QoS.REALTIME})
    p = connect(core, "p")
    with anyio.fail_after(WAIT):  # never waits
        await p.handle([pub("t", f"e{i}") for i in range(70)])
    s = stats_of(core, "t")
    assert (s.published, s.dropped, s.backlog) == (70, 6, 64)
    assert take_events(rt) == [("t", f"e{i}") for i in range(64)]
    s = stats_of(core, "t")
    assert (s.delivered, s.dropped, s.backlog) == (64, 6, 0)


async def test_qos_map_entries_subscribe_too() -> None:
    core = BridgeCore()
    a = connect(core, "a", ["t"], qos={"rt.>": QoS.REALTIME, "t": QoS.BACKGROUND})
    assert core.subscriptions_of(a) == ["t", "rt.>"]
    assert dict(core._index.match("t")) == {a: QoS.BACKGROUND}
    assert dict(core._index.match("rt.x")) == {a: QoS.REALTIME}


async def test_batched_subscription_makes_the_publisher_wait() -> None:
    core = BridgeCore()
    slow = connect(core, "slow", ["t"])
    p = connect(core, "p")
    await p.handle([pub("t", f"e{i}") for i in range(1024)])  # fills the batched queue
    done = anyio.Event()

    async def publish_more() -> None:
        await p.handle([pub("t", "late")])
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(publish_more)
        await anyio.wait_all_tasks_blocked()
        assert not done.is_set()  # lossless: the publisher waits for room
        assert len(take_events(slow, 1)) == 1
        with anyio.fail_after(WAIT):
            await done.wait()
    events = take_events(slow)
    assert len(events) == 1024 and events[-1] == ("t", "late")
    s = stats_of(core, "t")
    assert (s.published, s.delivered, s.dropped) == (1025, 1025, 0)


async def test_detaching_a_slow_subscriber_releases_the_publisher() -> None:
    core = BridgeCore()
    slow = connect(core, "slow", ["t"])
    p = connect(core, "p")
    await p.handle([pub("t", f"e{i}") for i in range(1024)])
    done = anyio.Event()

    async def publish_more() -> None:
        await p.handle([pub("t", "late")])
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(publish_more)
        await anyio.wait_all_tasks_blocked()
        assert not done.is_set()
        core.detach(slow, "gone")
        with anyio.fail_after(WAIT):
            await done.wait()
    s = stats_of(core, "t")
    assert (s.published, s.dropped, s.backlog) == (1025, 1025, 0)


async def test_expired_events_are_counted() -> None:
    core = BridgeCore()
    a = connect(core, "a", ["t"])
    env = Envelope.new("t", event_id="old", timestamp_ms=1, ttl_ms=1)
    await a.handle([fr.publish_frame("t", env), pub("t", "fresh", ttl_ms=60_000)])
    assert take_events(a) == [("t", "fresh")]
    s = stats_of(core, "t")
    assert (s.published, s.expired, s.delivered) == (2, 1, 1)


# -- encodings -------------------------------------------------------------------------


async def test_routed_event_converts_between_wires_once() -> None:
    env = Envelope.new("t", b"\x00payload", event_id="e1", thread_id="th", sender="s")
    pb_event = _pbwire.encode_event(env)
    from_v1 = RoutedEvent("topic", pb_event=pb_event)
    assert fr.decode_envelope(from_v1.batched()) == env
    assert from_v1.batched() is from_v1.batched()
    from_batch = RoutedEvent("topic", raw=fr.encode_envelope(env))
    assert from_batch.v1() == _pbwire.encode_delivery("topic", pb_event)
    assert from_batch.v1() is from_batch.v1()
    for raw in [
        b"\xc1",  # not msgpack
        b"\x05",  # msgpack, not an envelope
        b"\x92\xa2\x00\x80\xa1t",  # an envelope whose id is not UTF-8
    ]:
        with pytest.raises(ProtocolError):
            RoutedEvent("topic", raw=msgspec.Raw(raw)).v1()


# -- capability calls ------------------------------------------------------------------


def call(call_id: str, capability: str = "echo", payload: bytes = b'{"x": 1}', **kw) -> fr.Call:
    return fr.Call(
        call_id,
        capability,
        kw.get("version", ""),
        payload,
        kw.get("timeout_ms", 10_000),
        kw.get("headers", {}),
        "corr",
    )


async def test_call_roundtrip_through_a_provider() -> None:
    core = BridgeCore()
    provider = connect(core, "prov", caps=[("echo", "1")])
    caller = connect(core, "caller")
    await caller.handle([call("c1", headers={"x-agent-id": "caller"})])
    [routed] = take_control(provider)
    assert isinstance(routed, fr.Call)
    assert (routed.capability, routed.version, routed.payload) == ("echo", "", b'{"x": 1}')
    assert routed.headers == {"x-agent-id": "caller"} and routed.correlation_id == "corr"
    assert routed.id != "c1"  # the bridge's own id
    assert core.stats()[2] == 1
    await provider.handle([fr.Result(routed.id, fr.STATUS_OK, b"42")])
    assert take_control(caller) == [fr.Result("c1", fr.STATUS_OK, b"42")]
    assert core.stats()[2] == 0
    # a second result for the same call is ignored
    await provider.handle([fr.Result(routed.id, fr.STATUS_OK, b"43")])
    assert caller.take(10) == ([], [])


@pytest.mark.parametrize(
    ("the_call", "status", "code"),
    [
        (call("c", "missing"), fr.STATUS_ERROR, "NOT_FOUND"),
        (call("c", "echo", version="2"), fr.STATUS_ERROR, "NOT_FOUND"),
        (call("c", "echo", b"{not json"), fr.STATUS_ERROR, "INVALID_INPUT"),
        (call("c", ""), fr.STATUS_ERROR, "INVALID_INPUT"),
    ],
)
async def test_calls_answered_at_once(the_call: fr.Call, status: int, code: str) -> None:
    core = BridgeCore()
    provider = connect(core, "prov", caps=[("echo", "1")])
    caller = connect(core, "caller")
    await caller.handle([the_call])
    [answer] = take_control(caller)
    assert isinstance(answer, fr.Result)
    assert (answer.id, answer.status, answer.error_code) == ("c", status, code)
    assert answer.error_message
    assert provider.take(10) == ([], [])
    assert core.stats()[2] == 0


async def test_empty_payload_and_exact_version_are_routed() -> None:
    core = BridgeCore()
    provider = connect(core, "prov", caps=[("echo", "1")])
    caller = connect(core, "caller")
    await caller.handle([call("c", payload=b"", version="1")])
    [routed] = take_control(provider)
    assert isinstance(routed, fr.Call) and routed.version == "1"


async def test_calls_beyond_the_limit_are_refused() -> None:
    core = BridgeCore(BridgeLimits(max_pending_calls=1))
    provider = connect(core, "prov", caps=[("echo", "")])
    caller = connect(core, "caller")
    await caller.handle([call("c1"), call("c2")])
    [answer] = take_control(caller)
    assert isinstance(answer, fr.Result)
    assert (answer.id, answer.status, answer.error_code) == (
        "c2",
        fr.STATUS_RETRYABLE,
        "RESOURCE_EXHAUSTED",
    )
    assert len(take_control(provider)) == 1


async def test_provider_gone_fails_its_calls() -> None:
    core = BridgeCore()
    provider = connect(core, "prov", caps=[("echo", "")])
    caller = connect(core, "caller")
    await caller.handle([call("c1"), call("c2")])
    assert len(take_control(provider)) == 2
    core.detach(provider, "gone")
    results = take_control(caller)
    assert [(r.id, r.status, r.error_code) for r in results] == [  # type: ignore[union-attr]
        ("c1", fr.STATUS_ERROR, "PROVIDER_GONE"),
        ("c2", fr.STATUS_ERROR, "PROVIDER_GONE"),
    ]
    assert core.stats()[2] == 0
    await caller.handle([call("c3")])
    [answer] = take_control(caller)
    assert answer.error_code == "NOT_FOUND"  # type: ignore[union-attr]


async def test_provider_takeover_fails_calls_to_the_older_stream() -> None:
    core = BridgeCore()
    old = connect(core, "prov", caps=[("echo", "")])
    caller = connect(core, "caller")
    await caller.handle([call("c1")])
    [routed] = take_control(old)
    new = core.attach("prov", batched=True)
    [answer] = take_control(caller)
    assert answer.error_code == "PROVIDER_GONE"  # type: ignore[union-attr]
    await new.handle([fr.Result(routed.id, fr.STATUS_OK, b"1")])  # type: ignore[union-attr]
    assert caller.take(10) == ([], [])


async def test_caller_gone_drops_its_calls() -> None:
    core = BridgeCore()
    provider = connect(core, "prov", caps=[("echo", "")])
    caller = connect(core, "caller")
    await caller.handle([call("c1")])
    [routed] = take_control(provider)
    core.detach(caller)
    assert core.stats()[2] == 0
    await provider.handle([fr.Result(routed.id, fr.STATUS_OK, b"1")])  # type: ignore[union-attr]
    assert provider.take(10) == ([], [])


async def test_result_from_another_agent_is_ignored() -> None:
    core = BridgeCore()
    provider = connect(core, "prov", caps=[("echo", "")])
    intruder = connect(core, "intruder")
    caller = connect(core, "caller")
    await caller.handle([call("c1")])
    [routed] = take_control(provider)
    await intruder.handle([fr.Result(routed.id, fr.STATUS_OK, b"forged")])  # type: ignore[union-attr]
    assert caller.take(10) == ([], [])
    await provider.handle([fr.Result(routed.id, fr.STATUS_OK, b"real")])  # type: ignore[union-attr]
    assert take_control(caller) == [fr.Result("c1", fr.STATUS_OK, b"real")]


async def test_round_robin_across_providers_of_any_version() -> None:
    core = BridgeCore()
    p1 = connect(core, "p1", caps=[("echo", "1")])
    p2 = connect(core, "p2", caps=[("echo", "2")])
    caller = connect(core, "caller")
    await caller.handle([call(f"c{i}") for i in range(4)])
    assert len(take_control(p1)) == 2
    assert len(take_control(p2)) == 2
    await caller.handle([call("v2", version="2")])
    assert p1.take(10) == ([], [])
    assert len(take_control(p2)) == 1


async def test_unary_caller_and_cancel() -> None:
    core = BridgeCore()
    provider = connect(core, "prov", caps=[("echo", "")])
    results: list[fr.Result] = []
    bridge_id = core.start_call(object(), call("u1"), results.append)
    assert bridge_id is not None
    [routed] = take_control(provider)
    assert routed.id == bridge_id  # type: ignore[union-attr]
    core.cancel_call(bridge_id, "caller gave up")
    assert [(r.id, r.status, r.error_code) for r in results] == [
        ("u1", fr.STATUS_TIMEOUT, "TIMEOUT")
    ]
    core.cancel_call(bridge_id, "again")  # already finished: nothing happens
    assert len(results) == 1
    assert core.start_call(object(), call("u2", "missing"), results.append) is None
    assert results[-1].error_code == "NOT_FOUND"


async def test_close_all_answers_calls_and_closes_links() -> None:
    core = BridgeCore()
    provider = connect(core, "prov", caps=[("echo", "")])
    caller = connect(core, "caller")
    results: list[fr.Result] = []
    core.start_call(object(), call("u1"), results.append)
    await caller.handle([call("c1")])
    core.close_all("shutting down")
    assert [(r.id, r.error_code, r.error_message) for r in results] == [
        ("u1", "UNAVAILABLE", "shutting down")
    ]
    assert provider.closed and caller.closed
    assert provider.close_reason == caller.close_reason == "shutting down"
    assert core.stats()[1:] == (0, 0)


async def test_calls_past_their_deadline_are_answered_when_calls_come_and_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import loom.bridge._core as core_module

    clock = [1_000_000]
    monkeypatch.setattr(core_module, "now_ms", lambda: clock[0])
    core = BridgeCore()
    provider = connect(core, "prov", caps=[("echo", "1")])
    caller = connect(core, "caller")
    await caller.handle([call("slow", timeout_ms=100)])
    [first] = take_control(provider)
    clock[0] += 50
    assert core.expire_calls() == 0
    clock[0] += 100
    await caller.handle([call("next", timeout_ms=100)])  # the sweep runs here
    [answer] = take_control(caller)
    assert answer.id == "slow" and answer.status == fr.STATUS_TIMEOUT  # type: ignore[union-attr]
    [second] = take_control(provider)
    await provider.handle([fr.Result(first.id, fr.STATUS_OK, b"late")])  # type: ignore[union-attr]
    assert caller.take(10) == ([], [])  # too late: ignored
    clock[0] += 1_000
    await provider.handle([fr.Result("unknown", fr.STATUS_OK, b"")])  # sweeps too
    [expired] = take_control(caller)
    assert expired.id == "next" and expired.status == fr.STATUS_TIMEOUT  # type: ignore[union-attr]
    assert core.stats()[2] == 0
    del second
