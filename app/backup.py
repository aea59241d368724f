"""The ``lockstep backup``, ``export`` and ``import`` commands.

All three work on the database the service's own settings name (``LOCKSTEP_DATA_DIR``,
``LOCKSTEP_DATABASE_URL``), while the service runs. ``backup`` makes a consistent copy of
a SQLite file (``pg_dump`` does that for PostgreSQL); ``export`` writes counters, records
and the locks' last fencing tokens as NDJSON (``app.export_format``) to stdout and
``import`` loads that into an empty database of either backend, which is also how a
SQLite database moves to PostgreSQL. Every failure is one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import asyncpg

from app.export_format import BadExport, TargetNotEmpty, read_export
from app.settings import Settings
from app.storage.backends import open_storage
from app.storage.postgres import copy as pg_copy
from app.storage.sqlite import copy as sqlite_copy
from app.storage.sqlite.copy import CopyError

# What a command can fail with, reported as one line without a traceback.
EXPECTED = (
    BadExport,
    TargetNotEmpty,
    CopyError,
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    RuntimeError,  # open_storage's "PostgreSQL unreachable", SQLite too old, …
)


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the three commands on the ``lockstep`` parser; each sets ``run``."""
    backup = commands.add_parser(
        "backup", help="copy the SQLite database to PATH while the service runs"
    )
    backup.add_argument("path", type=Path, help="the new file (must not exist)")
    backup.set_defaults(run=_backup)
    export = commands.add_parser("export", help="write counters and records as NDJSON to stdout")
    export.set_defaults(run=_export)
    load = commands.add_parser(
        "import", help="load an export from stdin into an empty database (SQLite or PostgreSQL)"
    )
    load.set_defaults(run=_import)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the command ``args`` names on ``settings``' database; returns the exit status."""
    try:
        return int(args.run(settings, args))
    except BrokenPipeError:  # the reader of an export went away (| head)
        return 1
    except EXPECTED as e:
        return _fail(args.command, str(e) or type(e).__name__)


def _fail(command: str, message: str) -> int:
    print(f"lockstep {command}: {message}", file=sys.stderr)
    return 1


def _backup(settings: Settings, args: argparse.Namespace) -> int:
    if settings.uses_postgres:
        print(
            "lockstep backup: copies SQLite databases only; back up PostgreSQL with pg_dump"
            ' (pg_dump --format=custom --file=lockstep.dump "$LOCKSTEP_DATABASE_URL")'
            " or with lockstep export",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    pages = sqlite_copy.backup(settings.sqlite_path, args.path, settings.busy_timeout_ms)
    print(
        f"backed up {settings.sqlite_path} to {args.path}"
        f" ({pages} pages, {time.perf_counter() - started:.2f} s)"
    )
    return 0


def _export(settings: Settings, args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    if settings.uses_postgres:
        asyncio.run(_export_postgres(settings, out))
    else:
        for line in sqlite_copy.export_lines(settings.sqlite_path, settings.busy_timeout_ms):
            out.write(line)
    out.flush()
    return 0


async def _export_postgres(settings: Settings, out: BinaryIO) -> None:
    async for line in pg_copy.export_lines(settings):
        out.write(line)


def _import(settings: Settings, args: argparse.Namespace) -> int:
    counters, records, locks = asyncio.run(_import_into(settings, _stdin_lines()))
    print(f"imported counters: {counters}, records: {records}, locks: {locks}")
    return 0


def _stdin_lines() -> Iterator[bytes]:
    yield from sys.stdin.buffer


async def _import_into(settings: Settings, lines: Iterator[bytes]) -> tuple[int, int, int]:
    # Opening the storage creates or migrates the schema exactly as the service does.
    storage = await open_storage(settings)
    await storage.close()
    rows = read_export(lines)
    if settings.uses_postgres:
        return await pg_copy.import_rows(settings, rows)
    return sqlite_copy.import_rows(settings.sqlite_path, settings.busy_timeout_ms, rows)
