"""The PostgreSQL increment fast path: which units it takes, exact outcomes at the 64-bit edge."""

from __future__ import annotations

import asyncio

import pytest

from app.domain import INT64_MAX, INT64_MIN, Counter, CounterOp, DeleteCounter, Increment, SetValue
from app.errors import OutOfRange
from app.storage.postgres import PostgresStorage
from app.storage.postgres.increments import Plan, plan
from tests.outcomes import values

pytestmark = pytest.mark.backends("postgres")


def test_plan_bounds_the_start_so_every_step_fits() -> None:
    """A plan's start range keeps each intermediate sum, not just the total, inside 64 bits."""
    assert plan([Increment(5), Increment(-8), Increment(1)]) == Plan(
        -2, 3, INT64_MIN + 3, INT64_MAX - 5
    )


@pytest.mark.parametrize(
    "ops",
    [[], [SetValue(1)], [Increment(1), DeleteCounter()], [Increment(INT64_MAX)] * 3],
)
def test_plan_refuses_units_it_cannot_take(ops: list[CounterOp]) -> None:
    """Anything but a non-empty run of increments whose total fits in 64 bits gets no plan."""
    assert plan(ops) is None


async def test_increments_near_the_top_fail_alone(storage: PostgresStorage) -> None:
    """At 2**63-3, +1 +5 +1 answers 2**63-2, out-of-range, 2**63-1: the failing step alone."""
    await storage.apply_counter_ops("c", [SetValue(INT64_MAX - 2)])
    outcomes = values(
        await storage.apply_counter_ops("c", [Increment(1), Increment(5), Increment(1)])
    )
    assert outcomes[0] == INT64_MAX - 1
    assert isinstance(outcomes[1], OutOfRange)
    assert outcomes[2] == INT64_MAX
    assert await storage.get_counter("c") == Counter("c", INT64_MAX, 3)


async def test_increments_near_the_bottom_fail_alone(storage: PostgresStorage) -> None:
    """At -2**63+1, -1 -1 +3 answers -2**63, out-of-range, -2**63+3."""
    await storage.apply_counter_ops("c", [SetValue(INT64_MIN + 1)])
    outcomes = values(
        await storage.apply_counter_ops("c", [Increment(-1), Increment(-1), Increment(3)])
    )
    assert outcomes[0] == INT64_MIN
    assert isinstance(outcomes[1], OutOfRange)
    assert outcomes[2] == INT64_MIN + 3
    assert await storage.get_counter("c") == Counter("c", INT64_MIN + 3, 3)


async def test_increments_of_existing_counters_share_one_statement(
    storage: PostgresStorage,
) -> None:
    """Increments to 20 existing counters submitted together commit in two transactions at most."""
    for i in range(20):
        await storage.apply_counter_ops(f"c{i}", [SetValue(i)])
    before = storage.batches
    results = await asyncio.gather(
        *(storage.apply_counter_ops(f"c{i}", [Increment(1), Increment(2)]) for i in range(20))
    )
    assert [values(r) for r in results] == [[i + 1, i + 3] for i in range(20)]
    assert storage.batches - before <= 2
    listed = await storage.list_counters("c", "", 100)
    assert {c.name: (c.value, c.version) for c in listed} == {
        f"c{i}": (i + 3, 3) for i in range(20)
    }
