"""Topic names, subscription patterns and the index that matches them.

A topic is a dot-separated list of non-empty segments (``orders.eu.created``).
A pattern may also use two wildcards, each as a whole segment:

* ``*`` matches exactly one segment (``orders.*.created``);
* ``>`` matches one or more trailing segments and may only be last (``orders.>``).

Nothing here does I/O: the index is a plain in-memory structure the transports
call into, and :meth:`SubscriptionIndex.match` is on the path of every publish.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from typing import Final, Generic, TypeVar

from loom.errors import ConfigurationError

__all__ = [
    "MAX_TOPIC_LENGTH",
    "SubscriptionIndex",
    "is_pattern",
    "validate_pattern",
    "validate_topic",
]

MAX_TOPIC_LENGTH: Final = 256
"""Longest topic or pattern accepted, in characters."""

DEFAULT_MATCH_CACHE_SIZE: Final = 10_000

_STAR: Final = "*"
_TAIL: Final = ">"

# One literal segment: anything but the separator, the wildcard characters,
# whitespace and control characters.
_SEGMENT = r"[^.*>\s\x00-\x1f\x7f-\x9f]+"
_TOPIC_RE: Final = re.compile(rf"{_SEGMENT}(?:\.{_SEGMENT})*")
_PATTERN_RE: Final = re.compile(rf"(?:(?:\*|{_SEGMENT})\.)*(?:\*|>|{_SEGMENT})")
_BAD_CHAR_RE: Final = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


_VALID_TOPICS_REMEMBERED: Final = 10_000
_valid_topics: set[str] = set()  # topics already found valid: publish checks are cheap


def validate_topic(topic: str) -> None:
    """Check a topic an event is published to; raise :class:`ConfigurationError` if invalid.

    A publish topic may not contain wildcard segments.
    """
    if type(topic) is str and topic in _valid_topics:
        return
    if (
        isinstance(topic, str)
        and len(topic) <= MAX_TOPIC_LENGTH
        and _TOPIC_RE.fullmatch(topic) is not None
    ):
        if len(_valid_topics) >= _VALID_TOPICS_REMEMBERED:
            _valid_topics.clear()
        _valid_topics.add(topic)
        return
    raise ConfigurationError(_explain(topic, "topic", wildcards=False))


def validate_pattern(pattern: str) -> None:
    """Check a subscription pattern; raise :class:`ConfigurationError` if invalid."""
    if (
        isinstance(pattern, str)
        and len(pattern) <= MAX_TOPIC_LENGTH
        and _PATTERN_RE.fullmatch(pattern) is not None
    ):
        return
    raise ConfigurationError(_explain(pattern, "pattern", wildcards=True))


def is_pattern(pattern: str) -> bool:
    """True if ``pattern`` has a wildcard segment (``*`` or ``>``), False for a plain topic."""
    if _STAR not in pattern and _TAIL not in pattern:
        return False
    return any(seg == _STAR or seg == _TAIL for seg in pattern.split("."))


def _explain(value: object, kind: str, *, wildcards: bool) -> str:
    """Say, in one sentence, why ``value`` is not a valid topic (or pattern)."""
    if not isinstance(value, str):
        return f"{kind} must be a str, not {type(value).__name__}"
    if not value:
        return f"{kind} must not be empty"
    if len(value) > MAX_TOPIC_LENGTH:
        return (
            f"{kind} {value[:32]!r}... is {len(value)} characters long;"
            f" the limit is {MAX_TOPIC_LENGTH}"
        )
    bad = _BAD_CHAR_RE.search(value)
    if bad is not None:
        return (
            f"{kind} {value!r} contains whitespace or a control character"
            f" ({bad.group()!r} at index {bad.start()})"
        )
    segments = value.split(".")
    for i, seg in enumerate(segments):
        if not seg:
            return (
                f"{kind} {value!r} has an empty segment at position {i}"
                " (leading, trailing or doubled '.')"
            )
        if seg in (_STAR, _TAIL):
            if not wildcards:
                return (
                    f"{kind} {value!r} contains the wildcard segment {seg!r};"
                    " wildcards are only allowed in subscription patterns"
                )
            if seg == _TAIL and i != len(segments) - 1:
                return f"{kind} {value!r}: '>' may only be the last segment"
        elif _STAR in seg or _TAIL in seg:
            return (
                f"{kind} {value!r}: segment {seg!r} mixes a wildcard character with"
                " other characters; '*' and '>' must be whole segments"
            )
    return f"{kind} {value!r} is invalid"  # pragma: no cover - all cases handled above


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Node(Generic[K, V]):
    """One level of the pattern trie; subscribers map key -> (sequence number, value)."""

    __slots__ = ("children", "here", "star", "tail")

    def __init__(self) -> None:
        self.children: dict[str, _Node[K, V]] = {}
        self.star: _Node[K, V] | None = None
        # patterns that end exactly at this node
        self.here: dict[K, tuple[int, V]] = {}
        # patterns that end with '>' right after this node
        self.tail: dict[K, tuple[int, V]] = {}

    def is_empty(self) -> bool:
        return not (self.children or self.star or self.here or self.tail)


class SubscriptionIndex(Generic[K, V]):
    """Which subscriber keys want an event published to a given topic.

    Each subscription is ``(pattern, key) -> value``; the value is opaque to the
    index (a QoS level, a queue, ...). Exact topics live in a dict and wildcard
    patterns in a segment trie; :meth:`match` results are cached per topic and
    the cache is cleared on every change, so the steady-state cost of a publish
    is one dict lookup.
    """

    __slots__ = (
        "_by_key",
        "_cache",
        "_cache_size",
        "_count",
        "_exact",
        "_npatterns",
        "_root",
        "_seq",
    )

    def __init__(self, cache_size: int = DEFAULT_MATCH_CACHE_SIZE) -> None:
        self._exact: dict[str, dict[K, V]] = {}
        self._root: _Node[K, V] = _Node()
        self._npatterns = 0
        # key -> {pattern: is_wildcard}, in subscription order
        self._by_key: dict[K, dict[str, bool]] = {}
        self._cache: dict[str, tuple[tuple[K, V], ...]] = {}
        self._cache_size = max(1, cache_size)
        self._count = 0
        self._seq = 0

    def __len__(self) -> int:
        return self._count

    def add(self, pattern: str, key: K, value: V) -> bool:
        """Subscribe ``key`` to ``pattern``; False (and nothing changes) if already subscribed.

        Raises :class:`ConfigurationError` for an invalid pattern.
        """
        validate_pattern(pattern)
        patterns = self._by_key.get(key)
        if patterns is not None and pattern in patterns:
            return False
        wildcard = is_pattern(pattern)
        if wildcard:
            self._seq += 1
            node = self._root
            segments = pattern.split(".")
            last = segments[-1]
            if last == _TAIL:
                segments.pop()
            for seg in segments:
                node = self._child(node, seg)
            target = node.tail if last == _TAIL else node.here
            target[key] = (self._seq, value)
            self._npatterns += 1
        else:
            self._exact.setdefault(pattern, {})[key] = value
        if patterns is None:
            patterns = self._by_key[key] = {}
        patterns[pattern] = wildcard
        self._count += 1
        self._cache.clear()
        return True

    def remove(self, pattern: str, key: K) -> bool:
        """Unsubscribe ``key`` from ``pattern``; False if it was not subscribed."""
        patterns = self._by_key.get(key)
        if patterns is None or pattern not in patterns:
            return False
        wildcard = patterns.pop(pattern)
        if not patterns:
            del self._by_key[key]
        self._drop(pattern, key, wildcard)
        self._cache.clear()
        return True

    def remove_key(self, key: K) -> list[str]:
        """Remove every subscription of ``key``; return their patterns (subscription order)."""
        patterns = self._by_key.pop(key, None)
        if patterns is None:
            return []
        for pattern, wildcard in patterns.items():
            self._drop(pattern, key, wildcard)
        self._cache.clear()
        return list(patterns)

    def patterns_of(self, key: K) -> list[str]:
        """Patterns ``key`` is subscribed to, in subscription order."""
        patterns = self._by_key.get(key)
        return list(patterns) if patterns is not None else []

    def match(self, topic: str) -> Sequence[tuple[K, V]]:
        """Every key with a subscription matching ``topic``, each key once, as ``(key, value)``.

        When several subscriptions of one key match, the exact one wins, else the
        pattern the key subscribed first. Order: keys with an exact subscription
        (in subscription order), then the others by when their chosen pattern was
        subscribed. ``topic`` is not validated here (the caller did it).
        """
        cache = self._cache
        hit = cache.get(topic)
        if hit is not None:
            return hit
        result = self._compute(topic)
        if len(cache) >= self._cache_size:
            cache.clear()
        cache[topic] = result
        return result

    # -- internals ---------------------------------------------------------

    @staticmethod
    def _child(node: _Node[K, V], seg: str) -> _Node[K, V]:
        if seg == _STAR:
            if node.star is None:
                node.star = _Node()
            return node.star
        child = node.children.get(seg)
        if child is None:
            child = node.children[seg] = _Node()
        return child

    def _drop(self, pattern: str, key: K, wildcard: bool) -> None:
        self._count -= 1
        if not wildcard:
            subs = self._exact[pattern]
            del subs[key]
            if not subs:
                del self._exact[pattern]
            return
        self._npatterns -= 1
        segments = pattern.split(".")
        last = segments[-1]
        if last == _TAIL:
            segments.pop()
        path: list[tuple[_Node[K, V], str]] = []
        node = self._root
        for seg in segments:
            nxt = node.star if seg == _STAR else node.children.get(seg)
            assert nxt is not None, "pattern trie out of sync with the key index"
            path.append((node, seg))
            node = nxt
        del (node.tail if last == _TAIL else node.here)[key]
        # prune the branch bottom-up while it is empty
        while path and node.is_empty():
            parent, seg = path.pop()
            if seg == _STAR:
                parent.star = None
            else:
                del parent.children[seg]
            node = parent

    def _compute(self, topic: str) -> tuple[tuple[K, V], ...]:
        exact = self._exact.get(topic)
        if not self._npatterns:
            return tuple(exact.items()) if exact else ()
        found: list[tuple[int, K, V]] = []
        self._walk(self._root, topic.split("."), 0, found)
        if not found:
            return tuple(exact.items()) if exact else ()
        best: dict[K, tuple[int, V]] = {}
        for seq, key, value in found:
            if exact is not None and key in exact:
                continue
            current = best.get(key)
            if current is None or seq < current[0]:
                best[key] = (seq, value)
        result: list[tuple[K, V]] = list(exact.items()) if exact else []
        result.extend((key, sv[1]) for key, sv in sorted(best.items(), key=lambda item: item[1][0]))
        return tuple(result)

    def _walk(
        self, node: _Node[K, V], segments: list[str], i: int, found: list[tuple[int, K, V]]
    ) -> None:
        if i == len(segments):
            for key, (seq, value) in node.here.items():
                found.append((seq, key, value))
            return
        # '>' after this node swallows the (one or more) remaining segments
        for key, (seq, value) in node.tail.items():
            found.append((seq, key, value))
        child = node.children.get(segments[i])
        if child is not None:
            self._walk(child, segments, i + 1, found)
        if node.star is not None:
            self._walk(node.star, segments, i + 1, found)
