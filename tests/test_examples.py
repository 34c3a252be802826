"""Every example in examples/ runs to completion: as a subprocess, under asyncio and
trio, on the embedded bridge (no ``--address``) and against a real bridge process
(``--address``), printing what it should."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from bridge_process import BridgeProcess, bridge_process

__all__ = ["bridge_process"]  # the fixture, used by name

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
RUN_TIMEOUT = 45.0


def check_request_reply(lines: list[str]) -> None:
    assert lines == [
        "'ping' -> 'PING' (data.result)",
        "'hello' -> 'HELLO' (data.result)",
        "'loom' -> 'LOOM' (data.result)",
    ]


def check_threads(lines: list[str]) -> None:
    # the observer sees the thread's three events (topics are handled concurrently,
    # so in no particular order across topics) and not the unrelated one
    assert sorted(lines) == sorted(
        ["chat.general: Hello", "chat.support: Need help", "chat.general: Bye"]
    )
    assert lines.index("chat.general: Hello") < lines.index("chat.general: Bye")


def check_tools(lines: list[str]) -> None:
    assert len(lines) == 2
    assert lines[0] == "Temperature in Seattle: 12°C"
    assert lines[1].startswith("Rejected bad arguments: ")
    assert "city" in lines[1]


def check_trio(lines: list[str]) -> None:
    assert lines == [
        "Final output:",
        "Q: What is structured concurrency?",
        "  - https://example.com/what-is-structured-concurrency?/doc1",
        "  - https://example.com/what-is-structured-concurrency?/doc2",
        "SUMMARY: Complete",
    ]


CHECKS: dict[str, Callable[[list[str]], None]] = {
    "request_reply.py": check_request_reply,
    "threads.py": check_threads,
    "tools.py": check_tools,
    "trio.py": check_trio,
}


def test_every_example_is_checked() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(CHECKS)


def run_example(name: str, *args: str) -> list[str]:
    env = dict(os.environ)
    env.pop("LOOM_BRIDGE_ADDR", None)  # the examples default to it
    env.pop("LOOM_LOG", None)
    env["PYTHONIOENCODING"] = "utf-8"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=RUN_TIMEOUT,
    )
    assert proc.returncode == 0, (
        f"{name} {' '.join(args)} exited with {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
    return proc.stdout.splitlines()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_example_on_the_embedded_bridge(name: str, backend: str) -> None:
    CHECKS[name](run_example(name, "--backend", backend))


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_example_against_a_bridge_process(
    name: str, backend: str, bridge_process: BridgeProcess
) -> None:
    CHECKS[name](run_example(name, "--backend", backend, "--address", bridge_process.address))
    assert bridge_process.running
