"""``python -m loom bridge``: a real bridge process, reached over the network.

The process listens on an ephemeral port (``--address 127.0.0.1:0``) and announces
the real one on stdout; the tests talk to it with a plain grpcio channel (bytes in
and out, messages built with the generated classes), then stop it with a signal.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest

from loom.proto.generated.loom import v1 as pb

STARTUP = 30.0  # seconds for the process to start (imports) and listen
STOP = 15.0  # seconds for it to exit once signalled
RPC = 10.0  # seconds for one RPC

LISTENING = re.compile(r"^loom bridge listening on 127\.0\.0\.1:(\d+)$")


class BridgeProcess:
    """A ``loom bridge`` child process whose output lines are read by threads."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")} | (env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loom", "bridge", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout, True)),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr, False)),
        ]
        for t in self._threads:
            t.daemon = True
            t.start()

    def _pump(self, pipe: object, into: list[str], announce: bool) -> None:
        for line in pipe:  # type: ignore[attr-defined]
            into.append(line.rstrip("\n"))
            if announce:
                self.lines.put(line.rstrip("\n"))
        if announce:
            self.lines.put(None)

    def next_line(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout} s; stderr: {self.stderr}") from None
        if line is None:
            raise AssertionError(f"stdout closed; exit {self.proc.poll()}, stderr: {self.stderr}")
        return line

    def wait_listening(self) -> int:
        line = self.next_line(STARTUP)
        match = LISTENING.match(line)
        assert match is not None, line
        port = int(match.group(1))
        assert port != 0
        return port

    def stop(self, signum: int) -> int:
        self.proc.send_signal(signum)
        return self.wait()

    def wait(self) -> int:
        try:
            code = self.proc.wait(timeout=STOP)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the bridge did not exit; stderr: {self.stderr}") from None
        for t in self._threads:
            t.join(STOP)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP)
        for t in self._threads:
            t.join(STOP)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()


@contextmanager
def bridge_process(*args: str, env: dict[str, str] | None = None) -> Iterator[BridgeProcess]:
    process = BridgeProcess(*args, env=env)
    try:
        yield process
    finally:
        process.close()


@contextmanager
def channel(port: int) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield ch
    finally:
        ch.close()


def heartbeat(ch: grpc.Channel) -> pb.HeartbeatResponse:
    call = ch.unary_unary("/loom.v1.Bridge/Heartbeat")
    reply = call(bytes(pb.HeartbeatRequest(timestamp_ms=1)), timeout=RPC)
    return pb.HeartbeatResponse.parse(reply)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serves_then_stops_on_signal(signum: signal.Signals) -> None:
    with bridge_process("--address", "127.0.0.1:0") as bridge:
        port = bridge.wait_listening()
        with channel(port) as ch:
            assert heartbeat(ch).status == "ok"
            register = ch.unary_unary("/loom.v1.Bridge/RegisterAgent")
            reply = register(bytes(pb.AgentRegisterRequest(agent_id="a")), timeout=RPC)
            assert pb.AgentRegisterResponse.parse(reply).success

            # an open event stream, ended by the shutdown
            requests: queue.Queue[bytes | None] = queue.Queue()
            stream = ch.stream_stream("/loom.v1.Bridge/EventStream")
            responses = stream(iter(requests.get, None), timeout=60)
            try:
                requests.put(bytes(pb.ClientEvent(ack=pb.Ack("a"))))
                requests.put(bytes(pb.ClientEvent(ping=pb.HeartbeatRequest(timestamp_ms=7))))
                pong = pb.ServerEvent.parse(next(responses)).pong
                assert pong == pb.HeartbeatResponse(timestamp_ms=7, status="ok")

                assert bridge.stop(signum) == 0
                with pytest.raises(grpc.RpcError) as info:
                    next(responses)
                assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            finally:
                requests.put(None)
                responses.cancel()
        assert bridge.stdout[-1] == f"loom bridge: {signum.name}, shutting down"
        assert not any("Traceback" in line for line in bridge.stderr), bridge.stderr


def test_idle_bridge_stops_on_sigterm() -> None:
    with bridge_process("--address", "127.0.0.1:0") as bridge:
        bridge.wait_listening()
        assert bridge.stop(signal.SIGTERM) == 0
        assert bridge.stdout == [bridge.stdout[0], "loom bridge: SIGTERM, shutting down"]


def test_address_from_environment() -> None:
    with bridge_process(env={"LOOM_BRIDGE_ADDR": "127.0.0.1:0"}) as bridge:
        port = bridge.wait_listening()
        with channel(port) as ch:
            assert heartbeat(ch).status == "ok"
        assert bridge.stop(signal.SIGTERM) == 0


def test_invalid_address_fails() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "loom", "bridge", "--address", "no-port"],
        capture_output=True,
        text=True,
        timeout=STARTUP,
    )
    assert proc.returncode != 0
    assert "invalid address" in proc.stderr


def test_port_in_use_fails() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "loom", "bridge", "--address", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=STARTUP,
        )
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
