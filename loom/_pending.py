"""Correlation tables: who is waiting for which answer from the bridge.

A request waits for its reply, a tool call for its ``Result``, a subscription change
for its ``Subscribed``. Each waiter sits in a :class:`PendingTable` under the id the
answer will carry. The table is plain Python: the reader resolves entries as answers
arrive, the connection loop fails the ones whose frame went out on a connection that
dropped, and the waiting caller always removes its entry when it stops waiting
(answer, timeout or cancellation), so nothing is left behind.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from enum import Enum
from typing import Final, Generic, TypeVar

import anyio

__all__ = ["Outcome", "PendingTable", "Waiter"]

T = TypeVar("T")

_REMEMBER_FINISHED: Final = 4096


class Outcome(Enum):
    """What became of an answer offered to a table."""

    RESOLVED = "resolved"
    """A waiter was waiting for it and got it."""
    LATE = "late"
    """Its waiter already finished (answered, timed out, failed or gave up)."""
    UNKNOWN = "unknown"
    """No waiter of this table ever had that id (as far as it remembers)."""


class Waiter(Generic[T]):
    """One caller waiting for one answer.

    ``sent`` is set once the frame that asks for the answer has been handed to a
    session: only then can a dropped connection have lost it.
    """

    __slots__ = ("_error", "_event", "_value", "done", "key", "sent")

    def __init__(self, key: str) -> None:
        self.key = key
        self.sent = False
        self.done = False
        self._event = anyio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        return f"Waiter({self.key!r}, sent={self.sent}, done={self.done})"

    def resolve(self, value: T) -> bool:
        if self.done:
            return False
        self.done = True
        self._value = value
        self._event.set()
        return True

    def fail(self, error: BaseException) -> bool:
        if self.done:
            return False
        self.done = True
        self._error = error
        self._event.set()
        return True

    async def wait(self) -> T:
        """The answer; raises the error the waiter was failed with."""
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class PendingTable(Generic[T]):
    """Waiters by id, plus a bounded memory of recently finished ids (to tell a late
    duplicate answer from a stranger's)."""

    __slots__ = ("_finished", "_remember", "_waiters")

    def __init__(self, remember: int = _REMEMBER_FINISHED) -> None:
        self._waiters: dict[str, Waiter[T]] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._remember = remember

    def __len__(self) -> int:
        return len(self._waiters)

    def __contains__(self, key: object) -> bool:
        return key in self._waiters

    def add(self, key: str) -> Waiter[T]:
        """Register a waiter for ``key`` (ids are unique: adding one twice is a bug)."""
        assert key not in self._waiters, f"duplicate pending id {key!r}"
        waiter: Waiter[T] = Waiter(key)
        self._waiters[key] = waiter
        return waiter

    def resolve(self, key: str, value: T) -> Outcome:
        """Hand ``value`` to the waiter of ``key``; the first answer wins."""
        waiter = self._waiters.pop(key, None)
        if waiter is None:
            return Outcome.LATE if key in self._finished else Outcome.UNKNOWN
        self._remember_finished(key)
        return Outcome.RESOLVED if waiter.resolve(value) else Outcome.LATE

    def fail(self, key: str, error: BaseException) -> bool:
        """Fail the waiter of ``key``; False if there is none."""
        waiter = self._waiters.pop(key, None)
        if waiter is None:
            return False
        self._remember_finished(key)
        return waiter.fail(error)

    def discard(self, key: str) -> None:
        """The caller stopped waiting (answered, timed out, cancelled): forget it."""
        waiter = self._waiters.pop(key, None)
        if waiter is not None:
            waiter.done = True
            self._remember_finished(key)

    def fail_sent(self, error: Callable[[], BaseException]) -> int:
        """Fail every waiter whose frame went out (the connection it used dropped),
        each with a fresh ``error()``.

        Waiters whose frame is still queued stay: it goes out on the next connection.
        """
        lost = [key for key, waiter in self._waiters.items() if waiter.sent]
        for key in lost:
            self.fail(key, error())
        return len(lost)

    def fail_all(self, error: Callable[[], BaseException]) -> int:
        """Fail every waiter, each with a fresh ``error()``."""
        keys = list(self._waiters)
        for key in keys:
            self.fail(key, error())
        return len(keys)

    def _remember_finished(self, key: str) -> None:
        finished = self._finished
        finished[key] = None
        if len(finished) > self._remember:
            finished.popitem(last=False)
