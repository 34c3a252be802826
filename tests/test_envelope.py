"""Envelope: constructor names, reserved metadata keys, and round trips through
msgspec and through the generated protobuf Event."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loom import Envelope
from loom.envelope import (
    CORRELATION_ID_KEY,
    REPLY_TO_KEY,
    SENDER_KEY,
    THREAD_ID_KEY,
    TTL_MS_KEY,
    new_id,
    reply_topic,
)
from loom.proto.generated.loom import v1 as pb

text = st.text(max_size=20)
optional_text = st.none() | text
plain_keys = text.filter(lambda k: not k.startswith("loom."))
float32s = st.floats(width=32, allow_nan=False, allow_infinity=False)

envelopes = st.builds(
    Envelope,
    id=text,
    type=text,
    payload=st.binary(max_size=64),
    timestamp_ms=st.integers(0, 2**62),
    source=text,
    thread_id=optional_text,
    correlation_id=optional_text,
    sender=optional_text,
    reply_to=optional_text,
    ttl_ms=st.none() | st.integers(0, 2**31),
    metadata=st.dictionaries(plain_keys, text, max_size=4),
    tags=st.lists(text, max_size=3),
    confidence=float32s,
    priority=st.integers(-(2**31), 2**31 - 1),
)


def test_new_takes_the_guide_keywords() -> None:
    env = Envelope.new(
        event_id="evt-123",
        event_type="my.event",
        payload=b"data",
        thread_id="conversation-1",
        correlation_id="req-456",
    )
    assert (env.id, env.type, env.payload) == ("evt-123", "my.event", b"data")
    assert (env.thread_id, env.correlation_id) == ("conversation-1", "req-456")
    assert env.timestamp_ms > 0


def test_new_accepts_type_and_generates_ids() -> None:
    a = Envelope.new(type="t")
    b = Envelope.new(type="t")
    assert a.type == "t" and a.id and a.id != b.id


def test_new_rejects_missing_or_conflicting_type_and_non_bytes_payload() -> None:
    with pytest.raises(TypeError, match="event_type"):
        Envelope.new()
    with pytest.raises(TypeError, match="different"):
        Envelope.new(event_type="a", type="b")
    with pytest.raises(TypeError, match="payload must be bytes"):
        Envelope.new(type="t", payload="text")  # type: ignore[arg-type]


def test_named_fields_travel_under_reserved_keys() -> None:
    env = Envelope.new(
        type="t",
        thread_id="th",
        correlation_id="c",
        sender="s",
        reply_to="agent.s.replies",
        ttl_ms=500,
        metadata={"k": "v"},
    )
    assert env.wire_metadata() == {
        "k": "v",
        THREAD_ID_KEY: "th",
        CORRELATION_ID_KEY: "c",
        SENDER_KEY: "s",
        REPLY_TO_KEY: "agent.s.replies",
        TTL_MS_KEY: "500",
    }
    assert env.expires_ms == env.timestamp_ms + 500
    assert Envelope.new(type="t").expires_ms == 0


def test_from_wire_lifts_reserved_keys_and_ignores_a_bad_ttl() -> None:
    env = Envelope.from_wire(
        id="1",
        type="t",
        timestamp_ms=5,
        source="",
        metadata={SENDER_KEY: "a", TTL_MS_KEY: "soon", "x": "y"},
        payload=b"",
    )
    assert env.sender == "a" and env.ttl_ms is None and env.metadata == {"x": "y"}


def test_reply_topic_and_ids() -> None:
    assert reply_topic("planner") == "agent.planner.replies"
    assert len({new_id() for _ in range(1000)}) == 1000


@given(envelopes)
def test_msgpack_round_trip(env: Envelope) -> None:
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(env), type=Envelope) == env


@given(envelopes)
def test_protobuf_round_trip(env: Envelope) -> None:
    event = env.to_proto(pb.Event)
    assert Envelope.from_proto(pb.Event.parse(bytes(event))) == env


@given(envelopes)
def test_to_proto_defaults_to_the_generated_event(env: Envelope) -> None:
    assert isinstance(env.to_proto(), pb.Event)
