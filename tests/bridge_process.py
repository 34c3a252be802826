"""A real bridge process (``python -m loom bridge``) for end-to-end tests.

:class:`BridgeProcess` starts the bridge on ``127.0.0.1:0`` (the CLI prints the port
it really got), waits for the ``loom bridge listening on HOST:PORT`` line, and can
SIGKILL it (:meth:`BridgeProcess.kill`) and start it again on the same port
(:meth:`BridgeProcess.restart`). Stdout is read by a daemon thread, so waiting for the
ready line has a timeout and the pipe never fills; stderr goes to a temporary file
that is quoted when the bridge fails to start.

Fixtures: :func:`bridge_process` (module scope, shared by the tests of a module that
do not kill it) and :func:`fresh_bridge_process` (function scope, for tests that kill
or restart it). Import them into a test module to use them.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import IO

import anyio.to_thread
import pytest

__all__ = ["BridgeProcess", "bridge_process", "fresh_bridge_process"]

READY = re.compile(r"^loom bridge listening on (\S+):(\d+)\s*$")
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class BridgeProcess:
    """``python -m loom bridge`` as a subprocess; :attr:`address` is ``HOST:PORT``."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = 0
        self.extra_args = list(extra_args)
        self.env = env
        self.ready_timeout = ready_timeout
        self.starts = 0
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None

    # ---- properties --------------------------------------------------------------

    @property
    def address(self) -> str:
        if not self.port:
            raise RuntimeError("the bridge process has not been started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ---- lifetime ----------------------------------------------------------------

    def start(self) -> None:
        """Start the bridge (on :attr:`port`, or a free port the first time) and wait
        for its ready line."""
        if self.running:
            raise RuntimeError("the bridge process is already running")
        self._cleanup()
        env = dict(os.environ)
        env.pop("LOOM_BRIDGE_ADDR", None)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.env:
            env.update(self.env)
        self._stderr = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")
        self._lines = queue.Queue()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loom",
                "bridge",
                "--address",
                f"{self.host}:{self.port}",
                *self.extra_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
        )
        self._proc = proc
        assert proc.stdout is not None
        self._reader = threading.Thread(
            target=_pump, args=(proc.stdout, self._lines), name="bridge stdout", daemon=True
        )
        self._reader.start()
        try:
            self._wait_ready()
        except BaseException:
            self._terminate()
            raise
        self.starts += 1

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        try:
            line = self._lines.get(timeout=self.ready_timeout)
            while line is not None:
                match = READY.match(line)
                if match:
                    port = int(match.group(2))
                    if self.port and port != self.port:
                        raise RuntimeError(f"the bridge came back on port {port}, not {self.port}")
                    self.port = port
                    return
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.0))
        except queue.Empty:
            raise RuntimeError(
                f"the bridge printed no ready line within {self.ready_timeout} s"
                f"{self._stderr_tail()}"
            ) from None
        assert self._proc is not None
        code = self._proc.wait(timeout=STOP_TIMEOUT)
        raise RuntimeError(
            f"the bridge exited with code {code} before it was ready{self._stderr_tail()}"
        )

    def kill(self) -> None:
        """SIGKILL the bridge (as a crash would) and reap it."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise RuntimeError("the bridge process is not running")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT)

    def pause(self) -> None:
        """SIGSTOP the bridge: its connections stay open but nothing answers (a
        half-open connection, as a hung host or a dead network path gives)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise RuntimeError("the bridge process is not running")
        proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused bridge."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Start the bridge again on the same port (after :meth:`kill` or :meth:`stop`)."""
        if self.running:
            self.kill()
        self.start()

    async def restart_async(self) -> None:
        """:meth:`restart` without blocking the event loop (agents keep retrying)."""
        await anyio.to_thread.run_sync(self.restart)

    def stop(self) -> None:
        """Stop the bridge gracefully (SIGTERM), SIGKILL if it does not exit in time."""
        self._terminate()
        self._cleanup()

    def _terminate(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # in case it is paused
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)

    def _cleanup(self) -> None:
        """Release what the last (exited) process left: its stdout reader, pipes."""
        proc, self._proc = self._proc, None
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.join(timeout=STOP_TIMEOUT)  # ends at EOF: the process has exited
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
        stderr, self._stderr = self._stderr, None
        if stderr is not None:
            stderr.close()

    def _stderr_tail(self) -> str:
        stderr = self._stderr
        if stderr is None:
            return ""
        stderr.flush()
        stderr.seek(0)
        text = stderr.read()[-4000:]
        return f"\n--- bridge stderr ---\n{text}" if text else ""

    def __enter__(self) -> BridgeProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"BridgeProcess({self.host}:{self.port}, pid={self.pid}, running={self.running})"


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    try:
        for line in stream:
            lines.put(line)
    except (OSError, ValueError):
        pass  # closed under us at teardown
    finally:
        lines.put(None)


@pytest.fixture(scope="module")
def bridge_process() -> Iterator[BridgeProcess]:
    """One bridge process shared by a module's tests (which must not kill it)."""
    with BridgeProcess() as bridge:
        yield bridge


@pytest.fixture
def fresh_bridge_process() -> Iterator[BridgeProcess]:
    """A bridge process of the test's own (it may kill and restart it)."""
    with BridgeProcess() as bridge:
        yield bridge
