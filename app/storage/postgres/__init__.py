"""PostgreSQL backend: an asyncpg pool and group commit of many resources per transaction.

Cross-host correctness comes from PostgreSQL. A write batch (every unit of work queued
in this worker, one unit per resource the combiner flushed) runs as ONE transaction:

1. take a transaction-level advisory lock per resource, in key order, so every writer
   on every host touching the same resource queues here, whether its row exists yet or
   not (``FOR UPDATE`` alone cannot lock a row that is about to be inserted);
2. read the rows ``FOR UPDATE`` (each statement sees everything committed before the
   lock was granted);
3. apply each unit's operations with ``app.domain`` in Python, exactly as SQLite does;
4. write every changed row with one statement per table, then COMMIT, and only then
   answer the requests.

A unit whose computation fails writes nothing and gets its own error; its batch-mates
commit (the role a savepoint plays in the SQLite writer, without a round trip per unit).
Deadlocks and serialization failures retry the whole batch; a connection whose query
was cancelled, timed out or broke is terminated, never returned to the pool. Nothing
session-level is used, so PgBouncer in transaction mode works.

The parts: ``storage`` (the ``Storage`` the app talks to, and its reads), ``writer`` (the
queue of writes), ``increments`` (the fast path for increments), ``idempotency`` (the
Idempotency-Key table), ``changes`` (the change log), ``pool`` (connections and their
failure rules), ``schema`` (migrations), ``copy`` (export and import).
"""

from app.storage.postgres.storage import PostgresStorage

__all__ = ["PostgresStorage"]
