"""A v1 client on the official grpcio stack:
``python -m benchmarks._grpcio_side publisher PARAMS_JSON``.

It uses stubs generated from ``proto/loom/v1/bridge.proto`` by ``grpc_tools.protoc`` at
run time (:func:`generate_stubs`, called once by the parent), registers with
``RegisterAgent``, opens ``EventStream`` with the Ack handshake (``message_id`` is the
agent id), and on ``go`` publishes one protobuf ``ClientEvent.publish`` per event.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks._child import now, report

PROTO_DIR = Path(__file__).resolve().parent.parent / "proto" / "loom" / "v1"


def generate_stubs(out_dir: Path) -> Path:
    """Generate ``bridge_pb2`` and ``bridge_pb2_grpc`` into ``out_dir``.

    The proto's own directory is the include root, so the modules are top-level
    (``import bridge_pb2``) and cannot collide with the ``loom`` package.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            "bridge.proto",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out_dir


def publisher(params: dict[str, Any]) -> None:
    """Register, open the stream (ready once a ping came back), publish on ``go``,
    half-close, and report when the bridge has read everything (it then ends the
    stream)."""
    import grpc  # type: ignore[import-untyped]

    sys.path.insert(0, params["stubs"])
    import bridge_pb2 as pb  # type: ignore[import-not-found]
    import bridge_pb2_grpc as pb_grpc  # type: ignore[import-not-found]

    agent_id, topic, count = params["agent_id"], params["topic"], int(params["count"])
    payload = b"x" * int(params["size"])
    go = threading.Event()
    stamps: dict[str, float] = {}

    def client_events() -> Iterator[Any]:
        yield pb.ClientEvent(ack=pb.Ack(message_id=agent_id))
        yield pb.ClientEvent(ping=pb.HeartbeatRequest(timestamp_ms=time.time_ns() // 1_000_000))
        go.wait()
        if stamps.get("stop"):
            return
        client_event, publish, event = pb.ClientEvent, pb.Publish, pb.Event
        for i in range(count):
            yield client_event(
                publish=publish(
                    topic=topic,
                    event=event(
                        id=f"{agent_id}-{i}",
                        type="bench",
                        timestamp_ms=time.time_ns() // 1_000_000,
                        source=agent_id,
                        payload=payload,
                    ),
                )
            )
        stamps["t_sent"] = now()

    with grpc.insecure_channel(params["address"]) as channel:
        stub = pb_grpc.BridgeStub(channel)
        registered = stub.RegisterAgent(
            pb.AgentRegisterRequest(agent_id=agent_id, subscribed_topics=[]), timeout=10
        )
        if not registered.success:
            raise RuntimeError(f"RegisterAgent refused: {registered.error_message}")
        responses = stub.EventStream(client_events())
        try:
            first = next(responses)
            if first.WhichOneof("msg") != "pong":
                raise RuntimeError(f"expected a pong, got {first}")
            report("ready")
            if sys.stdin.readline().strip() != "go":
                stamps["stop"] = 1.0
                return
            t_start = now()
            go.set()
            unexpected = sum(1 for _ in responses)
            report(
                "result",
                t_start=t_start,
                t_sent=stamps["t_sent"],
                t_end=now(),
                sent=count,
                unexpected_messages=unexpected,
            )
            sys.stdin.readline()
        finally:
            go.set()
            responses.cancel()


def main() -> None:
    role, params = sys.argv[1], json.loads(sys.argv[2])
    try:
        {"publisher": publisher}[role](params)
    except Exception as exc:
        report("error", role=role, message="".join(traceback.format_exception(exc)))
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
