"""One running agent: the connection loop, its reader, writer and heartbeat, handler
and capability dispatch, and the graceful stop.

A :class:`Runtime` is created by ``Agent.start()`` and lives until the agent stops.
All of its tasks belong to the task groups opened in :meth:`Runtime.run`:

* the connection loop connects, serves the session with three tasks (reader, writer,
  heartbeat) and, when the session dies, fails the calls that were in flight on it,
  waits a jittered exponential backoff and connects again;
* the "work" group holds the handler lanes and the running capability calls, so the
  graceful stop can wait for exactly those.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import anyio
from anyio.abc import TaskGroup, TaskStatus

from loom._dispatch import EventLanes, Handler
from loom._frames import (
    REPLACED,
    STATUS_ERROR,
    STATUS_RETRYABLE,
    Call,
    Deliver,
    Error,
    Frame,
    Ping,
    Pong,
    Result,
    Subscribed,
    decode_envelope,
)
from loom._outbox import Item, Outbox
from loom._pending import Outcome, PendingTable, Waiter
from loom._provider import (
    CAPABILITY_ERROR,
    UNAVAILABLE,
    CapabilityTable,
    ToolServer,
    error_result,
)
from loom._session import Connector, Session
from loom._subscriptions import SubscriptionState
from loom.envelope import Envelope, reply_topic
from loom.errors import (
    BridgeRejected,
    ConnectionLost,
    LoomError,
    MessageTooLarge,
    ProtocolError,
    RemoteError,
    RpcError,
)

__all__ = ["Runtime", "Settings"]

log = logging.getLogger("loom")

MAX_BATCH: Final = 512
"""Frames the writer hands to one ``session.send`` at most."""
LANE_BUFFER: Final = 64
"""Events queued per handler lane before the reader waits."""
QUEUED_CALLS_PER_SLOT: Final = 4
"""Calls that may wait for a slot, per ``max_concurrent_tools``, before BUSY answers."""
CLOSE_TIMEOUT: Final = 5.0
"""Seconds the connector gets to close the session once the agent has stopped."""

_IO_ERRORS: Final = (
    ConnectionLost,
    BridgeRejected,
    ProtocolError,
    RpcError,
    OSError,
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)


@dataclass(frozen=True)
class Settings:
    """The tunables of ``Agent`` (validated there)."""

    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 15.0
    reconnect_initial: float = 0.1
    reconnect_max: float = 5.0
    max_concurrent_tools: int = 64
    handler_lanes: int = 16
    outbox_size: int = 1024
    stop_grace: float = 5.0


def _connection_failure(exc: BaseException) -> LoomError | None:
    """The error a failed connect means for the agent, or None if it is not one."""
    if isinstance(exc, BridgeRejected | ConnectionLost):
        return exc
    if isinstance(exc, _IO_ERRORS):
        lost = ConnectionLost(str(exc) or type(exc).__name__)
        lost.__cause__ = exc
        return lost
    if isinstance(exc, BaseExceptionGroup):
        failures = [_connection_failure(inner) for inner in exc.exceptions]
        if failures and all(f is not None for f in failures):
            for failure in failures:
                if isinstance(failure, BridgeRejected):
                    return failure
            return failures[0]
    return None


class Runtime:
    """The state and tasks of one started agent."""

    def __init__(
        self,
        *,
        agent_id: str,
        connector: Connector,
        topics: Iterable[str],
        capabilities: CapabilityTable,
        metadata: Mapping[str, str],
        handler: Handler | None,
        ctx: object,
        settings: Settings,
    ) -> None:
        self.agent_id = agent_id
        self.reply_topic = reply_topic(agent_id)
        self.connector = connector
        self.settings = settings
        self.outbox = Outbox(settings.outbox_size)
        self.requests: PendingTable[Envelope] = PendingTable()
        self.calls: PendingTable[Result] = PendingTable()
        self.changes: PendingTable[Subscribed] = PendingTable()
        self.subscriptions = SubscriptionState(topics)
        self._infos = capabilities.infos()
        self._metadata = dict(metadata)
        self._lanes = (
            EventLanes(handler, ctx, lanes=settings.handler_lanes, buffer=LANE_BUFFER, owner=self)
            if handler is not None
            else None
        )
        self.tools = ToolServer(
            capabilities,
            self._send_quietly,
            max_concurrent=settings.max_concurrent_tools,
            max_queued=settings.max_concurrent_tools * QUEUED_CALLS_PER_SLOT,
            owner=self,
        )
        self.connected = False
        self.connections = 0
        self.stop_requested = anyio.Event()
        self.done = anyio.Event()
        self._flushed = anyio.Event()
        self._accepting = True
        self._closing = False
        self._ever_connected = False
        self._work: TaskGroup | None = None
        self._loop_scope: anyio.CancelScope | None = None
        self._serve_scope: anyio.CancelScope | None = None
        self._scope = anyio.CancelScope()
        self._last_seen = 0.0
        self._healthy = False
        self._replaced = False

    # ---- used by Context ---------------------------------------------------------

    async def put(self, frame: Frame, waiter: Waiter[Any] | None = None) -> None:
        """Queue a frame for the bridge (waits while the outbox is full)."""
        try:
            await self.outbox.put(frame, waiter)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise ConnectionLost(f"agent {self.agent_id!r} has stopped") from None

    def request_stop(self) -> None:
        """Stop gracefully (see :meth:`run`)."""
        self.stop_requested.set()

    def cancel(self) -> None:
        """Stop now: cancel every task of the agent."""
        self.stop_requested.set()
        self._scope.cancel()

    @property
    def stopping(self) -> bool:
        return self.stop_requested.is_set()

    # ---- lifetime ----------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[LoomError | None]) -> None:
        """The agent's main task: connect, serve until asked to stop, stop gracefully.

        Reports ``None`` once connected, or the error the first connect failed with
        (and returns).
        """
        lanes = self._lanes
        try:
            with self._scope:
                await self._serve_until_stopped(task_status)
        finally:
            self._closing = True
            self.connected = False
            self._work = None
            message = f"agent {self.agent_id!r} stopped"
            for table in (self.requests, self.calls, self.changes):
                table.fail_all(lambda: ConnectionLost(message))
            self.outbox.close_all()
            self.tools.close_all()
            if lanes is not None:
                lanes.close_all()
            self.done.set()

    async def _serve_until_stopped(self, task_status: TaskStatus[LoomError | None]) -> None:
        settings = self.settings
        lanes = self._lanes
        async with anyio.create_task_group() as tg:
            async with anyio.create_task_group() as work:
                self._work = work
                if lanes is not None:
                    lanes.start(work)
                error: LoomError | None = await tg.start(self._connection_loop)
                if error is not None:
                    if lanes is not None:
                        lanes.close()
                    task_status.started(error)
                    return
                task_status.started(None)
                await self.stop_requested.wait()
                log.debug("agent %s: stopping", self.agent_id)
                self._accepting = False
                deadline = anyio.current_time() + settings.stop_grace
                self.tools.close()
                if lanes is not None:
                    lanes.close()
                work.cancel_scope.deadline = deadline
            if work.cancel_scope.cancelled_caught:
                log.warning(
                    "agent %s: handlers or tool calls still running after %g s were cancelled",
                    self.agent_id,
                    settings.stop_grace,
                )
            self.outbox.close()
            if not self.outbox.empty() and not self._replaced:
                with anyio.CancelScope(deadline=deadline):
                    await self._flushed.wait()
                if not self.outbox.empty():
                    log.warning(
                        "agent %s: %d queued frames were not sent before stopping",
                        self.agent_id,
                        len(self.outbox),
                    )
            self._close_connection()
            tg.cancel_scope.deadline = anyio.current_time() + CLOSE_TIMEOUT

    def _close_connection(self) -> None:
        self._closing = True
        if self._serve_scope is not None:
            self._serve_scope.cancel()
        elif self._loop_scope is not None:
            self._loop_scope.cancel()

    # ---- connection loop -----------------------------------------------------------

    async def _connection_loop(self, *, task_status: TaskStatus[LoomError | None]) -> None:
        settings = self.settings
        attempt = 0
        try:
            while not self._closing and not self._replaced:
                with anyio.CancelScope() as scope:
                    self._loop_scope = scope
                    first = not self._ever_connected
                    began = anyio.current_time()
                    self._healthy = False
                    reason: BaseException | None
                    connections = self.connections
                    try:
                        reason = await self._session(task_status if first else None)
                    except Exception as exc:
                        failure = _connection_failure(exc)
                        if failure is None:
                            raise
                        if first and not self._ever_connected:
                            # only while start() waits; once connected it has returned
                            task_status.started(failure)
                            return
                        reason = failure
                    if self._closing or self._replaced:
                        return
                    if reason is None:
                        reason = ConnectionLost("the session ended")
                    message = f"connection to the bridge lost: {reason}"
                    lost = partial(ConnectionLost, message)
                    failed = (
                        self.requests.fail_sent(lost)
                        + self.calls.fail_sent(lost)
                        + self.changes.fail_sent(lost)
                    )
                    if self._healthy or anyio.current_time() - began >= settings.reconnect_max:
                        attempt = 0
                    cap = min(
                        settings.reconnect_max, settings.reconnect_initial * 2 ** min(attempt, 30)
                    )
                    delay = random.uniform(0, cap)
                    attempt += 1
                    if self.connections > connections:
                        log.warning(
                            "agent %s: %s (%d calls in flight failed); reconnecting in %.2f s",
                            self.agent_id,
                            message,
                            failed,
                            delay,
                        )
                    else:
                        log.info(
                            "agent %s: reconnect attempt %d failed: %s; retrying in %.2f s",
                            self.agent_id,
                            attempt,
                            reason,
                            delay,
                        )
                    await anyio.sleep(delay)
        finally:
            self._loop_scope = None

    async def _session(
        self, task_status: TaskStatus[LoomError | None] | None
    ) -> BaseException | None:
        """Connect, serve the session until it dies; returns why it died."""
        settings = self.settings
        registration = self.subscriptions.registration(self.agent_id, self._infos, self._metadata)
        connect_by = anyio.current_time() + settings.heartbeat_timeout
        with anyio.CancelScope(deadline=connect_by) as connecting:
            async with self.connector.connect(registration) as session:
                connecting.deadline = math.inf
                self._ever_connected = True
                self.connections += 1
                log.info(
                    "agent %s: connected to the bridge at %s",
                    self.agent_id,
                    self.connector.address,
                )
                if task_status is not None:
                    task_status.started(None)
                reason = await self._serve(session)
                if self._closing and reason is None:
                    # Graceful stop: let the bridge take in all we sent before the
                    # stream goes away (a reset stream loses what it had buffered).
                    with anyio.move_on_after(CLOSE_TIMEOUT):
                        try:
                            await session.close()
                        except LoomError as exc:
                            log.debug("agent %s: closing the stream: %s", self.agent_id, exc)
                return reason
        raise ConnectionLost(
            f"could not connect to the bridge at {self.connector.address} "
            f"within {settings.heartbeat_timeout:g} s"
        )

    async def _serve(self, session: Session) -> BaseException | None:
        reasons: list[BaseException] = []
        self._last_seen = anyio.current_time()
        self.connected = True
        try:
            with anyio.CancelScope() as scope:
                self._serve_scope = scope
                if self._closing:
                    scope.cancel()
                async with anyio.create_task_group() as tg:

                    def lost(exc: BaseException) -> None:
                        if not reasons:
                            reasons.append(exc)
                        tg.cancel_scope.cancel()

                    tg.start_soon(self._reader, session, lost, name="loom reader")
                    tg.start_soon(self._writer, session, lost, name="loom writer")
                    tg.start_soon(self._heartbeat, lost, name="loom heartbeat")
        finally:
            self.connected = False
            self._serve_scope = None
        return reasons[0] if reasons else None

    # ---- per connection --------------------------------------------------------------

    async def _reader(self, session: Session, lost: Callable[[BaseException], None]) -> None:
        while True:
            try:
                frames = await session.receive()
            except _IO_ERRORS as exc:
                lost(exc)
                return
            self._last_seen = anyio.current_time()
            self._healthy = True
            await self._handle(frames)

    async def _writer(self, session: Session, lost: Callable[[BaseException], None]) -> None:
        restore = self.subscriptions.restore_frame()
        if restore is not None:
            try:
                await session.send([restore])
            except _IO_ERRORS as exc:
                lost(exc)
                return
        outbox = self.outbox
        while True:
            try:
                batch = await outbox.next_batch(MAX_BATCH)
            except anyio.EndOfStream:
                self._flushed.set()
                return
            live = outbox.live(batch)
            if live:
                try:
                    await session.send([frame for frame, _ in live])
                except MessageTooLarge:
                    if not await self._send_singly(session, live, lost):
                        return
                except _IO_ERRORS as exc:
                    lost(exc)
                    return
            outbox.batch_sent()

    async def _send_singly(
        self, session: Session, items: list[Item], lost: Callable[[BaseException], None]
    ) -> bool:
        """A batch was too large: send its frames one by one, dropping any that alone
        is too large (its caller gets the error)."""
        for frame, waiter in items:
            if waiter is not None and waiter.done:
                continue
            try:
                await session.send([frame])
            except MessageTooLarge as exc:
                log.error(
                    "agent %s: dropped a %s frame: %s", self.agent_id, type(frame).__name__, exc
                )
                if waiter is not None:
                    waiter.fail(exc)
                if isinstance(frame, Result):
                    # tell the caller at once rather than let it wait for its timeout
                    answer = error_result(
                        frame.id, STATUS_ERROR, CAPABILITY_ERROR, f"the output is too large: {exc}"
                    )
                    try:
                        await session.send([answer])
                    except (MessageTooLarge, *_IO_ERRORS) as error:
                        lost(error)
                        return False
            except _IO_ERRORS as exc:
                lost(exc)
                return False
            else:
                if waiter is not None:
                    waiter.sent = True
        return True

    async def _heartbeat(self, lost: Callable[[BaseException], None]) -> None:
        interval = self.settings.heartbeat_interval
        timeout = self.settings.heartbeat_timeout
        next_ping = anyio.current_time() + interval
        while True:
            await anyio.sleep_until(min(next_ping, self._last_seen + timeout))
            now = anyio.current_time()
            if now >= self._last_seen + timeout:
                lost(ConnectionLost(f"no frame from the bridge for {timeout:g} s"))
                return
            if now >= next_ping:
                self.outbox.offer(Ping(_now_ms()))
                next_ping = now + interval

    # ---- inbound frames --------------------------------------------------------------

    async def _handle(self, frames: list[Frame]) -> None:
        events: list[tuple[str, Envelope]] | None = None
        for frame in frames:
            if isinstance(frame, Deliver):
                try:
                    event = decode_envelope(frame.event)
                except ProtocolError as exc:
                    log.warning(
                        "agent %s: dropped an event on %r: %s", self.agent_id, frame.topic, exc
                    )
                    continue
                if frame.topic == self.reply_topic and event.correlation_id:
                    outcome = self.requests.resolve(event.correlation_id, event)
                    if outcome is Outcome.RESOLVED:
                        continue
                    if outcome is Outcome.LATE:
                        log.debug(
                            "agent %s: dropped a late reply %s to request %s",
                            self.agent_id,
                            event.id,
                            event.correlation_id,
                        )
                        continue
                if events is None:
                    events = []
                events.append((frame.topic, event))
            elif isinstance(frame, Result):
                if self.calls.resolve(frame.id, frame) is not Outcome.RESOLVED:
                    log.debug("agent %s: dropped a result for call %s", self.agent_id, frame.id)
            elif isinstance(frame, Call):
                await self._admit(frame)
            elif isinstance(frame, Subscribed):
                outcome = self.changes.resolve(frame.id, frame)
                if outcome is not Outcome.RESOLVED and frame.error:
                    log.warning(
                        "agent %s: the bridge refused subscription change %s: %s",
                        self.agent_id,
                        frame.id,
                        frame.error,
                    )
            elif isinstance(frame, Pong):
                pass
            elif isinstance(frame, Ping):
                self.outbox.offer(Pong(frame.timestamp_ms))
            elif isinstance(frame, Error):
                self._on_error(frame)
            else:
                log.debug(
                    "agent %s: ignored a %s frame from the bridge",
                    self.agent_id,
                    type(frame).__name__,
                )
        if events:
            await self._dispatch(events)

    async def _dispatch(self, events: list[tuple[str, Envelope]]) -> None:
        lanes = self._lanes
        if lanes is None or not self._accepting:
            log.debug("agent %s: %d events not handled", self.agent_id, len(events))
            return
        for topic, event in events:
            if not await lanes.dispatch(topic, event):
                return

    async def _admit(self, call: Call) -> None:
        work = self._work
        if work is None or not self._accepting:
            await self._send_quietly(
                error_result(
                    call.id, STATUS_RETRYABLE, UNAVAILABLE, f"agent {self.agent_id!r} is stopping"
                )
            )
            return
        answer = self.tools.admit(call, work)
        if answer is not None:
            await self._send_quietly(answer)

    def _on_error(self, frame: Error) -> None:
        if frame.code == REPLACED:
            # Another connection registered this agent id: stop rather than take it
            # back, or two agents sharing an id would displace each other forever.
            log.error(
                "agent %s: another connection took over this agent id (%s); stopping",
                self.agent_id,
                frame.message,
            )
            self._replaced = True
            self.request_stop()
            return
        ref = f" (about {frame.ref})" if frame.ref else ""
        log.warning(
            "agent %s: the bridge reported %s: %s%s", self.agent_id, frame.code, frame.message, ref
        )
        if frame.ref:
            error = RemoteError(frame.code, frame.message)
            if not self.requests.fail(frame.ref, error) and not self.calls.fail(frame.ref, error):
                self.changes.fail(frame.ref, error)

    async def _send_quietly(self, frame: Frame) -> None:
        """Queue an answer; once the agent has stopped there is no one to send it to."""
        try:
            await self.outbox.put(frame)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            log.debug(
                "agent %s: dropped a %s frame after stop", self.agent_id, type(frame).__name__
            )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
