"""Transactions over several resources (``POST /txn``): what they mean, apart from HTTP and SQL.

A transaction names counters and records. A backend reads the current state of every one
of them inside a single write transaction and hands those states to ``evaluate``: the
conditions are checked against them (a missing counter or record is absent: only
``exists: false`` holds for it), then the chosen branch's operations run in order, each
seeing the effects of those before it, exactly as single-resource requests would one at a
time. The answer is the state to write back for every resource and one result per
operation; or ``TxnConflict`` naming the first operation that cannot apply (a 64-bit
overflow, a patch or delete of something absent, a record grown past its size limit), in
which case the backend writes nothing at all.

Exclusion is the caller's: inside a worker the registry locks of every named resource
(``lock_keys``, taken in sorted order under one deadline), across workers the database's
write transaction.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from app.domain import (
    INT64_MAX,
    INT64_MIN,
    Commit,
    Counted,
    Counter,
    Deleted,
    Record,
    Written,
    apply_counter_ops,
    apply_record_ops,
    merge_patch,
    record_size,
)
from app.errors import LockstepError
from app.idempotency import Claim, Replay
from app.leases import Fence

Kind = Literal["counter", "item"]
Comparison = Literal["==", "!=", "<", "<=", ">", ">="]
# "apply": a single-resource request's own op (``value``: its ``CounterOp`` or ``RecordOp``),
# run as a one-operation transaction when it carries a ``Lockstep-Fence``.
OpName = Literal["get", "set", "increment", "put", "patch", "delete", "apply"]

_COMPARE: dict[str, Callable[[int, int], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class TxnConflict(LockstepError):
    """An operation of the chosen branch cannot apply; nothing of the transaction was written."""

    status = 409
    slug = "txn-conflict"
    title = "Conflict"

    def __init__(self, index: int, branch: str, reason: str) -> None:
        super().__init__(f"{branch}[{index}] cannot apply: {reason}; nothing was changed")
        self.index = index
        self.branch = branch


@dataclass(slots=True, frozen=True)
class Condition:
    """One test on a resource; exactly one of ``cmp``, ``version`` and ``exists`` is set."""

    kind: Kind
    name: str
    cmp: Comparison | None = None
    value: int = 0  # what ``cmp`` compares a counter's value with
    version: int | None = None
    exists: bool | None = None


@dataclass(slots=True, frozen=True)
class Operation:
    """One operation: ``value`` is the increment's ``by``, the new value, or the merge patch."""

    op: OpName
    kind: Kind
    name: str
    value: Any = None


@dataclass(slots=True, frozen=True)
class Txn:
    """A whole transaction as parsed; ``claim`` carries its Idempotency-Key, if any."""

    conditions: tuple[Condition, ...]
    then: tuple[Operation, ...]
    otherwise: tuple[Operation, ...] = ()
    max_record_bytes: int | None = None
    claim: Claim | None = None
    fences: tuple[Fence, ...] = ()  # locks that must be held with these tokens, else 412

    def names(self, kind: Kind) -> list[str]:
        """The distinct names of ``kind`` the transaction touches, sorted."""
        named = {c.name for c in self.conditions if c.kind == kind}
        named.update(o.name for o in (*self.then, *self.otherwise) if o.kind == kind)
        return sorted(named)

    def lock_keys(self) -> list[str]:
        """The lock registry keys of every resource named (the combiners' ``kind:name``), in
        the order the transaction names them: the registry sorts them itself."""
        named: list[tuple[str, str]] = [(c.kind, c.name) for c in self.conditions]
        named += [(o.kind, o.name) for o in (*self.then, *self.otherwise)]
        named += [("lock", f.name) for f in self.fences]
        return list(dict.fromkeys(f"{kind}:{name}" for kind, name in named))


@dataclass(slots=True, frozen=True)
class CounterResult:
    """A counter as an operation left or found it; ``counter`` None: it does not exist."""

    name: str
    counter: Counter | None


@dataclass(slots=True, frozen=True)
class RecordResult:
    """A record as an operation left or found it; ``record`` None: it does not exist."""

    id: str
    record: Record | None


@dataclass(slots=True, frozen=True)
class DeletedResult:
    """A delete that applied."""


DELETED = DeletedResult()
# An "apply" op's result is the single-resource outcome (``Counted``, ``Written``, ``Deleted``).
Result = CounterResult | RecordResult | DeletedResult | Counted | Written | Deleted


@dataclass(slots=True)
class Evaluated:
    """The outcome to answer and the states to write back (every named resource's).

    ``revision`` is the commit that applied the changes, or, when there were none, the last
    commit before the states were read; storage sets it once it knows which.
    """

    succeeded: bool
    results: list[Result]
    counters: dict[str, Counter | None] = field(default_factory=dict)
    items: dict[str, Record | None] = field(default_factory=dict)
    revision: int = 0
    changed: bool = False  # whether the transaction changed any resource


# What storage answers for a transaction: its evaluation, the conflict that stopped it, or
# (with an Idempotency-Key) the stored answer to replay or KeyReused.
TxnOutcome = Evaluated | LockstepError | Replay


def holds(
    condition: Condition,
    counters: Mapping[str, Counter | None],
    items: Mapping[str, Record | None],
) -> bool:
    """Whether ``condition`` holds for the given states (absent: None)."""
    state: Counter | Record | None
    state = (
        counters.get(condition.name) if condition.kind == "counter" else items.get(condition.name)
    )
    if condition.exists is not None:
        return (state is not None) == condition.exists
    if state is None:
        return False
    if condition.cmp is not None:
        assert isinstance(state, Counter)
        return _COMPARE[condition.cmp](state.value, condition.value)
    return state.version == condition.version


def evaluate(
    txn: Txn,
    counters: Mapping[str, Counter | None],
    items: Mapping[str, Record | None],
    commit: Commit,
) -> Evaluated:
    """Check the conditions against the states read, then run the branch they choose.

    ``counters`` and ``items`` hold every resource ``txn`` names (None: absent); records
    written get ``commit``'s time as ``updated_at``. Raises ``TxnConflict`` if an op cannot
    apply.
    """
    succeeded = all(holds(c, counters, items) for c in txn.conditions)
    branch, ops = ("then", txn.then) if succeeded else ("else", txn.otherwise)
    after = Evaluated(succeeded, [], dict(counters), dict(items), commit.revision)
    for index, op in enumerate(ops):
        try:
            after.results.append(_apply(op, after, commit, txn.max_record_bytes))
        except _CannotApply as e:
            raise TxnConflict(index, branch, str(e)) from None
        except _Refused as e:
            raise e.error from None
    return after


class _CannotApply(Exception):
    pass


class _Refused(Exception):
    def __init__(self, error: LockstepError) -> None:
        self.error = error


def _apply_one(op: Operation, state: Evaluated, commit: Commit) -> Result:
    """A single-resource request's op, with exactly its own outcomes."""
    outcome: Any
    if op.kind == "counter":
        after, (outcome,) = apply_counter_ops(
            op.name, state.counters.get(op.name), [op.value], commit
        )
        state.counters[op.name] = after
    else:
        final, (outcome,) = apply_record_ops(op.name, state.items.get(op.name), [op.value], commit)
        state.items[op.name] = final
    if isinstance(outcome, LockstepError):
        raise _Refused(outcome)
    assert isinstance(outcome, Counted | Written | Deleted)
    return outcome


def _apply(op: Operation, state: Evaluated, commit: Commit, max_bytes: int | None) -> Result:
    if op.op == "apply":
        return _apply_one(op, state, commit)
    name = op.name
    stamp = commit.time
    if op.kind == "counter":
        counter = state.counters.get(name)
        if op.op == "get":
            return CounterResult(name, counter)
        if op.op == "delete":
            if counter is None:
                raise _CannotApply(f"no counter named {name!r}")
            state.counters[name] = None
            return DELETED
        value = op.value if op.op == "set" else (0 if counter is None else counter.value) + op.value
        if not INT64_MIN <= value <= INT64_MAX:
            raise _CannotApply(f"incrementing by {op.value} would leave the 64-bit range")
        changed = Counter(name, value, 1 if counter is None else counter.version + 1)
        state.counters[name] = changed
        return CounterResult(name, changed)
    record = state.items.get(name)
    if op.op == "get":
        return RecordResult(name, record)
    if op.op == "put":
        version = 1 if record is None else record.version + 1
        new_value = op.value
    elif record is None:
        raise _CannotApply(f"no record with id {name!r}")
    elif op.op == "delete":
        state.items[name] = None
        return DELETED
    else:
        version = record.version + 1
        new_value = merge_patch(record.value, op.value)
    if max_bytes is not None and (size := record_size(new_value)) > max_bytes:
        raise _CannotApply(
            f"the record would take {size} bytes as a PUT body; the limit is {max_bytes}"
        )
    written = Record(name, new_value, version, stamp)
    state.items[name] = written
    return RecordResult(name, written)
