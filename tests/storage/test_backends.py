"""Every backend behind the Storage protocol: same outcomes, same ordering, same durability."""

from __future__ import annotations

import asyncio
from typing import Any

from app.domain import (
    Counter,
    CounterOp,
    DeleteCounter,
    Increment,
    PatchRecord,
    Precondition,
    PutRecord,
    SetValue,
    Written,
)
from app.errors import NotFound, OutOfRange, PreconditionFailed
from app.settings import Settings
from app.storage import Storage
from app.storage.backends import open_storage
from tests.outcomes import value, values


async def test_values_survive_reopen(settings: Settings) -> None:
    """What was committed is there after the storage is closed and opened again."""
    first = await open_storage(settings)
    try:
        assert values(await first.apply_counter_ops("c", [Increment(41), Increment(1)])) == [41, 42]
        await first.apply_record_ops("doc", [PutRecord({"k": [1, "two", None, 3.5]})])
    finally:
        await first.close()
    second = await open_storage(settings)
    try:
        assert await second.get_counter("c") == Counter("c", 42, 2)
        record = await second.get_record("doc")
        assert record is not None
        assert (record.value, record.version) == ({"k": [1, "two", None, 3.5]}, 1)
    finally:
        await second.close()


async def test_concurrent_writes_share_few_transactions(storage: Any) -> None:
    """Writes to many resources submitted together are committed in a handful of batches."""
    before = storage.batches
    results = await asyncio.gather(
        *(storage.apply_counter_ops(f"c{i}", [Increment(i)]) for i in range(50))
    )
    assert [values(r) for r in results] == [[i] for i in range(50)]
    assert storage.batches - before <= 3
    assert await storage.list_counters("c", "", 100) == [
        Counter(f"c{i}", i, 1) for i in sorted(range(50), key=str)
    ]


async def test_counter_ops_keep_their_own_outcomes(storage: Storage) -> None:
    """An out-of-range increment fails alone at the 64-bit edge; the ops around it apply."""
    ops: list[CounterOp] = [
        SetValue(2**63 - 2),
        Increment(1),
        Increment(1),
        Increment(-5),
        DeleteCounter(),
    ]
    outcomes = values(await storage.apply_counter_ops("c", ops))
    assert outcomes[:2] == [2**63 - 2, 2**63 - 1]
    assert isinstance(outcomes[2], OutOfRange)
    assert outcomes[3] == 2**63 - 6
    assert outcomes[4] is None
    assert await storage.get_counter("c") is None
    assert isinstance((await storage.apply_counter_ops("c", [DeleteCounter()]))[0], NotFound)


async def test_extreme_values_are_stored_exactly(storage: Storage) -> None:
    """The signed 64-bit limits round-trip through the database unchanged."""
    assert values(await storage.apply_counter_ops("max", [SetValue(2**63 - 1)])) == [2**63 - 1]
    assert values(await storage.apply_counter_ops("min", [SetValue(-(2**63))])) == [-(2**63)]
    assert await storage.get_counter("max") == Counter("max", 2**63 - 1, 1)
    assert await storage.get_counter("min") == Counter("min", -(2**63), 1)


async def test_item_ops_bump_versions_and_merge(storage: Storage) -> None:
    """Puts and patches in one batch each get their own version; the result is stored once."""
    outcomes = await storage.apply_record_ops(
        "doc", [PutRecord({"a": 1}), PatchRecord({"b": 2}), PatchRecord({"a": None})]
    )
    assert [o.record.version for o in outcomes if isinstance(o, Written)] == [1, 2, 3]
    assert isinstance(outcomes[0], Written) and outcomes[0].created
    record = await storage.get_record("doc")
    assert record is not None
    assert (record.value, record.version) == ({"b": 2}, 3)


async def test_conditional_write_on_stale_version_changes_nothing(storage: Storage) -> None:
    """A PUT with If-Match on an old version fails with 412 and leaves the record as it was."""
    await storage.apply_record_ops("doc", [PutRecord({"v": 1}), PutRecord({"v": 2})])
    stale = Precondition(if_match=frozenset({1}))
    [outcome] = await storage.apply_record_ops("doc", [PutRecord({"v": "lost"}, stale)])
    assert isinstance(outcome, PreconditionFailed)
    record = await storage.get_record("doc")
    assert record is not None
    assert (record.value, record.version) == ({"v": 2}, 2)


async def test_listings_sort_byte_wise_and_page_by_prefix(storage: Storage) -> None:
    """Names list in byte order (upper case before lower, '-' before '.') on every backend."""
    names = ["a-b", "a.B", "a.a", "aB", "a_", "a~", "ab", "b"]
    for name in names:
        await storage.apply_counter_ops(name, [Increment(1)])
        await storage.apply_record_ops(name, [PutRecord(name)])
    expected = sorted(n for n in names if n.startswith("a"))
    assert [c.name for c in await storage.list_counters("a", "", 100)] == expected
    assert [r.id for r in await storage.list_records("a", "", 100)] == expected
    assert [c.name for c in await storage.list_counters("a", "a.a", 2)] == expected[3:5]


async def test_two_storages_on_one_database_never_lose_increments(settings: Settings) -> None:
    """Two storages on one database (as two workers or hosts have) never lose an update."""
    a = await open_storage(settings)
    b = await open_storage(settings)
    try:
        results = await asyncio.gather(
            *(s.apply_counter_ops("shared", [Increment(1)]) for _ in range(100) for s in (a, b))
        )
        seen = sorted(value(r[0]) for r in results)
        assert seen == list(range(1, 201))
        assert await a.get_counter("shared") == Counter("shared", 200, 200)
    finally:
        await a.close()
        await b.close()


async def test_ping_answers_on_an_open_database(storage: Storage) -> None:
    """ping returns quietly (raises nothing) while the database is reachable."""
    await storage.ping()
