"""Fuzzing what the bridge reads from its clients.

Without a network: random and mutated bytes through the bridge's inbound decoding of
both wires (the v1 ``ClientEvent`` hand codec plus what the v1 reader does with each
kind of message, and the ``FrameBatch`` / msgpack frames of the batched wire) may only
ever raise :class:`loom.errors.ProtocolError`; and what gets through converts to the
other wire or fails with a :class:`loom.errors.LoomError` the writers handle.

Through a live server: a burst of malformed messages on one client's streams leaves
the bridge serving everyone else. That part uses grpclib's client, so it runs on
asyncio only (grpclib is asyncio-only; the SDK's client is tested on both backends
elsewhere).
"""

from __future__ import annotations

import random
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from loom import _frames as fr
from loom import _pbwire
from loom.bridge._core import RoutedEvent
from loom.bridge._server import AGENT_ID_HEADER, BridgeServer, _v1_control_frame
from loom.envelope import Envelope
from loom.errors import LoomError, ProtocolError
from loom.proto.generated.loom import v1 as pb

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ------------------------------------------------------------------------

text = st.text(max_size=12)
small_int = st.integers(min_value=-(2**63), max_value=2**63 - 1)
metadata = st.dictionaries(
    st.sampled_from(["loom.thread_id", "loom.ttl_ms", "loom.sender", "k", ""]) | text,
    st.sampled_from(["1", "-5", "60000", "th", ""]) | text,
    max_size=4,
)
pb_events = st.builds(
    pb.Event,
    id=text,
    type=text,
    timestamp_ms=small_int,
    source=text,
    metadata=metadata,
    payload=st.binary(max_size=32),
    confidence=st.floats(width=32, allow_nan=False),
    tags=st.lists(text, max_size=3),
    priority=st.integers(min_value=-(2**31), max_value=2**31 - 1),
)
client_events = st.one_of(
    st.builds(
        lambda topic, event: pb.ClientEvent(publish=pb.Publish(topic=topic, event=event)),
        st.sampled_from(["t", "a.b", "bad topic", ""]) | text,
        pb_events,
    ),
    st.builds(lambda m: pb.ClientEvent(ack=pb.Ack(message_id=m)), text),
    st.builds(lambda ts: pb.ClientEvent(ping=pb.HeartbeatRequest(timestamp_ms=ts)), small_int),
    st.builds(
        lambda i, status, out, code: pb.ClientEvent(
            action_result=pb.ActionResult(
                id=i,
                status=pb.ActionStatus(status),
                output=out,
                error=pb.ActionError(code=code) if code else None,
            )
        ),
        text,
        st.integers(0, 3),
        st.binary(max_size=16),
        text,
    ),
    st.builds(
        lambda i, add, qos, join: pb.ClientEvent(
            subscription=pb.SubscriptionChange(
                id=i, add=add, qos=pb.QoSLevel(qos), join=join, leave=join
            )
        ),
        text,
        st.lists(text, max_size=2),
        st.integers(0, 2),
        st.lists(text, max_size=2),
    ),
).map(bytes)

envelopes = st.builds(
    Envelope.new,
    st.just("t"),
    st.binary(max_size=16),
    event_id=text,
    thread_id=st.none() | text,
    ttl_ms=st.none() | st.integers(-10, 10**6),
    metadata=st.dictionaries(text, text, max_size=2),
    priority=st.integers(-(2**31), 2**31 - 1),
)
frames = st.one_of(
    st.builds(fr.publish_frame, st.sampled_from(["t", "x.y", "bad topic"]), envelopes),
    st.builds(fr.Publish, text, st.integers(0, 2**40), st.just(msgspec.Raw(b"\x05")), text),
    st.builds(fr.Ping, small_int),
    st.builds(fr.Subscribe, text, st.lists(text, max_size=2), st.lists(text, max_size=2)),
    st.builds(fr.Call, text, text, text, st.binary(max_size=8), st.integers(0, 10**6)),
    st.builds(fr.Result, text, st.integers(0, 3), st.binary(max_size=8), text, text),
)
frame_batches = st.lists(frames, max_size=4).map(
    lambda fs: fr.wrap_frame_batch(fr.encode_batch(fs))
)


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid message with a few bytes flipped, inserted or cut."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 4))]
        else:
            del data[at:]
    return bytes(data)


# -- the v1 wire, as the bridge's reader handles it -------------------------------------


def accept_v1(data: bytes) -> list[fr.Frame]:
    """What ``_read_v1`` does with one message (except routing it): raises
    ProtocolError for a message it refuses, else returns what it acts on."""
    kind, body = _pbwire.parse_client_event(data)
    if kind is _pbwire.ClientEventKind.PUBLISH:
        assert isinstance(body, _pbwire.PublishView)
        envelope = _pbwire.decode_event(body.event)
        # accepted: it converts for batched subscribers without error
        routed = RoutedEvent(body.topic, pb_event=body.event, v1_message=data)
        assert fr.decode_envelope(routed.batched()) == envelope
        return [fr.Publish(body.topic, body.expires_ms, routed.batched(), body.thread_id)]
    assert isinstance(body, bytes)
    return list(_v1_control_frame(kind, body))


def read_v1(data: bytes) -> None:
    try:
        accepted = accept_v1(data)
    except ProtocolError:
        return
    # what was accepted is well typed (an int where a str belongs would break the
    # bridge later, when it answers or routes it): it survives msgspec's typed decode
    assert fr.decode_batch(fr.encode_batch(accepted)) == accepted


@FUZZ
@given(st.binary(max_size=256))
def test_v1_random_bytes(data: bytes) -> None:
    read_v1(data)


@FUZZ
@given(mutated(client_events))
def test_v1_mutated_messages(data: bytes) -> None:
    read_v1(data)


@example(b"\x2a\x02\x08\x05")  # SubscriptionChange{id: varint 5}: wrong wire type
@example(b"\x22\x02\x18\x05")  # ActionResult{output: varint 5}
@example(b"\x1a\x04\x0a\x02ab")  # HeartbeatRequest{timestamp_ms: b"ab"}
@FUZZ
@given(st.binary(max_size=64))
def test_v1_wrong_wire_types_are_refused(data: bytes) -> None:
    read_v1(data)


@FUZZ
@given(client_events)
def test_v1_valid_messages_are_accepted(data: bytes) -> None:
    accept_v1(data)


# -- the batched wire ---------------------------------------------------------------------


def read_batch(data: bytes) -> None:
    """What ``_read_batches`` does with one message, plus the conversion a v1
    subscriber's writer makes of each published event."""
    try:
        decoded = fr.decode_batch(fr.unwrap_frame_batch(data))
    except ProtocolError:
        return
    for frame in decoded:
        if isinstance(frame, fr.Publish):
            try:
                RoutedEvent(frame.topic, raw=frame.event).v1()
            except LoomError:  # the writer skips such an event and counts it dropped
                pass


@FUZZ
@given(st.binary(max_size=256))
def test_batch_random_bytes(data: bytes) -> None:
    read_batch(data)


@FUZZ
@given(mutated(frame_batches))
def test_batch_mutated_messages(data: bytes) -> None:
    read_batch(data)


# one Publish frame, [1, topic, 0, nil, ""], whose topic is the invalid UTF-8 b"\x00\x80"
INVALID_UTF8_BATCH = fr.wrap_frame_batch(b"\x91\x95\x01\xa2\x00\x80\x00\xc0\xa0")


@FUZZ
@example(INVALID_UTF8_BATCH)
@given(st.binary(max_size=256) | mutated(frame_batches))
def test_decode_batch_raises_only_protocol_error(data: bytes) -> None:
    try:
        fr.decode_batch(fr.unwrap_frame_batch(data))
    except ProtocolError:
        pass


@FUZZ
@given(frame_batches)
def test_batch_valid_messages_roundtrip(data: bytes) -> None:
    decoded = fr.decode_batch(fr.unwrap_frame_batch(data))
    assert fr.wrap_frame_batch(fr.encode_batch(decoded)) == data


# -- a live bridge keeps serving -----------------------------------------------------------


def malformed_burst(seed: int, count: int) -> list[bytes]:
    """Deterministic garbage: random bytes and valid messages with bytes changed."""
    rng = random.Random(seed)
    templates = [
        bytes(pb.ClientEvent(publish=pb.Publish(topic="t", event=pb.Event(id="x", type="y")))),
        bytes(
            pb.ClientEvent(
                publish=pb.Publish(
                    topic="t",
                    event=pb.Event(id="e", metadata={"loom.thread_id": "th", "loom.ttl_ms": "9"}),
                )
            )
        ),
        bytes(pb.ClientEvent(action_result=pb.ActionResult(id="r", output=b"1"))),
        bytes(pb.ClientEvent(subscription=pb.SubscriptionChange(id="s", add=["t"]))),
        b"\x0a\x09\x0a\x01t\x12\x04\x0a\x02\xc3\x28",  # invalid UTF-8 in Event.id
        b"",
        b"\xff" * 12,
    ]
    out = []
    for _ in range(count):
        if rng.random() < 0.3:
            out.append(rng.randbytes(rng.randint(0, 64)))
            continue
        data = bytearray(rng.choice(templates))
        for _ in range(rng.randint(1, 3)):
            at = rng.randint(0, len(data))
            if at < len(data) and rng.random() < 0.6:
                data[at] = rng.randint(0, 255)
            else:
                del data[at:]
        out.append(bytes(data))
    return out


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_bridge_survives_a_burst_of_malformed_messages() -> None:
    import grpclib.const
    from grpclib.client import Channel
    from grpclib.encoding.proto import ProtoCodec

    class Codec(ProtoCodec):
        def encode(self, message: Any, message_type: Any) -> bytes:
            return message if isinstance(message, bytes) else super().encode(message, message_type)

        def decode(self, data: bytes, message_type: Any) -> Any:
            return data if message_type is bytes else super().decode(data, message_type)

    bidi = grpclib.const.Cardinality.STREAM_STREAM
    done_marker = 2**62

    async with BridgeServer("127.0.0.1", 0) as server:
        channel = Channel("127.0.0.1", server.port, codec=Codec())
        stub = pb.BridgeStub(channel, timeout=10)
        try:
            for agent_id, topics in [("fuzzer", ["t"]), ("batcher", []), ("observer", ["t"])]:
                response = await stub.register_agent(
                    pb.AgentRegisterRequest(agent_id=agent_id, subscribed_topics=topics)
                )
                assert response.success
            async with (
                channel.request(
                    "/loom.v1.Bridge/EventStream", bidi, pb.ClientEvent, pb.ServerEvent
                ) as observer,
                channel.request(
                    "/loom.v1.Bridge/EventStream", bidi, pb.ClientEvent, bytes
                ) as fuzzer,
                channel.request(
                    "/loom.v1.Bridge/EventBatchStream",
                    bidi,
                    bytes,
                    bytes,
                    metadata={AGENT_ID_HEADER: "batcher"},
                ) as batcher,
            ):
                for stream, agent_id in [(observer, "observer"), (fuzzer, "fuzzer")]:
                    await stream.send_request()
                    await stream.send_message(pb.ClientEvent(ack=pb.Ack(agent_id)))
                await batcher.send_request()

                with anyio.fail_after(20):
                    for message in malformed_burst(seed=20240611, count=300):
                        await fuzzer.send_message(message)
                    for message in malformed_burst(seed=7, count=100):
                        await batcher.send_message(fr.wrap_frame_batch(message))
                        await batcher.send_message(message)
                    # the fuzzer's stream still works: its ping is answered
                    await fuzzer.send_message(
                        pb.ClientEvent(ping=pb.HeartbeatRequest(timestamp_ms=done_marker))
                    )
                    while True:
                        raw = await fuzzer.recv_message()
                        assert raw is not None, "the fuzzer's stream ended"
                        answer = pb.ServerEvent.parse(raw)
                        if answer.pong is not None and answer.pong.timestamp_ms == done_marker:
                            break
                    # the batched stream too
                    await batcher.send_message(
                        fr.wrap_frame_batch(fr.encode_batch([fr.Ping(done_marker)]))
                    )
                    pongs: list[fr.Frame] = []
                    while fr.Pong(done_marker) not in pongs:
                        raw = await batcher.recv_message()
                        assert raw is not None, "the batched stream ended"
                        pongs = fr.decode_batch(fr.unwrap_frame_batch(raw))
                    # and a valid publish reaches the observer, whose stream never
                    # received anything its official-style parser rejects
                    await fuzzer.send_message(
                        pb.ClientEvent(
                            publish=pb.Publish(topic="t", event=pb.Event(id="after-burst"))
                        )
                    )
                    while True:
                        got = await observer.recv_message()
                        assert got is not None, "the observer's stream ended"
                        if got.delivery is not None and got.delivery.event.id == "after-burst":
                            break
                for stream in (observer, fuzzer, batcher):
                    await stream.cancel()
            beat = await stub.heartbeat(pb.HeartbeatRequest())
            assert beat.status == "ok"
        finally:
            channel.close()
