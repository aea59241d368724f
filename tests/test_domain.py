"""Tests of the pure operation semantics in app.domain, shared by every storage backend."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from app.domain import (
    INT64_MAX,
    INT64_MIN,
    NO_PRECONDITION,
    Commit,
    Counted,
    Counter,
    CounterOp,
    DeleteCounter,
    Deleted,
    DeleteRecord,
    Increment,
    PatchRecord,
    Precondition,
    PutRecord,
    Record,
    SetValue,
    Written,
    apply_counter_ops,
    apply_record_ops,
    check_name,
    merge_patch,
    now_iso,
)
from app.errors import InvalidInput, NotFound, OutOfRange, PreconditionFailed
from tests.outcomes import values

# --- RFC 7396 JSON Merge Patch ------------------------------------------------------

# RFC 7396 Appendix A, verbatim: (original, patch, result).
RFC7396_APPENDIX_A = [
    ('{"a":"b"}', '{"a":"c"}', '{"a":"c"}'),
    ('{"a":"b"}', '{"b":"c"}', '{"a":"b","b":"c"}'),
    ('{"a":"b"}', '{"a":null}', "{}"),
    ('{"a":"b","b":"c"}', '{"a":null}', '{"b":"c"}'),
    ('{"a":["b"]}', '{"a":"c"}', '{"a":"c"}'),
    ('{"a":"c"}', '{"a":["b"]}', '{"a":["b"]}'),
    ('{"a":{"b":"c"}}', '{"a":{"b":"d","c":null}}', '{"a":{"b":"d"}}'),
    ('{"a":[{"b":"c"}]}', '{"a":[1]}', '{"a":[1]}'),
    ('["a","b"]', '["c","d"]', '["c","d"]'),
    ('{"a":"b"}', '["c"]', '["c"]'),
    ('{"a":"foo"}', "null", "null"),
    ('{"a":"foo"}', '"bar"', '"bar"'),
    ('{"e":null}', '{"a":1}', '{"e":null,"a":1}'),
    ("[1,2]", '{"a":"b","c":null}', '{"a":"b"}'),
    ("{}", '{"a":{"bb":{"ccc":null}}}', '{"a":{"bb":{}}}'),
]


@pytest.mark.parametrize(("original", "patch", "result"), RFC7396_APPENDIX_A)
def test_merge_patch_rfc7396_appendix_examples(original: str, patch: str, result: str) -> None:
    """merge_patch gives the result RFC 7396 Appendix A lists for each example."""
    assert merge_patch(json.loads(original), json.loads(patch)) == json.loads(result)


def test_merge_patch_rfc7396_section3_example() -> None:
    """merge_patch reproduces the worked example of RFC 7396 section 3."""
    target = {
        "title": "Goodbye!",
        "author": {"givenName": "John", "familyName": "Doe"},
        "tags": ["example", "sample"],
        "content": "This will be unchanged",
    }
    patch = {
        "title": "Hello!",
        "phoneNumber": "+01-123-456-7890",
        "author": {"familyName": None},
        "tags": ["example"],
    }
    assert merge_patch(target, patch) == {
        "title": "Hello!",
        "author": {"givenName": "John"},
        "tags": ["example"],
        "content": "This will be unchanged",
        "phoneNumber": "+01-123-456-7890",
    }


def test_merge_patch_leaves_target_untouched() -> None:
    """merge_patch builds a new value and never mutates the stored one it is given."""
    target: dict[str, Any] = {"a": {"b": 1, "c": [1]}, "d": 2}
    before = copy.deepcopy(target)
    merge_patch(target, {"a": {"b": None, "x": 1}, "d": None})
    assert target == before


# --- counters -----------------------------------------------------------------------


C = Commit(7, "2024-01-01T00:00:00.000Z")


def counter(value: int, version: int = 1) -> Counter:
    return Counter("c", value, version)


def test_apply_counter_ops_increments_from_absent_at_zero() -> None:
    """Increments on an absent counter start at 0; each op gets the value and version after it."""
    final, outcomes = apply_counter_ops("c", None, [Increment(1), Increment(5), Increment(-10)], C)
    assert final == counter(-4, 3)
    assert outcomes == [
        Counted(counter(1, 1), 7),
        Counted(counter(6, 2), 7),
        Counted(counter(-4, 3), 7),
    ]


def test_apply_counter_ops_out_of_range_fails_only_that_op() -> None:
    """An increment leaving int64 fails with OutOfRange, changes no version, and the next runs."""
    ops: list[CounterOp] = [Increment(2), Increment(1), Increment(1)]
    final, outcomes = apply_counter_ops("c", counter(INT64_MAX - 1, 4), ops, C)
    assert final == counter(INT64_MAX, 5)
    assert isinstance(outcomes[0], OutOfRange)
    assert outcomes[1] == Counted(counter(INT64_MAX, 5), 7)
    assert isinstance(outcomes[2], OutOfRange)


def test_apply_counter_ops_below_int64_min_is_out_of_range() -> None:
    """An increment below INT64_MIN fails and keeps the stored value."""
    final, outcomes = apply_counter_ops("c", counter(INT64_MIN), [Increment(-1)], C)
    assert final == counter(INT64_MIN)
    assert isinstance(outcomes[0], OutOfRange)
    assert "64-bit range" in outcomes[0].detail


def test_apply_counter_ops_set_then_increment() -> None:
    """A set replaces the value, and later increments build on it; each adds one version."""
    final, outcomes = apply_counter_ops("c", counter(7, 2), [SetValue(100), Increment(1)], C)
    assert final == counter(101, 4)
    assert values(outcomes) == [100, 101]


def test_apply_counter_ops_delete_then_increment_recreates() -> None:
    """A delete removes the counter; a later increment recreates it from 0 at version 1."""
    final, outcomes = apply_counter_ops("c", counter(9, 5), [DeleteCounter(), Increment(3)], C)
    assert final == counter(3, 1)
    assert outcomes == [Deleted(7), Counted(counter(3, 1), 7)]


def test_apply_counter_ops_delete_absent_is_not_found() -> None:
    """Deleting an absent counter fails with NotFound and leaves it absent."""
    final, outcomes = apply_counter_ops("c", None, [DeleteCounter()], C)
    assert final is None
    assert isinstance(outcomes[0], NotFound)


def test_apply_counter_ops_no_ops_keeps_value() -> None:
    """An empty batch leaves the counter as it was."""
    assert apply_counter_ops("c", counter(5), [], C) == (counter(5), [])


def test_apply_counter_ops_if_match_applies_only_on_the_current_version() -> None:
    """Two sets with the same If-Match in one batch: the first applies, the second is 412."""
    same = Precondition(if_match=frozenset({3}))
    ops: list[CounterOp] = [SetValue(1, precondition=same), SetValue(2, precondition=same)]
    final, outcomes = apply_counter_ops("c", counter(0, 3), ops, C)
    assert final == counter(1, 4)
    assert outcomes[0] == Counted(counter(1, 4), 7)
    assert isinstance(outcomes[1], PreconditionFailed)
    assert 'current version ("4")' in outcomes[1].detail


def test_apply_counter_ops_if_none_match_any_creates_only() -> None:
    """If-None-Match: * sets an absent counter and refuses an existing one."""
    create = Precondition(if_none_match_any=True)
    ops: list[CounterOp] = [SetValue(5, precondition=create), SetValue(6, precondition=create)]
    final, outcomes = apply_counter_ops("c", None, ops, C)
    assert final == counter(5, 1)
    assert isinstance(outcomes[1], PreconditionFailed)
    assert "the counter exists" in outcomes[1].detail


# --- records ------------------------------------------------------------------------


def rec(version: int, value: Any = None) -> Record:
    return Record("r", value, version, "2024-01-01T00:00:00.000Z")


def test_apply_item_ops_put_creates_then_replaces() -> None:
    """A PUT on an absent record creates version 1; the next PUT replaces it as version 2."""
    final, outcomes = apply_record_ops("r", None, [PutRecord({"a": 1}), PutRecord([2])], C)
    assert final is not None
    assert (final.id, final.value, final.version) == ("r", [2], 2)
    first, second = outcomes
    assert isinstance(first, Written) and isinstance(second, Written)
    assert (first.created, first.record.version, first.record.value) == (True, 1, {"a": 1})
    assert (second.created, second.record.version) == (False, 2)


def test_apply_item_ops_patch_merges_and_bumps_version() -> None:
    """A PATCH merges into the value and adds one to the version."""
    final, outcomes = apply_record_ops("r", rec(4, {"a": 1, "b": 2}), [PatchRecord({"b": None})], C)
    assert final is not None
    assert (final.value, final.version) == ({"a": 1}, 5)
    assert outcomes == [Written(final, 7)]
    assert final.updated_at == C.time


def test_apply_item_ops_patch_absent_is_not_found() -> None:
    """A PATCH on an absent record fails with NotFound and creates nothing."""
    final, outcomes = apply_record_ops("r", None, [PatchRecord({"a": 1})], C)
    assert final is None
    assert isinstance(outcomes[0], NotFound)


def test_apply_item_ops_delete_then_delete_again() -> None:
    """A DELETE removes the record; a second DELETE in the batch finds nothing."""
    final, outcomes = apply_record_ops("r", rec(1), [DeleteRecord(), DeleteRecord()], C)
    assert final is None
    assert outcomes[0] == Deleted(7)
    assert isinstance(outcomes[1], NotFound)


def test_apply_item_ops_failed_precondition_writes_nothing() -> None:
    """An op whose If-Match fails is skipped with PreconditionFailed; the next op still runs."""
    current = rec(3, {"a": 1})
    stale = Precondition(if_match=frozenset({2}))
    fresh = Precondition(if_match=frozenset({3}))
    final, outcomes = apply_record_ops(
        "r", current, [PatchRecord({"a": 2}, stale), PatchRecord({"a": 3}, fresh)], C
    )
    assert isinstance(outcomes[0], PreconditionFailed)
    assert final is not None
    assert (final.value, final.version) == ({"a": 3}, 4)


def test_apply_item_ops_preconditions_see_earlier_ops_in_batch() -> None:
    """A precondition is checked against the state after the earlier ops of the same batch."""
    final, outcomes = apply_record_ops(
        "r",
        None,
        [
            PutRecord(1, Precondition(if_none_match_any=True)),
            PutRecord(2, Precondition(if_none_match_any=True)),
        ],
        C,
    )
    assert isinstance(outcomes[0], Written)
    assert isinstance(outcomes[1], PreconditionFailed)
    assert final is not None
    assert (final.value, final.version) == (1, 1)


@pytest.mark.parametrize(
    ("precondition", "current", "holds"),
    [
        (NO_PRECONDITION, None, True),
        (NO_PRECONDITION, rec(1), True),
        (Precondition(if_match=frozenset({1})), rec(1), True),
        (Precondition(if_match=frozenset({1, 2})), rec(2), True),
        (Precondition(if_match=frozenset({1})), rec(2), False),
        (Precondition(if_match=frozenset({1})), None, False),
        (Precondition(if_match=frozenset()), rec(1), False),
        (Precondition(if_match_any=True), rec(1), True),
        (Precondition(if_match_any=True), None, False),
        (Precondition(if_none_match_any=True), None, True),
        (Precondition(if_none_match_any=True), rec(1), False),
        (Precondition(if_none_match=frozenset({1})), rec(1), False),
        (Precondition(if_none_match=frozenset({1})), rec(2), True),
        (Precondition(if_none_match=frozenset({1})), None, True),
    ],
)
def test_precondition_check_matches_http_rules(
    precondition: Precondition, current: Record | None, holds: bool
) -> None:
    """If-Match / If-None-Match hold or fail as RFC 9110 section 13.1 says for strong tags."""
    version = None if current is None else current.version
    if holds:
        precondition.check(version)
    else:
        with pytest.raises(PreconditionFailed):
            precondition.check(version)


# --- names and time -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "A-z_0.9~:", "x" * 200, "...", ".a.", "-"])
def test_check_name_accepts_allowed_names(name: str) -> None:
    """Names of 1-200 characters from the allowed alphabet are returned unchanged."""
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "x" * 201, "a/b", "a b", "é", "a\n", "a%2F", "a+b", ".", ".."]
)
def test_check_name_rejects_other_names(name: str) -> None:
    """Any other name raises InvalidInput whose detail states the rule and the field."""
    with pytest.raises(InvalidInput, match=re.escape("id must be 1-200 characters from")):
        check_name(name, "id")


def test_now_iso_is_utc_rfc3339_with_milliseconds() -> None:
    """now_iso answers a UTC RFC 3339 timestamp with millisecond precision and a Z."""
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", now_iso())
