"""What an agent wants to receive: its subscriptions and the threads it joined.

The agent keeps this desired state itself so that every new connection can restore
it: subscriptions travel in the :class:`~loom._session.Registration` (each connect
registers again), joined threads in one ``Subscribe`` frame sent first on the new
stream. Changes are recorded before they are sent and undone if the bridge refuses
them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from loom._frames import Subscribe
from loom._session import CapabilityInfo, Registration
from loom.envelope import new_id

__all__ = ["DEFAULT_QOS", "SubscriptionState"]

DEFAULT_QOS = 1
"""Batched: lossless, in order; what registration-time subscriptions get."""


class SubscriptionState:
    """Patterns (with their QoS) and thread ids the agent wants."""

    __slots__ = ("threads", "topics")

    def __init__(self, topics: Iterable[str] = (), qos: Mapping[str, int] | None = None) -> None:
        self.topics: dict[str, int] = dict.fromkeys(topics, DEFAULT_QOS)
        if qos:
            self.topics.update(qos)
        self.threads: set[str] = set()

    def registration(
        self,
        agent_id: str,
        capabilities: list[CapabilityInfo],
        metadata: Mapping[str, str],
    ) -> Registration:
        return Registration(
            agent_id=agent_id,
            topics=list(self.topics),
            capabilities=list(capabilities),
            metadata=dict(metadata),
            subscription_qos={p: q for p, q in self.topics.items() if q != DEFAULT_QOS},
        )

    def restore_frame(self) -> Subscribe | None:
        """The frame that rejoins every thread on a new connection (None: no threads)."""
        if not self.threads:
            return None
        return Subscribe(new_id(), join=sorted(self.threads))

    def apply(self, change: Subscribe) -> Callable[[], None]:
        """Record ``change``; returns the function that undoes it."""
        topics, threads = self.topics, self.threads
        before = {p: topics.get(p) for p in (*change.remove, *change.add)}
        joined = [t for t in change.join if t not in threads]
        left = [t for t in change.leave if t in threads]
        for pattern in change.remove:
            topics.pop(pattern, None)
        for pattern in change.add:
            topics[pattern] = change.qos
        threads.difference_update(change.leave)
        threads.update(change.join)

        def undo() -> None:
            for pattern, qos in before.items():
                if qos is None:
                    topics.pop(pattern, None)
                else:
                    topics[pattern] = qos
            threads.difference_update(joined)
            threads.update(left)

        return undo
