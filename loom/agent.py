"""The :class:`Agent`: connects to a bridge, receives events, serves capabilities."""

from __future__ import annotations

import inspect
import logging
import math
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, ExitStack
from types import TracebackType
from typing import Any

import anyio

from loom import _logging  # noqa: F401  (LOOM_LOG takes effect with the first import)
from loom._connect import ADDRESS_ENV, DEFAULT_ADDRESS, check_address, connector_for
from loom._dispatch import INSIDE_AGENT
from loom._provider import CapabilityTable
from loom._runtime import Runtime, Settings
from loom._session import Connector
from loom.bridge._topics import validate_pattern, validate_topic
from loom.capability import Capability, collect_capabilities
from loom.context import Context, EventHandler
from loom.envelope import reply_topic
from loom.errors import ConfigurationError, ConnectionLost

__all__ = ["Agent"]

log = logging.getLogger("loom")


class Agent:
    """An agent on a Loom bridge.

    It subscribes to ``topics``, hands every event it receives to
    ``on_event(ctx, topic, event)``, serves the ``capabilities`` other agents call, and
    sends what its :class:`~loom.context.Context` (``agent.ctx``) emits. Its private
    reply topic ``agent.{agent_id}.replies`` is subscribed automatically.

    Run it in one of three ways::

        agent.run()                      # blocking; SIGINT/SIGTERM stop it gracefully

        async with Agent(...) as agent:  # inside asyncio or trio
            ...

        await agent.start()              # same as async with, spelled out:
        ...                              # start() and stop() must then be called
        await agent.stop()               # from the same task

    Events of one topic reach the handler one at a time, in order; events of
    different topics are handled concurrently (on up to ``handler_lanes`` lanes). An
    exception raised by the handler is logged and the agent carries on. Capability
    calls run concurrently, at most ``max_concurrent_tools`` at once.

    The agent reconnects by itself when the connection drops (exponential backoff
    with full jitter from ``reconnect_initial`` up to ``reconnect_max`` seconds),
    registers again and restores its subscriptions and threads. A ping goes out every
    ``heartbeat_interval`` seconds; a connection that brings nothing for
    ``heartbeat_timeout`` seconds is considered dead. Everything sent goes through one
    outbox of ``outbox_size`` frames (senders wait when it is full); frames sent while
    disconnected wait there for the next connection.

    :param agent_id: the agent's name on the bridge (unique among connected agents).
    :param topics: topics or patterns to subscribe to (``orders.*``, ``orders.>``).
    :param capabilities: functions decorated with :func:`~loom.capability.capability`
        (or :class:`~loom.capability.Capability` objects) this agent provides.
    :param on_event: ``async def on_event(ctx, topic, event)``; without it, received
        events are dropped (the agent may still send, request and serve tools).
    :param address: the bridge: ``HOST:PORT``, ``grpc://HOST:PORT``,
        ``grpcs://HOST:PORT`` (TLS), or ``embedded[:NAME]`` for an in-process bridge;
        by default ``$LOOM_BRIDGE_ADDR``, else ``127.0.0.1:50051``.
    :param connector: a ready-made connector, used instead of ``address``.
    :param stop_grace: seconds :meth:`stop` waits for running handlers and tool calls
        and for queued frames to go out before it cancels what is left.
    :param metadata: string key/values announced at registration.
    :raises ~loom.errors.ConfigurationError: for an invalid argument.
    """

    def __init__(
        self,
        agent_id: str,
        topics: Iterable[str],
        capabilities: Iterable[Callable[..., Any] | Capability] = (),
        on_event: EventHandler | None = None,
        address: str | None = None,
        *,
        connector: Connector | None = None,
        heartbeat_interval: float = 5.0,
        heartbeat_timeout: float = 15.0,
        reconnect_initial: float = 0.1,
        reconnect_max: float = 5.0,
        max_concurrent_tools: int = 64,
        handler_lanes: int = 16,
        outbox_size: int = 1024,
        stop_grace: float = 5.0,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(agent_id, str) or not agent_id.strip():
            raise ConfigurationError(f"agent_id must be a non-empty string, got {agent_id!r}")
        try:
            validate_topic(reply_topic(agent_id))
        except ConfigurationError:
            raise ConfigurationError(
                f"agent_id {agent_id!r} cannot be part of a topic name "
                "(no whitespace, '*' or '>'; dots separate segments)"
            ) from None
        self._agent_id = agent_id
        self._topics = _topic_list(topics, reply_topic(agent_id))
        self._capabilities = CapabilityTable(collect_capabilities(capabilities))
        if on_event is not None and not _is_async_callable(on_event):
            raise ConfigurationError(
                "on_event must be an async function: async def on_event(ctx, topic, event)"
            )
        self._on_event = on_event
        self._address = _resolve_address(address) if connector is None else connector.address
        self._connector = connector
        self._settings = Settings(
            heartbeat_interval=_positive("heartbeat_interval", heartbeat_interval),
            heartbeat_timeout=_positive("heartbeat_timeout", heartbeat_timeout),
            reconnect_initial=_positive("reconnect_initial", reconnect_initial),
            reconnect_max=_positive("reconnect_max", reconnect_max),
            max_concurrent_tools=_count("max_concurrent_tools", max_concurrent_tools),
            handler_lanes=_count("handler_lanes", handler_lanes),
            outbox_size=_count("outbox_size", outbox_size),
            stop_grace=_non_negative("stop_grace", stop_grace),
        )
        if reconnect_max < reconnect_initial:
            raise ConfigurationError("reconnect_max must not be smaller than reconnect_initial")
        self._metadata = _string_map(metadata)
        self._ctx = Context(agent_id, self._require_runtime)
        self._runtime: Runtime | None = None
        self._stack: AsyncExitStack | None = None
        self._owner: int | None = None

    def __repr__(self) -> str:
        state = "connected" if self.connected else "running" if self._runtime else "stopped"
        return f"Agent({self._agent_id!r}, {state}, address={self._address!r})"

    # ---- properties ----------------------------------------------------------------

    @property
    def agent_id(self) -> str:
        """The agent's id."""
        return self._agent_id

    @property
    def ctx(self) -> Context:
        """The agent's :class:`~loom.context.Context`, usable while it runs."""
        return self._ctx

    @property
    def address(self) -> str:
        """The bridge address the agent connects to."""
        return self._address

    @property
    def connected(self) -> bool:
        """True while the agent has an open stream to the bridge."""
        runtime = self._runtime
        return runtime is not None and runtime.connected

    @property
    def running(self) -> bool:
        """True between :meth:`start` and the end of :meth:`stop` (even while
        reconnecting)."""
        runtime = self._runtime
        return runtime is not None and not runtime.done.is_set()

    # ---- lifetime ------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and register; returns once the event stream is open.

        The agent's tasks then run in the background, in a task group that
        ``start()`` opens in the calling task and :meth:`stop` closes. So call both
        from the same task and at the same level: a cancel scope or task group opened
        after ``start()`` (``with anyio.fail_after(...)``, ``async with
        create_task_group()``) must be closed before ``stop()``, just as if
        ``start()`` and ``stop()`` were the two ends of an ``async with`` block --
        which is what ``async with agent:`` is. To stop the agent from anywhere else,
        call :meth:`stop` there (see its documentation).

        Raises :class:`~loom.errors.BridgeRejected` when the bridge refuses the
        registration and :class:`~loom.errors.ConnectionLost` when it cannot be
        reached (within ``heartbeat_timeout``); nothing is left running then.
        """
        if self._runtime is not None:
            raise RuntimeError(f"agent {self._agent_id!r} is already started")
        connector = self._connector or connector_for(self._address)
        runtime = Runtime(
            agent_id=self._agent_id,
            connector=connector,
            topics=self._topics,
            capabilities=self._capabilities,
            metadata=self._metadata,
            handler=self._on_event,
            ctx=self._ctx,
            settings=self._settings,
        )
        stack = AsyncExitStack()
        task_group = await stack.enter_async_context(anyio.create_task_group())
        self._runtime = runtime  # handlers may use ctx as soon as events arrive
        try:
            error = await task_group.start(runtime.run, name=f"loom agent {self._agent_id}")
        except BaseException as exc:
            self._runtime = None
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        if error is not None:
            self._runtime = None
            await stack.aclose()
            raise error
        self._stack = stack
        self._owner = anyio.get_current_task().id
        log.info("agent %s: started", self._agent_id)

    async def stop(self) -> None:
        """Stop gracefully; idempotent.

        The agent stops taking new events and calls, lets running handlers and tool
        calls finish and sends what they emitted (all within ``stop_grace`` seconds;
        what is still running then is cancelled), then closes its connection.

        Called from the task that started the agent, ``stop()`` returns when all of
        that is done. Called from another task, it asks the agent to stop and waits
        for it to finish, after which the starting task's ``stop()`` (or the end of
        its ``async with`` block) returns at once. Called from one of the agent's own
        handlers or capabilities, it only asks (it cannot wait for itself).
        """
        runtime = self._runtime
        if runtime is None:
            return
        runtime.request_stop()
        if self._stack is not None and anyio.get_current_task().id == self._owner:
            await self._close()
        elif INSIDE_AGENT.get() is not runtime:
            await runtime.done.wait()

    async def wait_stopped(self) -> None:
        """Wait until the agent has stopped (returns at once if it is not running).

        With ``async with agent:`` this keeps the block open until something else
        (another task, a handler, a signal) calls :meth:`stop`.
        """
        runtime = self._runtime
        if runtime is not None:
            await runtime.done.wait()

    async def _close(self) -> None:
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                await stack.aclose()
        finally:
            self._runtime = None
            self._owner = None
            log.info("agent %s: stopped", self._agent_id)

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the agent: gracefully when the block ended normally; when it raised,
        the agent's tasks are cancelled and the exception propagates unchanged."""
        runtime = self._runtime
        if runtime is not None:
            if exc is None:
                runtime.request_stop()
            else:
                runtime.cancel()
        await self._close()

    def run(
        self, *, backend: str = "asyncio", backend_options: dict[str, Any] | None = None
    ) -> None:
        """Start the agent and block until it stops.

        ``backend`` is ``"asyncio"`` or ``"trio"`` (``backend_options`` go to
        :func:`anyio.run`). SIGINT (Ctrl+C) or SIGTERM stops the agent gracefully; a
        second signal stops it at once. It also returns once :meth:`stop` is called
        from a handler or another task. Raises what :meth:`start` raises.
        """
        anyio.run(self._run_until_stopped, backend=backend, backend_options=backend_options)

    async def _run_until_stopped(self) -> None:
        with anyio.CancelScope() as hard_stop, ExitStack() as stack:
            try:
                signals = stack.enter_context(
                    anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
                )
            except (NotImplementedError, RuntimeError, ValueError):
                signals = None  # not the main thread, or no signals on this platform
            async with self:
                async with anyio.create_task_group() as tg:
                    if signals is not None:
                        tg.start_soon(self._stop_on_signals, signals, hard_stop)
                    await self.wait_stopped()
                    tg.cancel_scope.cancel()

    async def _stop_on_signals(
        self, signals: AsyncIterator[int], hard_stop: anyio.CancelScope
    ) -> None:
        async for signum in signals:
            runtime = self._runtime
            if runtime is not None and not runtime.stopping:
                log.info(
                    "agent %s: %s received, stopping",
                    self._agent_id,
                    signal.Signals(signum).name,
                )
                runtime.request_stop()
            else:
                log.warning("agent %s: second signal, stopping now", self._agent_id)
                hard_stop.cancel()

    def _require_runtime(self) -> Runtime:
        runtime = self._runtime
        if runtime is None:
            raise ConnectionLost(
                f"agent {self._agent_id!r} is not running; start it first "
                "(agent.run(), 'async with agent:' or 'await agent.start()')"
            )
        return runtime


# ---- argument checks --------------------------------------------------------------------


def _topic_list(topics: Iterable[str], own_reply_topic: str) -> list[str]:
    if isinstance(topics, str):
        topics = [topics]
    result: list[str] = []
    try:
        items = list(topics)
    except TypeError:
        raise ConfigurationError(
            f"topics must be a list of topic names, got {type(topics).__name__}"
        ) from None
    for topic in items:
        validate_pattern(topic)
        if topic not in result:
            result.append(topic)
    if own_reply_topic not in result:
        result.append(own_reply_topic)
    return result


def _is_async_callable(func: object) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # noqa: B004
    return call is not None and inspect.iscoroutinefunction(call)


def _resolve_address(address: str | None) -> str:
    if address is None:
        address = os.environ.get(ADDRESS_ENV, "").strip() or DEFAULT_ADDRESS
    check_address(address)
    return address.strip()


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(f"{name} must be a positive number, got {value!r}")
    if math.isinf(value):
        raise ConfigurationError(f"{name} must be finite")
    return float(value)


def _non_negative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigurationError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    return value


def _string_map(metadata: Mapping[str, str] | None) -> dict[str, str]:
    if metadata is None:
        return {}
    result = dict(metadata)
    for key, value in result.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigurationError(
                f"metadata must map strings to strings, got {key!r}: {value!r}"
            )
    return result
