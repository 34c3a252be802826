"""Which agent provides which capability, and the calls in flight to them.

:class:`CapabilityRegistry` answers "who can run ``name`` at ``version``?" and
spreads calls across providers round-robin. :class:`PendingCalls` tracks each
call from the moment it is routed to a provider until it finishes, fails
(provider gone, deadline passed, bridge shutdown) or is abandoned (caller gone).
Plain data structures, no I/O: results are handed back through a callback.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Final

__all__ = ["CapabilityRegistry", "PendingCall", "PendingCalls"]


class CapabilityRegistry:
    """Capabilities (name, version) offered by connected agents ("providers").

    :meth:`pick` rotates through the matching providers separately for each
    ``(name, version)`` asked, so load spreads evenly and a version-less ask
    does not disturb the rotation of a versioned one.
    """

    __slots__ = ("_by_provider", "_caps", "_rr")

    def __init__(self) -> None:
        # name -> version -> provider -> descriptor, all in registration order
        self._caps: dict[str, dict[str, dict[str, object]]] = {}
        # provider -> {(name, version): None}, in registration order
        self._by_provider: dict[str, dict[tuple[str, str], None]] = {}
        # name -> version asked ("" = any) -> round-robin counter
        self._rr: dict[str, dict[str, int]] = {}

    def __len__(self) -> int:
        """Number of (provider, name, version) registrations."""
        return sum(len(caps) for caps in self._by_provider.values())

    def add(self, provider: str, name: str, version: str, descriptor: object = None) -> None:
        """Register ``provider`` for ``name`` at ``version``; re-adding replaces the descriptor."""
        if not provider:
            raise ValueError("capability provider must not be empty")
        if not name:
            raise ValueError("capability name must not be empty")
        self._caps.setdefault(name, {}).setdefault(version, {})[provider] = descriptor
        self._by_provider.setdefault(provider, {})[(name, version)] = None

    def remove(self, provider: str, name: str, version: str) -> bool:
        """Unregister one capability of ``provider``; False if it was not registered."""
        caps = self._by_provider.get(provider)
        if caps is None or (name, version) not in caps:
            return False
        del caps[(name, version)]
        if not caps:
            del self._by_provider[provider]
        self._unlink(provider, name, version)
        return True

    def remove_provider(self, provider: str) -> None:
        """Unregister every capability of ``provider`` (it disconnected)."""
        caps = self._by_provider.pop(provider, None)
        if caps is None:
            return
        for name, version in caps:
            self._unlink(provider, name, version)

    def _unlink(self, provider: str, name: str, version: str) -> None:
        versions = self._caps[name]
        providers = versions[version]
        del providers[provider]
        if not providers:
            del versions[version]
            self._rr.get(name, {}).pop(version, None)
            if not versions:
                del self._caps[name]
                self._rr.pop(name, None)

    def providers(self, name: str, version: str = "") -> list[str]:
        """Providers of ``name`` at ``version`` ("" = any version), without duplicates."""
        versions = self._caps.get(name)
        if versions is None:
            return []
        if version:
            providers = versions.get(version)
            return list(providers) if providers is not None else []
        if len(versions) == 1:
            return list(next(iter(versions.values())))
        seen: dict[str, None] = {}
        for providers in versions.values():
            seen.update(dict.fromkeys(providers))
        return list(seen)

    def pick(self, name: str, version: str) -> str | None:
        """One provider of ``name`` at ``version`` ("" = any), round-robin; None if none."""
        candidates = self.providers(name, version)
        if not candidates:
            return None
        counters = self._rr.setdefault(name, {})
        turn = counters.get(version, 0)
        counters[version] = turn + 1
        return candidates[turn % len(candidates)]

    def describe(self) -> list[tuple[str, str, str, object]]:
        """Every registration as ``(name, version, provider, descriptor)``."""
        return [
            (name, version, provider, descriptor)
            for name, versions in self._caps.items()
            for version, providers in versions.items()
            for provider, descriptor in providers.items()
        ]


class PendingCall:
    """One capability call routed to ``provider`` and not finished yet.

    ``deadline_ms`` is absolute (ms since the epoch, 0 = none). When the call
    ends, ``result`` is set, ``done`` becomes True and ``on_done(result)`` runs
    exactly once; what a result looks like is up to the transport.
    """

    __slots__ = ("caller", "deadline_ms", "done", "id", "on_done", "provider", "result")

    def __init__(
        self,
        call_id: str,
        caller: object,
        provider: str,
        deadline_ms: int,
        on_done: Callable[[object], None],
    ) -> None:
        self.id = call_id
        self.caller = caller
        self.provider = provider
        self.deadline_ms = deadline_ms
        self.on_done = on_done
        self.result: object | None = None
        self.done = False

    def __repr__(self) -> str:
        return (
            f"PendingCall({self.id!r}, caller={self.caller!r}, provider={self.provider!r},"
            f" deadline_ms={self.deadline_ms}, done={self.done})"
        )


_COMPACT_SLACK: Final = 64


class PendingCalls:
    """The table of calls in flight, indexed by id, provider, caller and deadline.

    Every call leaves the table exactly once: finished by its provider, failed
    (:meth:`fail_provider`, :meth:`expire`, :meth:`fail_all`) - each of which
    runs ``on_done`` once - or silently dropped by :meth:`fail_caller`.

    ``on_done`` callbacks run after the calls left the table; if some raise,
    the others still run and the exception (an ``ExceptionGroup`` if several)
    is raised at the end.
    """

    __slots__ = ("_by_caller", "_by_provider", "_calls", "_deadlines", "_seq")

    def __init__(self) -> None:
        self._calls: dict[str, PendingCall] = {}
        self._by_provider: dict[str, dict[str, PendingCall]] = {}
        self._by_caller: dict[object, dict[str, PendingCall]] = {}
        # (deadline_ms, seq, call); entries of calls that already left are
        # skipped lazily and compacted away when they pile up
        self._deadlines: list[tuple[int, int, PendingCall]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._calls

    def get(self, call_id: str) -> PendingCall | None:
        """The live call with this id, or None."""
        return self._calls.get(call_id)

    def start(
        self,
        call_id: str,
        caller: object,
        provider: str,
        deadline_ms: int,
        on_done: Callable[[object], None],
    ) -> PendingCall:
        """Track a new call; raises ``ValueError`` if ``call_id`` is already live."""
        if call_id in self._calls:
            raise ValueError(f"call id {call_id!r} is already in flight")
        call = PendingCall(call_id, caller, provider, deadline_ms, on_done)
        self._calls[call_id] = call
        self._by_provider.setdefault(provider, {})[call_id] = call
        self._by_caller.setdefault(caller, {})[call_id] = call
        if deadline_ms:
            self._seq += 1
            heapq.heappush(self._deadlines, (deadline_ms, self._seq, call))
        return call

    def finish(self, call_id: str, provider: str, result: object) -> bool:
        """Complete a call with the provider's ``result``.

        False (and nothing happens) if the call is unknown, already done, or was
        routed to another provider.
        """
        call = self._calls.get(call_id)
        if call is None or call.provider != provider:
            return False
        self._detach(call)
        call.result = result
        call.done = True
        call.on_done(result)
        return True

    def fail_provider(self, provider: str, make_result: Callable[[PendingCall], object]) -> int:
        """The provider disconnected: end each of its calls with ``make_result(call)``."""
        calls = self._by_provider.get(provider)
        if not calls:
            return 0
        return self._fail(list(calls.values()), make_result)

    def fail_caller(self, caller: object) -> int:
        """The caller went away: forget its calls without running any callback."""
        calls = self._by_caller.get(caller)
        if not calls:
            return 0
        dropped = list(calls.values())
        for call in dropped:
            self._detach(call)
        return len(dropped)

    def expire(self, now_ms: int, make_result: Callable[[PendingCall], object]) -> int:
        """End every call whose deadline is at or before ``now_ms`` with ``make_result(call)``."""
        heap = self._deadlines
        due: list[PendingCall] = []
        while heap and heap[0][0] <= now_ms:
            call = heapq.heappop(heap)[2]
            if self._calls.get(call.id) is call:
                due.append(call)
        if not due:
            return 0
        return self._fail(due, make_result)

    def next_deadline_ms(self) -> int | None:
        """The earliest deadline of a live call, or None if no live call has one."""
        heap = self._deadlines
        calls = self._calls
        while heap:
            deadline, _, call = heap[0]
            if calls.get(call.id) is call:
                return deadline
            heapq.heappop(heap)
        return None

    def fail_all(self, make_result: Callable[[PendingCall], object]) -> int:
        """Bridge shutdown: end every live call with ``make_result(call)``."""
        if not self._calls:
            return 0
        return self._fail(list(self._calls.values()), make_result)

    # -- internals ---------------------------------------------------------

    def _detach(self, call: PendingCall) -> None:
        call_id = call.id
        del self._calls[call_id]
        by_provider = self._by_provider[call.provider]
        del by_provider[call_id]
        if not by_provider:
            del self._by_provider[call.provider]
        by_caller = self._by_caller[call.caller]
        del by_caller[call_id]
        if not by_caller:
            del self._by_caller[call.caller]
        heap = self._deadlines
        if len(heap) > 2 * len(self._calls) + _COMPACT_SLACK:
            calls = self._calls
            heap[:] = [entry for entry in heap if calls.get(entry[2].id) is entry[2]]
            heapq.heapify(heap)

    def _fail(self, calls: list[PendingCall], make_result: Callable[[PendingCall], object]) -> int:
        for call in calls:
            self._detach(call)
        errors: list[Exception] = []
        for call in calls:
            try:
                result = make_result(call)
                call.result = result
                call.done = True
                call.on_done(result)
            except Exception as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ExceptionGroup("on_done callbacks raised", errors)
        return len(calls)
