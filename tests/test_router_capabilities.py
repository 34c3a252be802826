"""Capability registry and pending-call table of the bridge router."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loom.bridge._capabilities import CapabilityRegistry, PendingCall, PendingCalls

# -- registry ------------------------------------------------------------------


def test_add_providers_describe() -> None:
    reg = CapabilityRegistry()
    reg.add("p1", "search", "1", {"schema": 1})
    reg.add("p2", "search", "1")
    reg.add("p2", "search", "2", "v2")
    reg.add("p3", "summarize", "")
    assert len(reg) == 4
    assert reg.providers("search", "1") == ["p1", "p2"]
    assert reg.providers("search", "2") == ["p2"]
    assert reg.providers("search") == ["p1", "p2"]  # any version, no duplicates
    assert reg.providers("search", "3") == []
    assert reg.providers("nope") == []
    assert reg.providers("summarize") == ["p3"]
    assert reg.describe() == [
        ("search", "1", "p1", {"schema": 1}),
        ("search", "1", "p2", None),
        ("search", "2", "p2", "v2"),
        ("summarize", "", "p3", None),
    ]


def test_re_add_replaces_descriptor() -> None:
    reg = CapabilityRegistry()
    reg.add("p", "c", "1", "old")
    reg.add("p", "c", "1", "new")
    assert reg.describe() == [("c", "1", "p", "new")]
    assert len(reg) == 1


def test_add_rejects_empty_names() -> None:
    reg = CapabilityRegistry()
    with pytest.raises(ValueError, match="provider must not be empty"):
        reg.add("", "c", "1")
    with pytest.raises(ValueError, match="name must not be empty"):
        reg.add("p", "", "1")


def test_remove_and_remove_provider() -> None:
    reg = CapabilityRegistry()
    reg.add("p1", "a", "1")
    reg.add("p1", "b", "1")
    reg.add("p2", "a", "1")
    assert reg.pick("a", "1") == "p1"
    reg.remove_provider("p1")
    reg.remove_provider("p1")  # idempotent
    reg.remove_provider("never")
    assert reg.providers("a") == ["p2"]
    assert reg.providers("b") == []
    assert reg.pick("b", "") is None
    assert reg.remove("p2", "a", "1")
    assert not reg.remove("p2", "a", "1")
    assert not reg.remove("p2", "zzz", "1")
    assert len(reg) == 0
    assert reg.describe() == []
    # everything is pruned, including round-robin counters
    assert reg._caps == {} and reg._by_provider == {} and reg._rr == {}


def test_pick_round_robin_per_name_and_version() -> None:
    reg = CapabilityRegistry()
    for p in ["p1", "p2", "p3"]:
        reg.add(p, "c", "1")
    reg.add("p4", "c", "2")
    assert [reg.pick("c", "1") for _ in range(6)] == ["p1", "p2", "p3"] * 2
    # asking for any version rotates separately, over all four
    assert [reg.pick("c", "") for _ in range(4)] == ["p1", "p2", "p3", "p4"]
    assert reg.pick("c", "1") == "p1"  # undisturbed
    assert reg.pick("c", "2") == "p4"
    assert reg.pick("c", "9") is None
    assert reg.pick("zzz", "") is None


@settings(max_examples=100)
@given(
    n_providers=st.integers(1, 6),
    rounds=st.integers(1, 5),
    versions=st.lists(st.sampled_from(["1", "2"]), min_size=6, max_size=6),
    ask=st.sampled_from(["", "1", "2"]),
)
def test_round_robin_is_fair(n_providers: int, rounds: int, versions: list[str], ask: str) -> None:
    reg = CapabilityRegistry()
    for i in range(n_providers):
        reg.add(f"p{i}", "cap", versions[i])
    candidates = reg.providers("cap", ask)
    picks = [reg.pick("cap", ask) for _ in range(rounds * len(candidates))]
    if not candidates:
        assert picks == []
        assert reg.pick("cap", ask) is None
        return
    assert set(picks) == set(candidates)
    assert set(Counter(picks).values()) == {rounds}
    # every window of len(candidates) consecutive picks covers all providers
    n = len(candidates)
    for start in range(len(picks) - n + 1):
        assert len(set(picks[start : start + n])) == n


# -- pending calls ---------------------------------------------------------------


class Recorder:
    """Collects on_done results per call id."""

    def __init__(self) -> None:
        self.results: dict[str, list[object]] = {}

    def cb(self, call_id: str) -> Any:
        def on_done(result: object) -> None:
            self.results.setdefault(call_id, []).append(result)

        return on_done


def failed(reason: str) -> Any:
    return lambda call: (reason, call.id)


def test_lifecycle_finish() -> None:
    rec = Recorder()
    calls = PendingCalls()
    call = calls.start("c1", "caller", "prov", 5_000, rec.cb("c1"))
    assert isinstance(call, PendingCall)
    assert (call.id, call.caller, call.provider) == ("c1", "caller", "prov")
    assert call.deadline_ms == 5_000
    assert not call.done and call.result is None
    assert len(calls) == 1 and "c1" in calls and calls.get("c1") is call
    assert not calls.finish("c1", "intruder", "forged")  # wrong provider: ignored
    assert rec.results == {}
    assert calls.finish("c1", "prov", "ok")
    assert not calls.finish("c1", "prov", "again")  # already done
    assert not calls.finish("unknown", "prov", "x")
    assert rec.results == {"c1": ["ok"]}
    assert call.done and call.result == "ok"
    assert len(calls) == 0 and calls.get("c1") is None
    assert calls.next_deadline_ms() is None


def test_duplicate_live_id_is_rejected_but_reusable_after_done() -> None:
    rec = Recorder()
    calls = PendingCalls()
    calls.start("c", "caller", "prov", 0, rec.cb("c"))
    with pytest.raises(ValueError, match="'c' is already in flight"):
        calls.start("c", "caller2", "prov2", 0, rec.cb("c"))
    assert calls.finish("c", "prov", 1)
    calls.start("c", "caller", "prov", 0, rec.cb("c"))
    assert len(calls) == 1


def test_fail_provider_caller_all() -> None:
    rec = Recorder()
    calls = PendingCalls()
    calls.start("a1", "alice", "p1", 0, rec.cb("a1"))
    calls.start("a2", "alice", "p2", 0, rec.cb("a2"))
    calls.start("b1", "bob", "p1", 0, rec.cb("b1"))
    calls.start("b2", "bob", "p2", 0, rec.cb("b2"))
    assert calls.fail_provider("p1", failed("gone")) == 2
    assert rec.results == {"a1": [("gone", "a1")], "b1": [("gone", "b1")]}
    assert calls.fail_provider("p1", failed("gone")) == 0
    assert calls.fail_caller("alice") == 1  # a2: dropped, no callback
    assert calls.fail_caller("alice") == 0
    assert "a2" not in rec.results
    assert not calls.finish("a2", "p2", "late")
    assert calls.fail_all(failed("shutdown")) == 1
    assert rec.results["b2"] == [("shutdown", "b2")]
    assert calls.fail_all(failed("shutdown")) == 0
    assert len(calls) == 0


def test_expire_and_next_deadline() -> None:
    rec = Recorder()
    calls = PendingCalls()
    calls.start("none", "c", "p", 0, rec.cb("none"))  # no deadline
    calls.start("late", "c", "p", 300, rec.cb("late"))
    calls.start("soon", "c", "p", 100, rec.cb("soon"))
    calls.start("mid", "c", "p", 200, rec.cb("mid"))
    assert calls.next_deadline_ms() == 100
    calls.finish("soon", "p", "ok")
    assert calls.next_deadline_ms() == 200
    assert calls.expire(199, failed("timeout")) == 0
    assert calls.expire(200, failed("timeout")) == 1
    assert rec.results["mid"] == [("timeout", "mid")]
    assert calls.next_deadline_ms() == 300
    assert calls.expire(10**12, failed("timeout")) == 1
    assert calls.next_deadline_ms() is None
    assert len(calls) == 1  # the call without a deadline never expires
    assert rec.results["soon"] == ["ok"]


def test_reused_id_is_not_expired_by_its_predecessor_deadline() -> None:
    rec = Recorder()
    calls = PendingCalls()
    calls.start("c", "caller", "p", 100, rec.cb("old"))
    assert calls.finish("c", "p", "ok")
    calls.start("c", "caller", "p", 500, rec.cb("new"))
    assert calls.expire(200, failed("timeout")) == 0
    assert calls.next_deadline_ms() == 500
    assert calls.expire(500, failed("timeout")) == 1
    assert rec.results == {"old": ["ok"], "new": [("timeout", "c")]}


def test_callbacks_that_raise_do_not_starve_others() -> None:
    rec = Recorder()
    calls = PendingCalls()

    def boom(result: object) -> None:
        raise RuntimeError("boom")

    calls.start("x", "c", "p", 0, boom)
    calls.start("y", "c", "p", 0, rec.cb("y"))
    with pytest.raises(RuntimeError, match="boom"):
        calls.fail_provider("p", failed("gone"))
    assert rec.results == {"y": [("gone", "y")]}
    assert len(calls) == 0

    calls.start("x", "c", "p", 0, boom)
    calls.start("z", "c", "p", 0, boom)
    with pytest.raises(ExceptionGroup) as info:
        calls.fail_all(failed("shutdown"))
    assert len(info.value.exceptions) == 2
    assert len(calls) == 0


def test_deadline_heap_stays_bounded() -> None:
    calls = PendingCalls()
    for i in range(1_000):
        calls.start(str(i), "c", "p", 10_000 + i, lambda r: None)
        calls.finish(str(i), "p", None)
    assert len(calls._deadlines) <= 2 * len(calls) + 64 + 1


start_op = st.tuples(
    st.just("start"),
    st.integers(0, 5),  # call id
    st.integers(0, 2),  # caller
    st.integers(0, 2),  # provider
    st.one_of(st.just(0), st.integers(1, 20)),  # deadline (0 = none)
)
finish_op = st.tuples(st.just("finish"), st.integers(0, 5), st.integers(0, 2))
fail_provider_op = st.tuples(st.just("fail_provider"), st.integers(0, 2))
fail_caller_op = st.tuples(st.just("fail_caller"), st.integers(0, 2))
expire_op = st.tuples(st.just("expire"), st.integers(0, 20))
ops = st.lists(
    st.one_of(
        start_op, start_op, finish_op, finish_op, fail_provider_op, fail_caller_op, expire_op
    ),
    min_size=5,
    max_size=50,
)


@settings(max_examples=200)
@given(ops=ops)
def test_pending_call_lifecycle(ops: list[tuple[Any, ...]]) -> None:
    calls = PendingCalls()
    done_counts: Counter[int] = Counter()  # per started call (serial number)
    live: dict[str, tuple[int, int, int, int]] = {}  # id -> (serial, caller, provider, deadline)
    dropped: set[int] = set()
    serial = 0

    def on_done_for(n: int) -> Any:
        def on_done(result: object) -> None:
            done_counts[n] += 1

        return on_done

    def finished(ids: list[str]) -> None:
        for call_id in ids:
            del live[call_id]

    for op in ops:
        kind = op[0]
        if kind == "start":
            _, cid, caller, provider, deadline = op
            call_id = f"c{cid}"
            if call_id in live:
                with pytest.raises(ValueError):
                    calls.start(call_id, caller, f"p{provider}", deadline, on_done_for(-1))
            else:
                serial += 1
                calls.start(call_id, caller, f"p{provider}", deadline, on_done_for(serial))
                live[call_id] = (serial, caller, provider, deadline)
        elif kind == "finish":
            _, cid, provider = op
            call_id = f"c{cid}"
            ok = call_id in live and live[call_id][2] == provider
            assert calls.finish(call_id, f"p{provider}", "r") == ok
            if ok:
                finished([call_id])
        elif kind == "fail_provider":
            ids = [k for k, v in live.items() if v[2] == op[1]]
            assert calls.fail_provider(f"p{op[1]}", lambda c: "gone") == len(ids)
            finished(ids)
        elif kind == "fail_caller":
            ids = [k for k, v in live.items() if v[1] == op[1]]
            dropped.update(live[k][0] for k in ids)
            assert calls.fail_caller(op[1]) == len(ids)
            finished(ids)
        else:
            ids = [k for k, v in live.items() if v[3] and v[3] <= op[1]]
            assert calls.expire(op[1], lambda c: "timeout") == len(ids)
            finished(ids)
        assert len(calls) == len(live)
        deadlines = [v[3] for v in live.values() if v[3]]
        assert calls.next_deadline_ms() == (min(deadlines) if deadlines else None)

    assert calls.fail_all(lambda c: "shutdown") == len(live)
    assert len(calls) == 0
    assert -1 not in done_counts
    for n in range(1, serial + 1):
        assert done_counts[n] == (0 if n in dropped else 1), n
