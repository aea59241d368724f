"""The durable floor: the least a durably counted hit or increment can cost under aiohttp.

A second baseline for ``make bench`` (unless ``--no-floor``), beside hello world. It does
only what no durable counter can skip, the way lockstep does it: each request waits on a
future; one writer task per worker takes every waiting request (after ``GATHER_TURNS`` loop
turns), and runs one ``BEGIN IMMEDIATE``, one upsert ``... RETURNING`` adding each
counter's count, and ``COMMIT`` for all of them in aiosqlite's thread (WAL,
``synchronous=FULL``, the same ``flock`` turn between workers); then each request gets its
own value. No middleware, metrics, request id, lock registry, combiner, idempotency or
validation: so lockstep's share of *this* app's req/s is what its own code costs, and this
app's share of hello world's is what a durable commit per batch costs on the machine.

    POST /counters/{name}/increment   add one to a counter: ``{"name": ..., "value": N}``
    GET  /counters/{name}             a committed value, without counting (exactly-once check)
    GET  /counters?prefix=P           every counter named P...: ``{"items": [...], "next": null}``
    GET  /readyz                      200 once the database is open
    anything else counts one access: ``Resource accessed N times.``
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import sqlite3
from collections.abc import AsyncIterator
from functools import partial

import aiosqlite
from aiohttp import web

# Loop turns the writer lets run before it takes the waiting requests: in A/B runs of
# 1, 3 and 10 on GET /access, 10 gave the most req/s.
GATHER_TURNS = 10
_TEXT = {"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"}


def _prepare(conn: sqlite3.Connection, turn_fd: int) -> None:
    fcntl.flock(turn_fd, fcntl.LOCK_EX)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS counters"
            " (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID"
        )
        conn.execute("INSERT OR IGNORE INTO counters VALUES ('access', 0)")
    finally:
        fcntl.flock(turn_fd, fcntl.LOCK_UN)


def _commit(conn: sqlite3.Connection, turn_fd: int, counts: str) -> dict[str, int]:
    """Add each counter's count (a JSON object) in one committed transaction; values after."""
    fcntl.flock(turn_fd, fcntl.LOCK_EX)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # ``WHERE true`` tells SQLite's parser the ON CONFLICT belongs to the INSERT.
            rows = conn.execute(
                "INSERT INTO counters (name, value) SELECT key, value FROM json_each(?)"
                " WHERE true ON CONFLICT (name) DO UPDATE SET value = value + excluded.value"
                " RETURNING name, value",
                (counts,),
            ).fetchall()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return dict(rows)
    finally:
        fcntl.flock(turn_fd, fcntl.LOCK_UN)


class Writer:
    """Commits every waiting request's increment as one transaction, a batch at a time."""

    def __init__(self, db: aiosqlite.Connection, turn_fd: int) -> None:
        self._db = db
        self._turn_fd = turn_fd
        self._waiting: list[tuple[str, asyncio.Future[int]]] = []
        self._wakeup = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run())

    def count(self, name: str) -> asyncio.Future[int]:
        """A future for this request's value of ``name``, set once its increment committed."""
        future = self._loop.create_future()
        self._waiting.append((name, future))
        self._wakeup.set()
        return future

    async def _run(self) -> None:
        while True:
            if not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            for _ in range(GATHER_TURNS):
                await asyncio.sleep(0)
            batch, self._waiting = self._waiting, []
            counts: dict[str, int] = {}
            for name, _ in batch:
                counts[name] = counts.get(name, 0) + 1
            try:
                after = await self._db._execute(  # type: ignore[no-untyped-call]
                    partial(_commit, self._db._conn, self._turn_fd, json.dumps(counts))
                )
            except Exception as e:  # the batch failed: every request in it fails
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            # Each counter's requests get its values in arrival order: the last one the top.
            for name, future in reversed(batch):
                value = after[name]
                after[name] = value - 1
                if not future.done():
                    future.set_result(value)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


WRITER = web.AppKey("writer", Writer)
DB = web.AppKey("db", aiosqlite.Connection)


async def access(request: web.Request) -> web.Response:
    """Count one access once it has committed, like lockstep's GET /access."""
    await request.read()
    value = await request.app[WRITER].count("access")
    return web.Response(body=b"Resource accessed %d times." % value, headers=_TEXT)


async def increment(request: web.Request) -> web.Response:
    """Add one to a counter once it has committed, like lockstep's POST .../increment."""
    await request.read()
    name = request.match_info["name"]
    value = await request.app[WRITER].count(name)
    return web.json_response({"name": name, "value": value})


async def committed_value(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    sql = "SELECT value FROM counters WHERE name = ?"
    async with request.app[DB].execute(sql, (name,)) as cursor:
        row = await cursor.fetchone()
    if row is None:
        raise web.HTTPNotFound()
    return web.json_response({"name": name, "value": row[0]})


async def committed_values(request: web.Request) -> web.Response:
    prefix = request.query.get("prefix", "")
    sql = "SELECT name, value FROM counters WHERE substr(name, 1, ?) = ? ORDER BY name"
    async with request.app[DB].execute(sql, (len(prefix), prefix)) as cursor:
        rows = await cursor.fetchall()
    items = [{"name": name, "value": value} for name, value in rows]
    return web.json_response({"items": items, "next": None})


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _database(app: web.Application) -> AsyncIterator[None]:
    data = os.environ.get("LOCKSTEP_DATA_DIR", "data")
    os.makedirs(data, exist_ok=True)
    path = os.path.join(data, "floor.db")
    turn_fd = os.open(f"{path}.turn", os.O_RDWR | os.O_CREAT, 0o600)
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        await db._execute(partial(_prepare, db._conn, turn_fd))  # type: ignore[no-untyped-call]
        app[DB] = db
        app[WRITER] = writer = Writer(db, turn_fd)
        yield
        await writer.close()
    finally:
        await db.close()
        os.close(turn_fd)


async def create_app() -> web.Application:
    """The factory gunicorn calls: ``bench.floor:create_app``."""
    app = web.Application()
    app.cleanup_ctx.append(_database)
    app.router.add_get("/readyz", ready)
    app.router.add_post("/counters/{name}/increment", increment)
    app.router.add_get("/counters/{name}", committed_value)
    app.router.add_get("/counters", committed_values)
    app.router.add_route("*", "/{tail:.*}", access)
    return app
