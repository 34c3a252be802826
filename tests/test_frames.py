"""The batched wire: frames round-trip, and FrameBatch is real protobuf."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loom import _frames as fr
from loom.envelope import Envelope
from loom.errors import ProtocolError
from loom.proto.generated.loom import v1 as pb

text = st.text(max_size=12)
raw_events = st.builds(
    lambda t, p, th: fr.encode_envelope(Envelope.new(type=t, payload=p, thread_id=th)),
    text,
    st.binary(max_size=32),
    st.none() | text,
)
frames = st.one_of(
    st.builds(fr.Publish, text, st.integers(0, 2**62), raw_events, text),
    st.builds(fr.Deliver, text, raw_events),
    st.builds(
        fr.Subscribe,
        text,
        st.lists(text, max_size=3),
        st.lists(text, max_size=3),
        st.integers(0, 2),
        st.lists(text, max_size=2),
        st.lists(text, max_size=2),
    ),
    st.builds(fr.Subscribed, text, text),
    st.builds(
        fr.Call,
        text,
        text,
        text,
        st.binary(max_size=16),
        st.integers(0, 10**6),
        st.dictionaries(text, text, max_size=2),
        text,
    ),
    st.builds(fr.Result, text, st.integers(0, 3), st.binary(max_size=16), text, text),
    st.builds(fr.Ping, st.integers(0, 2**62)),
    st.builds(fr.Pong, st.integers(0, 2**62)),
    st.builds(fr.Error, text, text, text),
)


def _comparable(frame: fr.Frame) -> object:
    """Raw values compare by identity; compare what they hold."""
    out = []
    for name in frame.__struct_fields__:
        value = getattr(frame, name)
        out.append(bytes(value) if isinstance(value, msgspec.Raw) else value)
    return (type(frame), out)


@given(st.lists(frames, max_size=20))
def test_batches_round_trip(batch: list[fr.Frame]) -> None:
    data = fr.wrap_frame_batch(fr.encode_batch(batch))
    decoded = fr.decode_batch(fr.unwrap_frame_batch(data))
    assert [_comparable(f) for f in decoded] == [_comparable(f) for f in batch]


@given(st.binary(max_size=300_000))
def test_frame_batch_is_the_protobuf_message(data: bytes) -> None:
    wrapped = fr.wrap_frame_batch(data)
    assert pb.FrameBatch.parse(wrapped).data == data
    assert fr.unwrap_frame_batch(bytes(pb.FrameBatch(data=data))) == data


def test_an_event_inside_a_frame_decodes_back() -> None:
    env = Envelope.new(type="t", payload=b"p", thread_id="th", ttl_ms=10)
    frame = fr.publish_frame("a.b", env)
    assert frame.thread_id == "th" and frame.expires_ms == env.timestamp_ms + 10
    assert fr.decode_envelope(frame.event) == env


@pytest.mark.parametrize("garbage", [b"\xc1", b"\x91\x92\x01", b"not msgpack at all"])
def test_malformed_batches_raise_protocol_error(garbage: bytes) -> None:
    with pytest.raises(ProtocolError, match="malformed"):
        fr.decode_batch(garbage)
    with pytest.raises(ProtocolError):
        fr.decode_envelope(garbage)


def test_truncated_frame_batch_raises_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        fr.unwrap_frame_batch(fr.wrap_frame_batch(b"x" * 200)[:-1])
