"""Storage outcomes and counters as plain values, so tests can compare them to numbers."""

from __future__ import annotations

from typing import Any

from app.domain import Counted, Counter, Deleted


def value(outcome: Any) -> Any:
    """A counter's value, or a counter op's value after it; None for a delete; else as it is."""
    if isinstance(outcome, Counter):
        return outcome.value
    if isinstance(outcome, Counted):
        return outcome.counter.value
    if isinstance(outcome, Deleted):
        return None
    return outcome


def values(outcomes: Any) -> list[Any]:
    """``value`` of each outcome."""
    return [value(o) for o in outcomes]
