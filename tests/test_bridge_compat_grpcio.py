"""Compatibility: clients built on the official grpcio stack, as the existing v1 clients are.

``bridge_pb2`` / ``bridge_pb2_grpc`` are generated from ``proto/loom/v1/bridge.proto``
at test time with ``grpc_tools.protoc``; the clients are synchronous (blocking stubs,
and a request iterator fed by a ``queue.Queue`` for the bidi stream, like the
original SDK's). The bridge runs in a background thread with its own asyncio loop.
"""

from __future__ import annotations

import asyncio
import importlib
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest

from loom.bridge._core import BridgeLimits
from loom.bridge._server import BridgeServer

PROTO_ROOT = Path(__file__).resolve().parent.parent / "proto"
WAIT = 10.0  # seconds: bound on anything that should happen promptly


# -- generated code ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def gen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModuleType, ModuleType]]:
    """``(bridge_pb2, bridge_pb2_grpc)`` generated into a temporary directory.

    protoc runs from the ``proto`` root, so the file is registered in protobuf's
    process-wide descriptor pool as ``loom/v1/bridge.proto``, exactly as other tests
    generating it register it (the same file twice is fine; the same symbols under
    two file names are not). Its output lands in ``loom/v1/``, a package path taken by
    loom itself, so both modules are moved to the top of their directory and
    imported from there.
    """
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("grpcio_gen")
    code = protoc.main(
        [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO_ROOT / "loom" / "v1" / "bridge.proto"),
        ]
    )
    assert code == 0, "protoc failed"
    generated = out / "loom" / "v1"
    (out / "bridge_pb2.py").write_text((generated / "bridge_pb2.py").read_text())
    stub_code = (generated / "bridge_pb2_grpc.py").read_text()
    import_line = "from loom.v1 import bridge_pb2 as loom_dot_v1_dot_bridge__pb2"
    assert import_line in stub_code
    stub_code = stub_code.replace(import_line, "import bridge_pb2 as loom_dot_v1_dot_bridge__pb2")
    (out / "bridge_pb2_grpc.py").write_text(stub_code)
    sys.path.insert(0, str(out))
    try:
        pb2 = importlib.import_module("bridge_pb2")
        pb2_grpc = importlib.import_module("bridge_pb2_grpc")
        yield pb2, pb2_grpc
    finally:
        sys.path.remove(str(out))
        sys.modules.pop("bridge_pb2", None)
        sys.modules.pop("bridge_pb2_grpc", None)


# -- the bridge in a thread ----------------------------------------------------------------


class BridgeThread:
    """A :class:`BridgeServer` on port 0, run by its own asyncio loop in a thread."""

    def __init__(self, limits: BridgeLimits | None = None) -> None:
        self.limits = limits
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bridge", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by stop()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with BridgeServer("127.0.0.1", 0, limits=self.limits) as server:
            self.port = server.port
            self._ready.set()
            await self._stop.wait()

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(WAIT), "the bridge did not start"
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the bridge did not stop"
        if self._error is not None:
            raise self._error


class Clients:
    """grpcio channels to one bridge; every channel is closed at the end."""

    def __init__(self, bridge: BridgeThread, pb2: ModuleType, pb2_grpc: ModuleType) -> None:
        self.bridge = bridge
        self.pb2 = pb2
        self.pb2_grpc = pb2_grpc
        self.channels: list[grpc.Channel] = []
        self.streams: list[V1Stream] = []
        self.stub = self.new_stub()

    def new_stub(self) -> Any:
        ch = grpc.insecure_channel(f"127.0.0.1:{self.bridge.port}")
        self.channels.append(ch)
        return self.pb2_grpc.BridgeStub(ch)

    def register(self, agent_id: str, topics: list[str] | None = None, **kw: Any) -> None:
        response = self.stub.RegisterAgent(
            self.pb2.AgentRegisterRequest(agent_id=agent_id, subscribed_topics=topics or [], **kw),
            timeout=WAIT,
        )
        assert response.success, response.error_message

    def open(self, first: Any = None, *, raw: bool = False) -> V1Stream:
        """Open EventStream and queue ``first`` (the Ack, normally) before reading."""
        stub = self.new_stub()
        if raw:  # a multi-callable that also sends bytes as they are
            ch = self.channels[-1]
            method = ch.stream_stream(
                "/loom.v1.Bridge/EventStream",
                request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
                response_deserializer=self.pb2.ServerEvent.FromString,
            )
        else:
            method = stub.EventStream
        stream = V1Stream(self.pb2, method, first)
        self.streams.append(stream)
        return stream

    def agent(self, agent_id: str, topics: list[str] | None = None, **kw: Any) -> V1Stream:
        """Register, open the stream with the Ack, and wait until the handshake is done."""
        self.register(agent_id, topics, **kw)
        stream = self.open(self.pb2.ClientEvent(ack=self.pb2.Ack(message_id=agent_id)))
        stream.sync()
        return stream

    def stats(self) -> Any:
        return self.stub.GetStats(self.pb2.StatsRequest(), timeout=WAIT)

    def close(self) -> None:
        for stream in self.streams:
            stream.close()
        for ch in self.channels:
            ch.close()


_END = object()


class V1Stream:
    """An EventStream the way the original client drives it: a request iterator over
    a queue; a thread reads the responses so every wait here has a bound."""

    _stamps = iter(range(1_000, 1 << 40))

    def __init__(self, pb2: ModuleType, method: Callable[..., Any], first: Any) -> None:
        self.pb2 = pb2
        self.requests: queue.Queue[Any] = queue.Queue()
        if first is not None:
            self.requests.put(first)
        self.call = method(iter(self.requests.get, _END), timeout=60)
        self.inbox: queue.Queue[Any] = queue.Queue()
        self.error: grpc.RpcError | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for message in self.call:
                self.inbox.put(message)
        except grpc.RpcError as exc:
            self.inbox.put(exc)
        else:
            self.inbox.put(_END)

    def send(self, message: Any) -> None:
        self.requests.put(message)

    def publish(self, topic: str, event: Any) -> None:
        self.send(self.pb2.ClientEvent(publish=self.pb2.Publish(topic=topic, event=event)))

    def recv(self) -> Any:
        try:
            item = self.inbox.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError("nothing arrived on the stream") from None
        if isinstance(item, grpc.RpcError) or item is _END:
            raise AssertionError(f"the stream ended: {item}")
        return item

    def sync(self) -> list[Any]:
        """Ping, wait for the pong; return what arrived before it (errors, calls, ...)."""
        stamp = next(self._stamps)
        self.send(self.pb2.ClientEvent(ping=self.pb2.HeartbeatRequest(timestamp_ms=stamp)))
        before = []
        while True:
            message = self.recv()
            if message.WhichOneof("msg") == "pong" and message.pong.timestamp_ms == stamp:
                return before
            before.append(message)

    def expect_delivery(self) -> Any:
        message = self.recv()
        assert message.WhichOneof("msg") == "delivery", message
        return message.delivery

    def status(self) -> grpc.RpcError:
        """Read to the end of the stream, which must end with an error status."""
        while True:
            try:
                item = self.inbox.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError("the stream did not end") from None
            if isinstance(item, grpc.RpcError):
                return item
            assert item is not _END, "the stream ended with status OK"

    def close(self) -> None:
        self.requests.put(_END)  # half-close: the bridge ends the stream
        self._reader.join(WAIT)
        if self._reader.is_alive():
            self.call.cancel()
            self._reader.join(WAIT)


@pytest.fixture
def connect(gen: tuple[ModuleType, ModuleType]) -> Iterator[Callable[..., Clients]]:
    """``connect(limits=None)``: start a bridge, return grpcio clients for it."""
    pb2, pb2_grpc = gen
    started: list[tuple[BridgeThread, Clients]] = []

    def make(limits: BridgeLimits | None = None) -> Clients:
        bridge = BridgeThread(limits)
        bridge.start()
        clients = Clients(bridge, pb2, pb2_grpc)
        started.append((bridge, clients))
        return clients

    try:
        yield make
    finally:
        for bridge, clients in started:
            clients.close()
            bridge.stop()


@pytest.fixture
def c(connect: Callable[..., Clients]) -> Clients:
    return connect()


def event(pb2: ModuleType, event_id: str, payload: bytes = b"", **metadata: str) -> Any:
    return pb2.Event(id=event_id, type="test", payload=payload, metadata=metadata)


# -- unary RPCs ---------------------------------------------------------------------------


def test_register_agent(c: Clients) -> None:
    pb2 = c.pb2
    ok = c.stub.RegisterAgent(
        pb2.AgentRegisterRequest(
            agent_id="a",
            subscribed_topics=["t", "agent.a.replies"],
            capabilities=[
                pb2.CapabilityDescriptor(
                    name="add",
                    version="1",
                    provider=pb2.PROVIDER_NATIVE,
                    metadata={"input_schema": "{}", "output_schema": "{}"},
                )
            ],
            metadata={"k": "v"},
        ),
        timeout=WAIT,
    )
    assert ok.success and ok.error_message == ""
    refused = c.stub.RegisterAgent(pb2.AgentRegisterRequest(agent_id=""), timeout=WAIT)
    assert not refused.success and refused.error_message


def test_heartbeat(c: Clients) -> None:
    response = c.stub.Heartbeat(c.pb2.HeartbeatRequest(timestamp_ms=1), timeout=WAIT)
    assert response.status == "ok" and response.timestamp_ms > 0


# -- the stream handshake -----------------------------------------------------------------


def test_ack_first_then_ping_pong(c: Clients) -> None:
    pb2 = c.pb2
    c.register("a")
    stream = c.open(pb2.ClientEvent(ack=pb2.Ack(message_id="a")))
    stream.send(pb2.ClientEvent(ping=pb2.HeartbeatRequest(timestamp_ms=987654321)))
    message = stream.recv()
    assert message.WhichOneof("msg") == "pong"
    assert (message.pong.timestamp_ms, message.pong.status) == (987654321, "ok")


def test_publish_right_after_the_ack(c: Clients) -> None:
    """The original client queues the Ack and publishes without waiting: the
    subscriptions are in effect from the handshake on, so its own event comes back."""
    pb2 = c.pb2
    c.register("a", ["t"])
    stream = c.open(pb2.ClientEvent(ack=pb2.Ack(message_id="a")))
    stream.publish("t", event(pb2, "first"))
    assert stream.expect_delivery().event.id == "first"


def test_first_message_not_an_ack_is_refused(c: Clients) -> None:
    pb2 = c.pb2
    c.register("a")
    stream = c.open(pb2.ClientEvent(ping=pb2.HeartbeatRequest(timestamp_ms=1)))
    error = stream.status()
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "Ack" in error.details()


def test_ack_for_unregistered_agent_is_refused(c: Clients) -> None:
    stream = c.open(c.pb2.ClientEvent(ack=c.pb2.Ack(message_id="ghost")))
    error = stream.status()
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION


def test_second_stream_takes_over(c: Clients) -> None:
    pb2 = c.pb2
    first = c.agent("a", ["t"])
    second = c.open(pb2.ClientEvent(ack=pb2.Ack(message_id="a")))
    second.sync()
    error = first.status()
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert "replaced" in error.details()
    publisher = c.agent("p")
    publisher.publish("t", event(pb2, "e1"))
    assert second.expect_delivery().event.id == "e1"


# -- events --------------------------------------------------------------------------------


def test_publish_deliver_and_own_event(c: Clients) -> None:
    pb2 = c.pb2
    a = c.agent("a", ["news.>"])
    b = c.agent("b", ["news.sport"])
    sent = pb2.Event(
        id="e1",
        type="headline",
        timestamp_ms=1_700_000_000_000,
        source="a",
        metadata={"loom.sender": "a", "k": "v"},
        payload=b"\x00\xff",
        confidence=0.25,
        tags=["x"],
        priority=7,
    )
    a.publish("news.sport", sent)
    got = b.expect_delivery()
    assert got.topic == "news.sport" and got.event == sent
    own = a.expect_delivery()  # the publisher is subscribed too
    assert own.topic == "news.sport" and own.event == sent


def test_two_clients_exchange_events(c: Clients) -> None:
    pb2 = c.pb2
    a = c.agent("a", ["to.a"])
    b = c.agent("b", ["to.b"])
    for i in range(20):
        a.publish("to.b", event(pb2, f"ab{i}"))
        b.publish("to.a", event(pb2, f"ba{i}"))
    assert [b.expect_delivery().event.id for _ in range(20)] == [f"ab{i}" for i in range(20)]
    assert [a.expect_delivery().event.id for _ in range(20)] == [f"ba{i}" for i in range(20)]


def test_request_reply_like_the_original_client(c: Clients) -> None:
    """The original request() sends only loom.sender; the responder falls back to
    agent.{sender}.replies and uses the request's event id as the correlation id."""
    pb2 = c.pb2
    asker = c.agent("asker", ["agent.asker.replies"])
    answerer = c.agent("answerer", ["questions", "agent.answerer.replies"])
    request = event(pb2, "req-1", b'{"q": 1}', **{"loom.sender": "asker"})
    asker.publish("questions", request)
    got = answerer.expect_delivery().event
    assert dict(got.metadata) == {"loom.sender": "asker"}
    meta = got.metadata
    reply_to = meta.get("loom.reply_to") or f"agent.{meta['loom.sender']}.replies"
    correlation = meta.get("loom.correlation_id") or got.id
    reply = event(
        pb2,
        "rep-1",
        b'{"a": 2}',
        **{"loom.correlation_id": correlation, "loom.sender": "answerer"},
    )
    answerer.publish(reply_to, reply)
    delivery = asker.expect_delivery()
    assert delivery.topic == "agent.asker.replies"
    assert delivery.event.metadata["loom.correlation_id"] == "req-1"
    assert delivery.event.payload == b'{"a": 2}'


def test_get_stats_counters(c: Clients) -> None:
    pb2 = c.pb2
    a = c.agent("a", ["t"])
    b = c.agent("b", ["t"])
    a.publish("t", event(pb2, "e1"))
    a.publish("empty", event(pb2, "e2"))
    b.expect_delivery()
    a.expect_delivery()
    a.sync()
    stats = c.stats()
    topics = {t.topic: t for t in stats.topics}
    assert (topics["t"].published, topics["t"].delivered, topics["t"].subscribers) == (1, 2, 2)
    assert (topics["empty"].published, topics["empty"].delivered) == (1, 0)
    assert topics["t"].dropped == 0 and topics["t"].backlog == 0
    assert stats.connected_agents == 2 and stats.pending_calls == 0


# -- errors on the stream -----------------------------------------------------------------


def test_malformed_message_keeps_the_stream(c: Clients) -> None:
    pb2 = c.pb2
    other = c.agent("other", ["t"])
    c.register("a", ["t"])
    stream = c.open(pb2.ClientEvent(ack=pb2.Ack(message_id="a")), raw=True)
    stream.sync()
    stream.send(b"\x0a\xff")  # truncated
    # well-formed protobuf, but the official parser rejects the event: invalid UTF-8
    stream.send(b"\x0a\x09\x0a\x01t\x12\x04\x0a\x02\xc3\x28")
    before = stream.sync()
    assert [(m.WhichOneof("msg"), m.err.code) for m in before] == [
        ("err", "MALFORMED"),
        ("err", "MALFORMED"),
    ]
    stream.publish("t", event(pb2, "fine"))
    assert stream.expect_delivery().event.id == "fine"
    assert other.expect_delivery().event.id == "fine"  # nothing malformed reached it


def test_invalid_topic_keeps_the_stream(c: Clients) -> None:
    pb2 = c.pb2
    a = c.agent("a", ["ok"])
    a.publish("not a topic", event(pb2, "e1"))
    a.publish("wild.*", event(pb2, "e2"))
    a.publish("ok", event(pb2, "e3"))
    errors = [a.recv(), a.recv()]
    assert [(m.WhichOneof("msg"), m.err.code) for m in errors] == [("err", "INVALID_TOPIC")] * 2
    assert a.expect_delivery().event.id == "e3"


def test_oversize_message_is_discarded(connect: Callable[..., Clients]) -> None:
    c = connect(BridgeLimits(max_message_bytes=1024))
    pb2 = c.pb2
    a = c.agent("a", ["t"])
    a.publish("t", event(pb2, "big", b"x" * 2000))
    a.publish("t", event(pb2, "small", b"x" * 100))
    message = a.recv()
    assert message.WhichOneof("msg") == "err" and message.err.code == "MESSAGE_TOO_LARGE"
    assert "1024" in message.err.message
    assert a.expect_delivery().event.id == "small"


# -- ForwardAction -------------------------------------------------------------------------


def test_forward_action_answered_by_a_provider(c: Clients) -> None:
    pb2 = c.pb2
    cap = pb2.CapabilityDescriptor(name="add", version="1")
    provider = c.agent("prov", capabilities=[cap])
    future = c.stub.ForwardAction.future(
        pb2.ActionCall(
            id="call-7",
            capability="add",
            payload=b'{"a": 2, "b": 3}',
            headers={"x-correlation-id": "corr", "x-agent-id": "me"},
            timeout_ms=int(WAIT * 1000),
        ),
        timeout=WAIT,
    )
    message = provider.recv()
    assert message.WhichOneof("msg") == "action_call"
    call = message.action_call
    assert (call.capability, call.payload) == ("add", b'{"a": 2, "b": 3}')
    assert dict(call.headers) == {"x-correlation-id": "corr", "x-agent-id": "me"}
    provider.send(
        pb2.ClientEvent(
            action_result=pb2.ActionResult(id=call.id, status=pb2.ACTION_OK, output=b"5")
        )
    )
    result = future.result(timeout=WAIT)
    assert (result.id, result.status, result.output) == ("call-7", pb2.ACTION_OK, b"5")


def test_forward_action_error_from_the_provider(c: Clients) -> None:
    pb2 = c.pb2
    provider = c.agent("prov", capabilities=[pb2.CapabilityDescriptor(name="fail")])
    future = c.stub.ForwardAction.future(
        pb2.ActionCall(id="x", capability="fail", payload=b"{}"), timeout=WAIT
    )
    call = provider.recv().action_call
    provider.send(
        pb2.ClientEvent(
            action_result=pb2.ActionResult(
                id=call.id,
                status=pb2.ACTION_ERROR,
                error=pb2.ActionError(code="CAPABILITY_ERROR", message="boom"),
            )
        )
    )
    result = future.result(timeout=WAIT)
    assert result.status == pb2.ACTION_ERROR
    assert (result.error.code, result.error.message) == ("CAPABILITY_ERROR", "boom")


def test_forward_action_not_found_and_invalid_input(c: Clients) -> None:
    pb2 = c.pb2
    c.agent("prov", capabilities=[pb2.CapabilityDescriptor(name="echo", version="1")])
    for call, code in [
        (pb2.ActionCall(id="1", capability="nope", payload=b"{}"), "NOT_FOUND"),
        (pb2.ActionCall(id="2", capability="echo", version="9"), "NOT_FOUND"),
        (pb2.ActionCall(id="3", capability="echo", payload=b"not json"), "INVALID_INPUT"),
    ]:
        result = c.stub.ForwardAction(call, timeout=WAIT)
        assert (result.id, result.status, result.error.code) == (call.id, pb2.ACTION_ERROR, code)


def test_forward_action_timeout(c: Clients) -> None:
    pb2 = c.pb2
    provider = c.agent("prov", capabilities=[pb2.CapabilityDescriptor(name="slow")])
    result = c.stub.ForwardAction(
        pb2.ActionCall(id="t", capability="slow", payload=b"{}", timeout_ms=100), timeout=WAIT
    )
    assert result.id == "t" and result.status == pb2.ACTION_TIMEOUT
    assert provider.recv().WhichOneof("msg") == "action_call"
    assert c.stats().pending_calls == 0


def test_forward_action_provider_gone(c: Clients) -> None:
    pb2 = c.pb2
    provider = c.agent("prov", capabilities=[pb2.CapabilityDescriptor(name="echo")])
    future = c.stub.ForwardAction.future(
        pb2.ActionCall(id="g", capability="echo", payload=b"1"), timeout=WAIT
    )
    assert provider.recv().WhichOneof("msg") == "action_call"
    provider.close()  # the provider goes away without answering
    result = future.result(timeout=WAIT)
    assert (result.id, result.status, result.error.code) == ("g", pb2.ACTION_ERROR, "PROVIDER_GONE")


def test_bridge_shutdown_ends_streams_and_answers_calls(c: Clients) -> None:
    pb2 = c.pb2
    provider = c.agent("prov", capabilities=[pb2.CapabilityDescriptor(name="echo")])
    future = c.stub.ForwardAction.future(
        pb2.ActionCall(id="s", capability="echo", payload=b"1"), timeout=WAIT
    )
    assert provider.recv().WhichOneof("msg") == "action_call"
    c.bridge.stop()
    result = future.result(timeout=WAIT)
    assert (result.id, result.status, result.error.code) == ("s", pb2.ACTION_ERROR, "UNAVAILABLE")
    error = provider.status()
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in error.details()
