"""Tests of the pure transaction semantics in app.txn, shared by every storage backend."""

from __future__ import annotations

import pytest

from app.domain import INT64_MAX, Commit, Counter, Record
from app.txn import (
    DELETED,
    Condition,
    CounterResult,
    Operation,
    RecordResult,
    Txn,
    TxnConflict,
    evaluate,
    holds,
)

STAMP = "2026-01-01T00:00:00.000Z"
COMMIT = Commit(8, STAMP)
DOC = Record("doc", {"a": 1}, 3, STAMP)
N = Counter("n", 5, 2)


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (Condition("counter", "n", "==", 5), True),
        (Condition("counter", "n", "!=", 5), False),
        (Condition("counter", "n", "<", 6), True),
        (Condition("counter", "n", "<=", 4), False),
        (Condition("counter", "n", ">", 4), True),
        (Condition("counter", "n", ">=", 6), False),
        (Condition("counter", "n", exists=True), True),
        (Condition("counter", "gone", "!=", 5), False),
        (Condition("counter", "gone", "==", 0), False),
        (Condition("counter", "gone", exists=False), True),
        (Condition("item", "doc", version=3), True),
        (Condition("item", "doc", version=2), False),
        (Condition("item", "gone", version=1), False),
        (Condition("item", "gone", exists=False), True),
        (Condition("item", "doc", exists=False), False),
        (Condition("counter", "n", version=2), True),
        (Condition("counter", "n", version=3), False),
        (Condition("counter", "gone", version=1), False),
    ],
)
def test_condition_holds_as_stated_and_absent_compares_as_absent(
    condition: Condition, expected: bool
) -> None:
    """Each comparison on a counter's value, version and exists; a missing resource is absent."""
    assert holds(condition, {"n": N, "gone": None}, {"doc": DOC, "gone": None}) is expected


def test_evaluate_runs_then_in_order_on_one_state() -> None:
    """Every op sees the earlier ones and moves a version: the states to write back and one
    result per op."""
    txn = Txn(
        (Condition("counter", "n", ">=", 1),),
        (
            Operation("increment", "counter", "n", -1),
            Operation("set", "counter", "m", 10),
            Operation("patch", "item", "doc", {"a": None, "b": 2}),
            Operation("delete", "counter", "m"),
            Operation("get", "counter", "m"),
        ),
    )
    done = evaluate(txn, {"n": Counter("n", 1, 4), "m": None}, {"doc": DOC}, COMMIT)
    assert done.succeeded
    assert done.results == [
        CounterResult("n", Counter("n", 0, 5)),
        CounterResult("m", Counter("m", 10, 1)),
        RecordResult("doc", Record("doc", {"b": 2}, 4, STAMP)),
        DELETED,
        CounterResult("m", None),
    ]
    assert done.counters == {"n": Counter("n", 0, 5), "m": None}
    assert done.items == {"doc": Record("doc", {"b": 2}, 4, STAMP)}


def test_evaluate_runs_else_when_a_condition_fails() -> None:
    """One failing condition chooses else; then's ops are not applied."""
    txn = Txn(
        (Condition("counter", "n", exists=True), Condition("item", "doc", version=9)),
        (Operation("increment", "counter", "n", 1),),
        (Operation("get", "item", "doc"),),
    )
    done = evaluate(txn, {"n": N}, {"doc": DOC}, COMMIT)
    assert not done.succeeded
    assert done.results == [RecordResult("doc", DOC)]
    assert done.counters == {"n": N}


@pytest.mark.parametrize(
    ("op", "reason"),
    [
        (Operation("increment", "counter", "n", INT64_MAX - 4), "64-bit"),
        (Operation("delete", "counter", "gone"), "no counter"),
        (Operation("patch", "item", "gone", {}), "no record"),
        (Operation("delete", "item", "gone"), "no record"),
        (Operation("put", "item", "doc", "x" * 100), "limit is 64"),
    ],
)
def test_evaluate_names_the_op_that_cannot_apply(op: Operation, reason: str) -> None:
    """An op that cannot apply raises TxnConflict with its branch and index."""
    txn = Txn((), (Operation("get", "counter", "n"), op), max_record_bytes=64)
    with pytest.raises(TxnConflict, match=rf"then\[1\] cannot apply: .*{reason}") as caught:
        evaluate(txn, {"n": N, "gone": None}, {"doc": DOC, "gone": None}, COMMIT)
    assert caught.value.index == 1


def test_lock_keys_list_each_resource_once_as_named() -> None:
    """The registry keys of every resource named, once each; the registry sorts them."""
    txn = Txn(
        (Condition("item", "doc", exists=True), Condition("counter", "b", exists=True)),
        (Operation("increment", "counter", "b", 1), Operation("get", "counter", "a")),
        (Operation("get", "item", "doc"),),
    )
    assert txn.lock_keys() == ["item:doc", "counter:b", "counter:a"]
    assert txn.names("counter") == ["a", "b"]
