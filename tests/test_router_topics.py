"""Topic/pattern validation and the subscription index of the bridge router."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loom.bridge._topics import (
    MAX_TOPIC_LENGTH,
    SubscriptionIndex,
    is_pattern,
    validate_pattern,
    validate_topic,
)
from loom.errors import ConfigurationError

# -- validation --------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    ["a", "orders.created", "a.b.c.d", "x-y_z.1", "ünïcode.ok", "a" * MAX_TOPIC_LENGTH],
)
def test_valid_topics(topic: str) -> None:
    validate_topic(topic)
    validate_pattern(topic)
    assert not is_pattern(topic)


@pytest.mark.parametrize("pattern", ["*", ">", "a.*", "*.b", "a.>", "*.*.>", "a.*.c", "a.*.>"])
def test_valid_patterns(pattern: str) -> None:
    validate_pattern(pattern)
    assert is_pattern(pattern)


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("", "must not be empty"),
        ("a" * (MAX_TOPIC_LENGTH + 1), f"the limit is {MAX_TOPIC_LENGTH}"),
        ("a b", "whitespace"),
        ("a.b\n", "whitespace"),
        ("a\tb", "whitespace"),
        ("a\x00b", "control character"),
        (".a", "empty segment at position 0"),
        ("a.", "empty segment at position 1"),
        ("a..b", "empty segment at position 1"),
        (".", "empty segment"),
        ("a.*", "wildcards are only allowed in subscription patterns"),
        (">", "wildcards are only allowed in subscription patterns"),
        ("a.>", "wildcard segment '>'"),
        ("a*", "must be whole segments"),
        ("a.b>", "must be whole segments"),
    ],
)
def test_invalid_topics(topic: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^topic") as info:
        validate_topic(topic)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "must not be empty"),
        ("a.>.b", "'>' may only be the last segment"),
        (">.>", "'>' may only be the last segment"),
        ("a.**", "must be whole segments"),
        ("a.b*", "must be whole segments"),
        ("a.>>", "must be whole segments"),
        ("a..*", "empty segment at position 1"),
        ("a. *", "whitespace"),
        ("*" * (MAX_TOPIC_LENGTH + 1), "characters long"),
    ],
)
def test_invalid_patterns(pattern: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^pattern") as info:
        validate_pattern(pattern)
    assert message in str(info.value)


def test_non_str_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="must be a str, not bytes"):
        validate_topic(b"a.b")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="must be a str, not NoneType"):
        validate_pattern(None)  # type: ignore[arg-type]


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        validate_topic("a b")


def test_is_pattern_only_whole_segments() -> None:
    assert is_pattern("a.*.b")
    assert is_pattern("a.>")
    assert not is_pattern("a.b")
    assert not is_pattern("a*b")  # not a wildcard (and not valid either)


# -- index basics -------------------------------------------------------------


def test_add_remove_len() -> None:
    idx: SubscriptionIndex[str, int] = SubscriptionIndex()
    assert len(idx) == 0
    assert idx.add("a.b", "k1", 1)
    assert not idx.add("a.b", "k1", 99)  # already there: unchanged
    assert idx.add("a.*", "k1", 2)
    assert idx.add("a.b", "k2", 3)
    assert len(idx) == 3
    assert idx.match("a.b") == (("k1", 1), ("k2", 3))
    assert idx.remove("a.b", "k1")
    assert not idx.remove("a.b", "k1")
    assert not idx.remove("nope", "k1")
    assert not idx.remove("a.b", "unknown")
    assert len(idx) == 2
    assert idx.match("a.b") == (("k2", 3), ("k1", 2))
    assert idx.patterns_of("k1") == ["a.*"]
    assert idx.patterns_of("nobody") == []


def test_add_validates_pattern() -> None:
    idx: SubscriptionIndex[str, None] = SubscriptionIndex()
    with pytest.raises(ConfigurationError, match="'>' may only be the last segment"):
        idx.add("a.>.b", "k", None)
    assert len(idx) == 0


def test_wildcards() -> None:
    idx: SubscriptionIndex[str, None] = SubscriptionIndex()
    idx.add("a.*", "star", None)
    idx.add("a.>", "tail", None)
    idx.add(">", "all", None)
    idx.add("*.*.c", "two_stars", None)

    def keys(topic: str) -> set[str]:
        return {k for k, _ in idx.match(topic)}

    assert keys("a") == {"all"}  # '>' needs at least one segment after 'a'
    assert keys("a.b") == {"star", "tail", "all"}
    assert keys("a.b.c") == {"tail", "all", "two_stars"}
    assert keys("x.y.c") == {"all", "two_stars"}
    assert keys("x.y.c.d") == {"all"}


def test_each_key_once_exact_wins_then_first_subscribed() -> None:
    idx: SubscriptionIndex[str, str] = SubscriptionIndex()
    idx.add("a.>", "k", "tail")
    idx.add("a.*", "k", "star")
    assert idx.match("a.b") == (("k", "tail"),)  # first subscribed pattern
    idx.add("a.b", "k", "exact")
    assert idx.match("a.b") == (("k", "exact"),)  # exact wins
    idx.remove("a.>", "k")
    assert idx.match("a.c") == (("k", "star"),)
    idx.add("a.>", "k", "tail2")  # re-subscribed: now the newest
    assert idx.match("a.c") == (("k", "star"),)


def test_match_order_is_stable() -> None:
    idx: SubscriptionIndex[str, None] = SubscriptionIndex()
    idx.add("a.>", "p1", None)
    idx.add("a.b", "e1", None)
    idx.add("*.b", "p2", None)
    idx.add("a.b", "e2", None)
    expected = (("e1", None), ("e2", None), ("p1", None), ("p2", None))
    assert idx.match("a.b") == expected
    idx._cache.clear()
    assert idx.match("a.b") == expected


def test_remove_key() -> None:
    idx: SubscriptionIndex[str, None] = SubscriptionIndex()
    for p in ["a.b", "a.*", "a.>", "x"]:
        idx.add(p, "k", None)
    idx.add("a.*", "other", None)
    assert idx.remove_key("k") == ["a.b", "a.*", "a.>", "x"]
    assert idx.remove_key("k") == []
    assert len(idx) == 1
    assert idx.match("a.b") == (("other", None),)
    assert idx.match("x") == ()
    idx.remove_key("other")
    # the trie is pruned back to an empty root
    assert idx._root.is_empty()
    assert not idx._exact


def test_cache_is_invalidated_and_bounded() -> None:
    idx: SubscriptionIndex[str, None] = SubscriptionIndex(cache_size=3)
    assert idx.match("a.b") == ()
    idx.add("a.*", "k", None)
    assert idx.match("a.b") == (("k", None),)
    for i in range(10):
        idx.match(f"t.{i}")
        assert len(idx._cache) <= 3
    idx.remove("a.*", "k")
    assert idx.match("a.b") == ()


def test_match_returns_same_object_from_cache() -> None:
    idx: SubscriptionIndex[int, None] = SubscriptionIndex()
    idx.add("a.*", 1, None)
    first = idx.match("a.b")
    assert idx.match("a.b") is first


# -- property tests against a reference --------------------------------------

SEGMENTS = ["a", "b", "c"]
topics = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4).map(".".join)
patterns = st.tuples(
    st.lists(st.sampled_from([*SEGMENTS, "*"]), min_size=1, max_size=4),
    st.booleans(),
).map(lambda t: ".".join(t[0] + [">"] if t[1] else t[0]))
keys = st.integers(min_value=0, max_value=3)


def ref_matches(pattern: str, topic: str) -> bool:
    p = pattern.split(".")
    t = topic.split(".")
    for i, seg in enumerate(p):
        if seg == ">":
            return len(t) > i
        if i >= len(t) or (seg != "*" and seg != t[i]):
            return False
    return len(p) == len(t)


class RefIndex:
    """Dumb model: a list of subscriptions in subscription order."""

    def __init__(self) -> None:
        self.subs: list[tuple[str, int, int]] = []  # (pattern, key, value)

    def add(self, pattern: str, key: int, value: int) -> bool:
        if any(p == pattern and k == key for p, k, _ in self.subs):
            return False
        self.subs.append((pattern, key, value))
        return True

    def remove(self, pattern: str, key: int) -> bool:
        for i, (p, k, _) in enumerate(self.subs):
            if p == pattern and k == key:
                del self.subs[i]
                return True
        return False

    def remove_key(self, key: int) -> list[str]:
        removed = [p for p, k, _ in self.subs if k == key]
        self.subs = [s for s in self.subs if s[1] != key]
        return removed

    def match(self, topic: str) -> list[tuple[int, int]]:
        exact = [(k, v) for p, k, v in self.subs if p == topic]
        exact_keys = {k for k, _ in exact}
        chosen: list[tuple[int, int]] = []
        seen: set[int] = set()
        for p, k, v in self.subs:
            if k in exact_keys or k in seen or not ref_matches(p, topic):
                continue
            seen.add(k)
            chosen.append((k, v))
        return exact + chosen


@given(pattern=patterns, topic=topics)
def test_single_pattern_matches_like_reference(pattern: str, topic: str) -> None:
    idx: SubscriptionIndex[str, None] = SubscriptionIndex()
    idx.add(pattern, "k", None)
    assert bool(idx.match(topic)) == ref_matches(pattern, topic)


@given(
    subs=st.lists(st.one_of(patterns, topics), min_size=1, max_size=8, unique=True), topic=topics
)
def test_one_key_many_patterns_picks_exact_else_first(subs: list[str], topic: str) -> None:
    idx: SubscriptionIndex[str, str] = SubscriptionIndex()
    for p in subs:
        idx.add(p, "k", p)
    matching = [p for p in subs if ref_matches(p, topic)]
    if not matching:
        assert idx.match(topic) == ()
    else:
        assert idx.match(topic) == (("k", topic if topic in subs else matching[0]),)


add_op = st.tuples(st.just("add"), st.one_of(patterns, topics), keys)
remove_op = st.tuples(st.just("remove"), st.one_of(patterns, topics), keys)
remove_key_op = st.tuples(st.just("remove_key"), st.just(""), keys)
# mostly adds, so keys collect several overlapping subscriptions
ops = st.lists(st.one_of(add_op, add_op, add_op, remove_op, remove_key_op), min_size=5, max_size=40)


@settings(max_examples=150)
@given(ops=ops, probes=st.lists(topics, min_size=1, max_size=6))
def test_index_matches_reference_model(ops: list[tuple[str, str, int]], probes: list[str]) -> None:
    idx: SubscriptionIndex[int, int] = SubscriptionIndex()
    ref = RefIndex()
    for n, (op, pattern, key) in enumerate(ops):
        if op == "add":
            assert idx.add(pattern, key, n) == ref.add(pattern, key, n)
        elif op == "remove":
            assert idx.remove(pattern, key) == ref.remove(pattern, key)
        else:
            assert idx.remove_key(key) == ref.remove_key(key)
        assert len(idx) == len(ref.subs)
        for topic in probes:
            assert list(idx.match(topic)) == ref.match(topic), topic
    for key in range(4):
        assert idx.patterns_of(key) == [p for p, k, _ in ref.subs if k == key]
        idx.remove_key(key)
    assert len(idx) == 0
    assert idx._root.is_empty()
    assert not idx._exact
    assert idx._npatterns == 0
