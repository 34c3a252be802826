"""The Python ceiling: a raw asyncio TCP hub with msgspec frames, and its clients.

``python -m benchmarks._tcp_hub hub '{}'`` listens on a free loopback port and reports
``{"event": "ready", "port": ...}``; the ``sub`` and ``pub`` roles are its clients.

A frame is a 4-byte big-endian length and a msgpack array: ``["sub", topic]``
(answered with ``["ok", topic]``) or ``["pub", topic, payload]``. The hub decodes each
publish to find its topic and forwards the frame's bytes unchanged to the topic's
subscribers, coalescing everything one read brought into one write per subscriber.
When a subscriber's socket buffer is full the publishers feeding it stop being read
until it drains, so nothing is dropped and memory stays bounded. No envelopes, ids,
acks, heartbeats or reconnects: this is what moving bytes costs in Python.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import msgspec

from benchmarks._child import Params, Progress, command, main, now, report, wait_for_go

_HEADER = 4
_WRITE_HIGH_WATER = 4 * 1024 * 1024
_PUBLISH_CHUNK = 64 * 1024

_encode = msgspec.msgpack.encode
_decode = msgspec.msgpack.Decoder().decode


def frame(*fields: Any) -> bytes:
    body = _encode(fields)
    return len(body).to_bytes(_HEADER, "big") + body


def split_frames(buf: bytearray, handle: Any) -> None:
    """Call ``handle(view, start, end)`` for each complete frame at the front of
    ``buf`` (``view[start:end]`` is the whole frame) and remove them from ``buf``."""
    pos, end = 0, len(buf)
    with memoryview(buf) as view:
        while end - pos >= _HEADER:
            stop = pos + _HEADER + int.from_bytes(view[pos : pos + _HEADER], "big")
            if stop > end:
                break
            handle(view, pos, stop)
            pos = stop
    del buf[:pos]


class _HubConnection(asyncio.Protocol):
    def __init__(self, topics: defaultdict[str, set[_HubConnection]]) -> None:
        self.topics = topics
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.full = False
        self.waiting: set[_HubConnection] = set()
        self.subscribed: list[str] = []
        self._out: dict[_HubConnection, bytearray] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        for topic in self.subscribed:
            self.topics[topic].discard(self)
        self.resume_writing()

    def pause_writing(self) -> None:
        self.full = True

    def resume_writing(self) -> None:
        self.full = False
        waiting, self.waiting = self.waiting, set()
        for conn in waiting:
            if conn.transport is not None and not conn.transport.is_closing():
                conn.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out = self._out
        split_frames(self.buf, self._frame)
        self._out = {}
        assert self.transport is not None
        for conn, chunk in out.items():
            assert conn.transport is not None
            conn.transport.write(chunk)
            if conn.full:
                conn.waiting.add(self)
                self.transport.pause_reading()

    def _frame(self, view: memoryview, start: int, end: int) -> None:
        msg = _decode(view[start + _HEADER : end])
        if msg[0] == "pub":
            out = self._out
            for conn in self.topics.get(msg[1], ()):
                chunk = out.get(conn)
                if chunk is None:
                    chunk = out[conn] = bytearray()
                chunk += view[start:end]
        elif msg[0] == "sub":
            self.topics[msg[1]].add(self)
            self.subscribed.append(msg[1])
            assert self.transport is not None
            self.transport.write(frame("ok", msg[1]))


async def hub(params: Params) -> None:
    topics: defaultdict[str, set[_HubConnection]] = defaultdict(set)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _HubConnection(topics), "127.0.0.1", 0)
    async with server:
        report("ready", port=server.sockets[0].getsockname()[1])
        await command()


class _Subscriber(asyncio.Protocol):
    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.buf = bytearray()
        self.subscribed = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        split_frames(self.buf, self._frame)

    def _frame(self, view: memoryview, start: int, end: int) -> None:
        msg = _decode(view[start + _HEADER : end])
        if msg[0] == "pub":
            self.progress.hit()
        elif msg[0] == "ok":
            self.subscribed.set()


async def sub(params: Params) -> None:
    progress = Progress(int(params["expect"]))
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(
        lambda: _Subscriber(progress), "127.0.0.1", int(params["port"])
    )
    try:
        transport.write(frame("sub", params["topic"]))
        await protocol.subscribed.wait()
        report("ready")
        await progress.wait(float(params["idle_timeout"]))
        report("result", **progress.result())
        await command()
    finally:
        transport.close()


async def pub(params: Params) -> None:
    payload = b"x" * int(params["size"])
    topic, count = params["topic"], int(params["count"])
    _reader, writer = await asyncio.open_connection("127.0.0.1", int(params["port"]))
    try:
        report("ready")
        if not await wait_for_go():
            return
        t_start = now()
        out = bytearray()
        for _ in range(count):
            body = _encode(("pub", topic, payload))
            out += len(body).to_bytes(_HEADER, "big")
            out += body
            if len(out) >= _PUBLISH_CHUNK:
                writer.write(out)
                out = bytearray()
                await writer.drain()
        writer.write(out)
        await writer.drain()
        report("result", t_start=t_start, t_end=now(), sent=count)
        await command()
    finally:
        writer.close()


ROLES = {"hub": hub, "sub": sub, "pub": pub}

if __name__ == "__main__":
    main(ROLES)
