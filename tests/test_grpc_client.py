"""Conformance tests of loom's gRPC client against grpclib's server, on asyncio and trio."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import anyio
import h2.connection
import h2.errors
import pytest
import trustme
from grpc_helpers import ABORT_MESSAGE, SERVICE, ServerThread, fake_http2_server
from grpclib.const import Status
from hypothesis import given, settings
from hypothesis import strategies as st

from loom._grpc import GrpcChannel, GrpcStream, MessageDecoder, encode_message
from loom._grpc._connection import STREAM_WINDOW
from loom.errors import (
    ConfigurationError,
    ConnectionLost,
    MessageTooLarge,
    ProtocolError,
    RpcError,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def server() -> Iterator[ServerThread]:
    server = ServerThread()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def channel(server: ServerThread, **kwargs: object) -> GrpcChannel:
    return GrpcChannel("127.0.0.1", server.port, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- framing


@settings(max_examples=150, deadline=None)
@given(
    messages=st.lists(st.binary(max_size=300), max_size=12)
    | st.lists(st.integers(0, 70_000).map(lambda n: bytes(range(256)) * (n // 256)), max_size=3),
    data=st.data(),
)
def test_decoder_reassembles_any_chunking(messages: list[bytes], data: st.DataObject) -> None:
    wire = b"".join(encode_message(m, 1 << 20) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=20)))
    decoder = MessageDecoder(1 << 20)
    out: list[bytes] = []
    start = 0
    for cut in [*cuts, len(wire)]:
        decoder.feed(wire[start:cut])
        start = cut
        while (message := decoder.next_message()) is not None:
            out.append(message)
    assert out == messages
    assert not decoder.has_partial_message


def test_decoder_rejects_oversized_message_at_its_prefix() -> None:
    decoder = MessageDecoder(100)
    with pytest.raises(MessageTooLarge) as info:
        decoder.feed(b"\x00" + (101).to_bytes(4, "big"))  # no body yet
    assert (info.value.size, info.value.limit) == (101, 100)
    with pytest.raises(MessageTooLarge):
        encode_message(b"x" * 101, 100)


def test_decoder_rejects_compressed_and_bad_flags() -> None:
    with pytest.raises(ProtocolError):
        MessageDecoder(100).feed(b"\x01\x00\x00\x00\x01x")
    with pytest.raises(ProtocolError):
        MessageDecoder(100).feed(b"\x07\x00\x00\x00\x00")


# ------------------------------------------------------------------------- basic calls


async def test_unary_round_trip(server: ServerThread) -> None:
    async with channel(server) as ch:
        assert not ch.closed
        assert await ch.unary(f"{SERVICE}/Unary", b"hello") == b"hello"
        assert await ch.unary(f"{SERVICE}/Unary", b"") == b""
        reply = await ch.unary(f"{SERVICE}/Unary", b"metadata?", metadata={"x-loom-test": "v1"})
        assert reply == b"v1"
        # The timeout travels as grpc-timeout: the server knows the deadline.
        assert await ch.unary(f"{SERVICE}/Unary", b"deadline?") == b"none"
        remaining = float(await ch.unary(f"{SERVICE}/Unary", b"deadline?", timeout=30))
        assert 0 < remaining <= 30
    assert ch.closed


async def test_bidi_echo(server: ServerThread) -> None:
    async with channel(server) as ch, ch.stream(f"{SERVICE}/Echo") as call:
        assert isinstance(call, GrpcStream)
        for i in range(20):
            await call.send(b"msg %d" % i)
            assert await call.receive() == b"msg %d" % i
        for i in range(5):
            await call.send(b"batch %d" % i)
        await call.end()
        await call.end()  # idempotent
        assert [m async for m in call] == [b"batch %d" % i for i in range(5)]
        with pytest.raises(anyio.EndOfStream):
            await call.receive()


async def test_concurrent_senders_on_one_stream_do_not_interleave(server: ServerThread) -> None:
    size = 300_000  # several chunks each, bigger than a frame and a write turn
    async with channel(server) as ch, ch.stream(f"{SERVICE}/Echo") as call:

        async def sender(tag: bytes) -> None:
            for _ in range(3):
                await call.send(tag * size)

        async with anyio.create_task_group() as tg:
            tg.start_soon(sender, b"a")
            tg.start_soon(sender, b"b")
        await call.end()
        replies = [m async for m in call]
    assert sorted(replies) == [b"a" * size] * 3 + [b"b" * size] * 3


@pytest.mark.parametrize("size", [1024 * 1024, 5 * 1024 * 1024])
async def test_messages_larger_than_the_windows(server: ServerThread, size: int) -> None:
    payload = bytes(range(256)) * (size // 256)
    async with channel(server) as ch:
        assert await ch.unary(f"{SERVICE}/Unary", payload) == payload
        async with ch.stream(f"{SERVICE}/Echo") as call:
            await call.send(payload)
            await call.send(b"small")
            assert await call.receive() == payload
            assert await call.receive() == b"small"


async def test_hundred_concurrent_streams(server: ServerThread) -> None:
    results: dict[int, list[bytes]] = {}

    async def one(index: int) -> None:
        async with ch.stream(f"{SERVICE}/Echo") as call:
            got = []
            for j in range(3):
                await call.send(b"%d-%d" % (index, j) * 50)
                got.append(await call.receive())
            await call.end()
            with pytest.raises(anyio.EndOfStream):
                await call.receive()
            results[index] = got

    async with channel(server) as ch, anyio.create_task_group() as tg:
        for index in range(100):
            tg.start_soon(one, index)
    assert sorted(results) == list(range(100))
    for index, got in results.items():
        assert got == [b"%d-%d" % (index, j) * 50 for j in range(3)]
    await server.service.wait_until(lambda s: s.live == 0)


async def test_more_streams_than_the_server_allows_wait_for_a_slot(server: ServerThread) -> None:
    # grpclib advertises MAX_CONCURRENT_STREAMS = 100.
    async with channel(server) as ch:

        async def call(i: int) -> None:
            assert await ch.unary(f"{SERVICE}/Unary", b"%d" % i) == b"%d" % i

        async with anyio.create_task_group() as tg:
            for i in range(150):
                tg.start_soon(call, i)


async def test_slow_consumer_does_not_stall_other_streams(server: ServerThread) -> None:
    count, size = 64, 64 * 1024  # 4 MiB, four times the stream window
    async with channel(server) as ch, ch.stream(f"{SERVICE}/Flood") as slow:
        await slow.send(f"{count},{size}".encode())
        await slow.end()
        # The server fills the slow stream's window; nobody reads it.
        await server.service.wait_until(lambda s: s.flood_sent * size >= STREAM_WINDOW // 2)
        big = b"b" * (2 * 1024 * 1024)
        async with ch.stream(f"{SERVICE}/Echo") as fast:
            for _ in range(3):
                await fast.send(big)
                assert await fast.receive() == big
            await fast.end()
            with pytest.raises(anyio.EndOfStream):
                await fast.receive()
        # Flow control held the flood back: the client buffers at most a window.
        assert server.service.flood_sent < count
        assert sum(size for _, size in slow._state.chunks) <= STREAM_WINDOW
        received = [m async for m in slow]
        assert [int.from_bytes(m[:4], "big") for m in received] == list(range(count))
        assert all(len(m) == size for m in received)


# -------------------------------------------------------------------------- cancellation


async def test_leaving_a_stream_early_cancels_it_on_the_server(server: ServerThread) -> None:
    async with channel(server) as ch:
        async with ch.stream(f"{SERVICE}/Echo") as call:
            await call.send(b"ping")
            assert await call.receive() == b"ping"
            await server.service.wait_until(lambda s: s.live == 1)
        await server.service.wait_until(lambda s: s.live == 0)
        assert await ch.unary(f"{SERVICE}/Unary", b"still fine") == b"still fine"


async def test_cancelled_task_mid_call_resets_the_stream(server: ServerThread) -> None:
    async with channel(server) as ch:
        receiving = anyio.Event()

        async def blocked_call() -> None:
            async with ch.stream(f"{SERVICE}/Echo") as call:
                await call.send(b"one")
                assert await call.receive() == b"one"
                receiving.set()
                await call.receive()  # the server sends nothing more

        async with anyio.create_task_group() as tg:
            tg.start_soon(blocked_call)
            with anyio.fail_after(5):
                await receiving.wait()
            await server.service.wait_until(lambda s: s.live == 1)
            tg.cancel_scope.cancel()
        await server.service.wait_until(lambda s: s.live == 0)
        assert await ch.unary(f"{SERVICE}/Unary", b"after") == b"after"


async def test_cancel_in_the_middle_of_a_large_send(server: ServerThread) -> None:
    async with channel(server) as ch:
        async with ch.stream(f"{SERVICE}/Hold") as call:
            await server.service.wait_until(lambda s: s.live == 1)
            # The handler never reads: the send stalls once the windows are full
            # (part of the message is out), then gets cancelled.
            with anyio.move_on_after(0.3) as scope:
                await call.send(b"x" * (12 * 1024 * 1024))
            assert scope.cancelled_caught
            with pytest.raises(RpcError) as info:
                await call.receive()
            assert info.value.status == Status.CANCELLED.value
        await server.service.wait_until(lambda s: s.live == 0)
        # The connection is intact for other calls.
        assert await ch.unary(f"{SERVICE}/Unary", b"x" * 100_000) == b"x" * 100_000


# ------------------------------------------------------------------------ errors/status


async def test_deadline_exceeded(server: ServerThread) -> None:
    async with channel(server) as ch:
        with pytest.raises(RpcError) as info:
            await ch.unary(f"{SERVICE}/Sleep", b"", timeout=0.2)
        assert info.value.status == Status.DEADLINE_EXCEEDED.value
        assert info.value.status_name == "DEADLINE_EXCEEDED"
        async with ch.stream(f"{SERVICE}/Hold", timeout=0.2) as call:
            with pytest.raises(RpcError) as info:
                await call.receive()
            assert info.value.status == Status.DEADLINE_EXCEEDED.value
            with pytest.raises(RpcError):  # the call stays failed
                await call.send(b"late")
        with pytest.raises(RpcError):
            await ch.unary(f"{SERVICE}/Unary", b"", timeout=0)
        await server.service.wait_until(lambda s: s.live == 0)
        assert await ch.unary(f"{SERVICE}/Unary", b"ok", timeout=5) == b"ok"


async def test_server_abort_with_status_and_message(server: ServerThread) -> None:
    async with channel(server) as ch:
        async with ch.stream(f"{SERVICE}/Abort") as call:
            await call.send(b"after-a-reply")
            await call.end()
            assert await call.receive() == b"partial"
            with pytest.raises(RpcError) as info:
                await call.receive()
        assert info.value.status == Status.RESOURCE_EXHAUSTED.value
        assert info.value.status_name == "RESOURCE_EXHAUSTED"
        assert info.value.message == ABORT_MESSAGE

        with pytest.raises(RpcError) as info:  # trailers-only response
            await ch.unary(f"{SERVICE}/Abort", b"trailers-only")
        assert info.value.status == Status.PERMISSION_DENIED.value
        assert info.value.message == ABORT_MESSAGE

        with pytest.raises(RpcError) as info:
            await ch.unary(f"{SERVICE}/Missing", b"")
        assert info.value.status == Status.UNIMPLEMENTED.value


async def test_message_size_limit_on_send(server: ServerThread) -> None:
    async with channel(server, max_message_size=1000) as ch:
        with pytest.raises(MessageTooLarge) as info:
            await ch.unary(f"{SERVICE}/Unary", b"x" * 1001)
        assert (info.value.size, info.value.limit) == (1001, 1000)
        assert server.service.started == 0  # nothing was sent
        async with ch.stream(f"{SERVICE}/Echo") as call:
            with pytest.raises(MessageTooLarge):
                await call.send(b"x" * 1001)
            await call.send(b"x" * 1000)  # the call is still fine
            assert await call.receive() == b"x" * 1000


async def test_message_size_limit_on_receive(server: ServerThread) -> None:
    async with channel(server, max_message_size=1000) as ch:
        assert await ch.unary(f"{SERVICE}/Size", b"1000") == b"s" * 1000
        with pytest.raises(MessageTooLarge) as info:
            await ch.unary(f"{SERVICE}/Size", b"5000")
        assert (info.value.size, info.value.limit) == (5000, 1000)
        await server.service.wait_until(lambda s: s.live == 0)
        assert await ch.unary(f"{SERVICE}/Unary", b"ok") == b"ok"


async def test_bad_arguments() -> None:
    with pytest.raises(ConfigurationError):
        GrpcChannel("127.0.0.1", 0)
    with pytest.raises(ConfigurationError):
        GrpcChannel("127.0.0.1", 50051, keepalive_interval=0)
    ch = GrpcChannel("127.0.0.1", 50051)
    assert ch.closed
    with pytest.raises(ConnectionLost):
        await ch.unary(f"{SERVICE}/Unary", b"")  # never opened


async def test_bad_path_and_metadata(server: ServerThread) -> None:
    async with channel(server) as ch:
        with pytest.raises(ConfigurationError):
            await ch.unary("no-slash", b"")
        with pytest.raises(ConfigurationError):
            await ch.unary(f"{SERVICE}/Unary", b"", metadata={"Bad Key": "v"})
        with pytest.raises(ConfigurationError):
            await ch.unary(f"{SERVICE}/Unary", b"", metadata={"grpc-timeout": "1S"})


# ----------------------------------------------------------------- connection failures


async def test_connect_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ch = GrpcChannel("127.0.0.1", port, connect_timeout=2)
    with pytest.raises(ConnectionLost):
        async with ch:
            pass
    assert ch.closed


async def test_server_stopped_mid_stream_then_restarted() -> None:
    server = ServerThread()
    port = server.start()
    try:
        async with GrpcChannel("127.0.0.1", port) as ch:
            failures: list[BaseException] = []

            async def pending_unary() -> None:
                with pytest.raises(ConnectionLost) as info:
                    await ch.unary(f"{SERVICE}/Sleep", b"")
                failures.append(info.value)

            async def pending_send() -> None:  # blocked on flow control
                async with ch.stream(f"{SERVICE}/Hold") as held:
                    with pytest.raises(ConnectionLost) as info:
                        await held.send(b"h" * (12 * 1024 * 1024))
                failures.append(info.value)

            async with ch.stream(f"{SERVICE}/Echo") as call, anyio.create_task_group() as tg:
                await call.send(b"before")
                assert await call.receive() == b"before"
                tg.start_soon(pending_unary)
                tg.start_soon(pending_send)
                await server.service.wait_until(lambda s: s.live == 3)
                await anyio.to_thread.run_sync(server.stop)
                with anyio.fail_after(5), pytest.raises(ConnectionLost):
                    await call.receive()
                with pytest.raises(ConnectionLost):
                    await call.send(b"after")
            assert len(failures) == 2
            assert ch.closed
            with pytest.raises(ConnectionLost):
                await ch.unary(f"{SERVICE}/Unary", b"")

        server.start(port)
        async with GrpcChannel("127.0.0.1", port) as ch:
            assert await ch.unary(f"{SERVICE}/Unary", b"back") == b"back"
    finally:
        server.stop()


async def test_keepalive_detects_a_silent_server() -> None:
    async with fake_http2_server(None) as port:
        ch = GrpcChannel("127.0.0.1", port, keepalive_interval=0.2, keepalive_timeout=0.3)
        async with ch:
            with anyio.fail_after(10), pytest.raises(ConnectionLost, match="keepalive"):
                await ch.unary(f"{SERVICE}/Unary", b"anyone there?")
            assert ch.closed


async def test_keepalive_keeps_a_healthy_idle_connection(server: ServerThread) -> None:
    async with channel(server, keepalive_interval=0.05, keepalive_timeout=1) as ch:
        async with ch.stream(f"{SERVICE}/Echo") as call:
            await call.send(b"a")
            assert await call.receive() == b"a"
            await anyio.sleep(0.3)  # several PING round trips while idle
            await call.send(b"b")
            assert await call.receive() == b"b"
        assert not ch.closed


def _goaway(conn: h2.connection.H2Connection, stream_id: int) -> bytes:
    conn.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
    return b""


def _reset(conn: h2.connection.H2Connection, stream_id: int) -> bytes:
    conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
    return b""


def _garbage(conn: h2.connection.H2Connection, stream_id: int) -> bytes:
    return b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x"  # DATA on stream 0: illegal


def _http_error(conn: h2.connection.H2Connection, stream_id: int) -> bytes:
    conn.send_headers(stream_id, [(":status", "503"), ("content-type", "text/plain")])
    conn.send_data(stream_id, b"unavailable", end_stream=True)
    return b""


@pytest.mark.parametrize(
    ("behaviour", "error", "closes"),
    [
        (_goaway, ConnectionLost, True),
        (_reset, ConnectionLost, False),
        (_garbage, ProtocolError, True),
        (_http_error, RpcError, False),
    ],
)
async def test_misbehaving_server(behaviour: object, error: type[Exception], closes: bool) -> None:
    async with fake_http2_server(behaviour) as port:  # type: ignore[arg-type]
        async with GrpcChannel("127.0.0.1", port, keepalive_interval=None) as ch:
            with anyio.fail_after(5), pytest.raises(error) as info:
                await ch.unary(f"{SERVICE}/Unary", b"x")
            if isinstance(info.value, RpcError):
                assert info.value.status == Status.UNAVAILABLE.value
            assert ch.closed is closes


async def test_tls_with_self_signed_certificate() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_context)
    server_context.set_alpn_protocols(["h2"])
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    server = ServerThread(ssl_context=server_context)
    port = server.start()
    try:
        ch = GrpcChannel("127.0.0.1", port, ssl_context=client_context, server_hostname="localhost")
        async with ch:
            assert await ch.unary(f"{SERVICE}/Unary", b"secret") == b"secret"
            async with ch.stream(f"{SERVICE}/Echo") as call:
                await call.send(b"x" * 300_000)
                assert await call.receive() == b"x" * 300_000
        # A client that does not trust the CA cannot connect.
        with pytest.raises(ConnectionLost):
            async with GrpcChannel("127.0.0.1", port, ssl_context=ssl.create_default_context()):
                pass
    finally:
        server.stop()


async def test_closing_leaves_nothing_running(server: ServerThread) -> None:
    before = len(anyio.get_running_tasks())
    async with channel(server, keepalive_interval=0.05) as ch:
        async with ch.stream(f"{SERVICE}/Echo") as call:
            await call.send(b"x")
            assert await call.receive() == b"x"
            assert len(anyio.get_running_tasks()) > before
        assert await ch.unary(f"{SERVICE}/Unary", b"y") == b"y"
    assert len(anyio.get_running_tasks()) == before
    await server.service.wait_until(lambda s: s.live == 0)


async def test_calls_still_open_fail_when_the_channel_closes(server: ServerThread) -> None:
    ch = channel(server)
    async with ch:
        call_cm = ch.stream(f"{SERVICE}/Echo")
        call = await call_cm.__aenter__()
        flood_cm = ch.stream(f"{SERVICE}/Flood")
        flood = await flood_cm.__aenter__()
        await flood.send(b"10000,1000")
        assert len(await flood.receive()) == 1000  # the server keeps sending
    for open_call in (call, flood):
        with pytest.raises(ConnectionLost, match="closed"):
            await open_call.receive()
    await call_cm.__aexit__(None, None, None)
    await flood_cm.__aexit__(None, None, None)
    # The channel can be entered again (a fresh connection).
    async with ch:
        assert await ch.unary(f"{SERVICE}/Unary", b"again") == b"again"


async def test_errors_in_the_channel_block_propagate_unwrapped(server: ServerThread) -> None:
    with pytest.raises(KeyError):
        async with channel(server) as ch:
            assert await ch.unary(f"{SERVICE}/Unary", b"x") == b"x"
            raise KeyError("mine")
    assert ch.closed
    with anyio.move_on_after(0.1) as scope:
        async with channel(server) as ch:
            await anyio.sleep(10)
    assert scope.cancelled_caught
    assert ch.closed
