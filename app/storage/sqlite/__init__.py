"""SQLite backend: one writer connection with group commit, one reader connection, per worker.

Cross-process correctness comes from SQLite itself: every write batch runs as one
``BEGIN IMMEDIATE ... COMMIT`` transaction, which takes the database's single write lock
before reading the state it modifies, so another gunicorn worker can never interleave.
Inside this process all writes go through one writer task, so no two coroutines ever mix
statements of different transactions on the connection, and a whole batch (many
resources, many requests) costs one thread hop and one fsync.

The parts: ``storage`` (the ``Storage`` the app talks to), ``schema`` (migrations and
pragmas), ``writer`` (the queue of writes), ``turn`` (the workers' writer turn),
``transaction`` (one batch's transaction), ``writes`` (one resource's write),
``idempotency`` (the Idempotency-Key table), ``changes`` (the change log), ``reads``
(batched reads), ``connection`` (the hop into a connection's thread, and errors), ``file``
(the database file's identity), ``copy`` (online copies, export and import).
"""

from app.storage.sqlite.storage import SQLiteStorage

__all__ = ["SQLiteStorage"]
