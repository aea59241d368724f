"""Storage: the narrow interface handlers and the combiner use (``app.storage.backends`` opens one).

A backend applies a batch of operations on one resource inside one write transaction
(reading the current state and writing the result there, never across two transactions),
answers reads, and reports its health. Handlers never see SQL; backends never see HTTP.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

from aiohttp import web

from app.changes import Change, FeedPage
from app.combining import Batch
from app.domain import Counter, CounterOp, CounterOutcome, Record, RecordOp, RecordOutcome
from app.leases import Decision, Lease, LockState, Step
from app.txn import Txn, TxnOutcome


class StorageObserver(Protocol):
    """Told about every committed write transaction and every failed database operation."""

    def committed(self, seconds: float, units: int) -> None:
        """A write transaction of ``units`` resources committed after ``seconds``."""
        ...

    def failed(self, kind: str) -> None:
        """An operation failed; ``kind`` is one of ``DB_ERROR_KINDS``."""
        ...


# The bounded set of kinds a backend reports failures as.
DB_ERROR_KINDS = ("busy", "locked", "readonly", "full", "io", "corrupt", "other")


class Storage(Protocol):
    """What every backend provides."""

    # Plain methods that return an awaitable (a future, so no task per batch): a combiner
    # settles its batch when it is done. Outcomes are delivered only after COMMIT.
    def apply_counter_ops(
        self, name: str, ops: Batch[CounterOp]
    ) -> Awaitable[list[CounterOutcome]]:
        """Apply ``ops`` to counter ``name`` in order, atomically, and commit before returning.

        Ops carrying an idempotency ``claim`` follow ``app.idempotency``: claimed keys are
        looked up inside the same write transaction, stored ones replay instead of applying,
        and the rendered responses of the applied ones are inserted before the commit.
        """
        ...

    def apply_record_ops(
        self, record_id: str, ops: Batch[RecordOp]
    ) -> Awaitable[list[RecordOutcome]]:
        """Apply ``ops`` to record ``record_id`` in order, atomically; commit, then return."""
        ...

    def apply_txn(self, txn: Txn) -> Awaitable[TxnOutcome]:
        """Read every resource ``txn`` names, evaluate it and write its changes in one write
        transaction, committed before the awaitable resolves; a ``TxnConflict`` writes nothing.

        A claimed Idempotency-Key is looked up inside that transaction (a stored one replays)
        and the rendered answer, a conflict's included, is stored with the change.
        """
        ...

    def lock_step(self, name: str, step: Step) -> Awaitable[Decision]:
        """Read lock ``name`` and its waiters in one write transaction, with the database's
        clock, decide ``step`` (``app.leases``) and write what it changed, with its
        change-log entry, committed before the awaitable resolves."""
        ...

    async def read_lock(self, name: str) -> tuple[LockState, float]:
        """Lock ``name``'s state as committed (waiters by seq), and the database's now."""
        ...

    async def list_locks(self, prefix: str, after: str, limit: int) -> list[Lease]:
        """Up to ``limit`` held (unexpired) locks by name, as ``list_counters`` pages."""
        ...

    async def ended_locks(self, limit: int) -> list[str]:
        """Up to ``limit`` names whose lease has expired but is still recorded as held."""
        ...

    async def purge_expired_keys(self, limit: int) -> int:
        """Delete up to ``limit`` expired idempotency keys in one write; returns how many."""
        ...

    async def purge_changes(self, cutoff: str, limit: int) -> int:
        """Delete the oldest whole revisions committed before ``cutoff`` (RFC 3339 time).

        At most about ``limit`` entries in one write; returns how many were deleted.
        """
        ...

    async def get_counter(self, name: str) -> Counter | None:
        """The counter as committed, or None if it does not exist."""
        ...

    async def list_counters(self, prefix: str, after: str, limit: int) -> list[Counter]:
        """Up to ``limit`` counters whose names start with ``prefix`` and sort after ``after``."""
        ...

    async def get_record(self, record_id: str) -> Record | None:
        """The record as committed, or None if it does not exist."""
        ...

    async def list_records(self, prefix: str, after: str, limit: int) -> list[Record]:
        """Up to ``limit`` records whose ids start with ``prefix`` and sort after ``after``."""
        ...

    async def feed(self) -> tuple[int, int]:
        """The last revision committed and the last one purged from the change log."""
        ...

    async def read_changes(
        self,
        since: int,
        limit: int,
        kind: str | None = None,
        prefix: str = "",
        resources: list[tuple[str, str]] | None = None,
        inline_max: int | None = None,
    ) -> FeedPage:
        """Change-log entries after revision ``since``, in revision order, whole commits only.

        The page ends with the commit of the ``limit``-th entry (all of it); it is filtered
        by ``kind``, key ``prefix`` and a list of ``(kind, key)`` ``resources``, and carries
        the feed's bounds as of the same snapshot. Values longer than ``inline_max`` are
        left out (``Change.deferred``), for ``deferred_value`` to read one at a time.
        """
        ...

    async def record_versions(
        self, record_id: str, before: int, limit: int, version: int | None = None
    ) -> list[Change]:
        """The record's retained versions below revision ``before``, newest first.

        Deletions are left out; ``version`` keeps only the entries of that version (a record
        recreated after a delete starts again at 1).
        """
        ...

    async def deferred_value(self, change: Change, snapshot: bool = False) -> str | None:
        """The value a deferred entry left out, or None when the log no longer has it.

        A snapshot's entry (``snapshot``) is the record's value at the snapshot's revision.
        """
        ...

    async def snapshot(
        self,
        kind: str | None = None,
        prefix: str = "",
        resources: list[tuple[str, str]] | None = None,
        inline_max: int | None = None,
        after: tuple[str, str] | None = None,
        limit: int | None = None,
    ) -> FeedPage:
        """The current state of what the filter covers, as one entry per resource.

        Read in one snapshot together with the feed's bounds: the states are exactly those
        after ``revision``; each entry carries that revision, and a named resource that
        does not exist gets ``value`` and ``version`` null. With ``limit``, only the first
        ``limit`` resources in (kind, key) order after ``after``: one page of a large state.
        """
        ...

    async def wait_for_change(self, mark: int) -> int:
        """Wait until any process has committed a write since ``mark``; return the new mark.

        A mark is an opaque number describing the committed state as this process last saw
        it; ``-1`` returns the current mark at once. Returning early (a change that touched
        nothing of interest) is allowed, missing a commit is not. Cancel to stop waiting.
        """
        ...

    async def ping(self) -> None:
        """Raise ``StorageUnavailable`` unless the database answers."""
        ...

    def write_trouble(self) -> str | None:
        """Why writes have been failing lately although the database answers (a full disk),
        or None once one succeeded; ``/readyz`` reports it."""
        ...

    async def close(self) -> None:
        """Finish queued writes and release every connection and thread."""
        ...


STORAGE = web.AppKey("storage", Storage)
