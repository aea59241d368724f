"""The export format: NDJSON that carries counters, records and the locks' fencing tokens
from one database to another.

One JSON object per line, each tagged by ``type``::

    {"type":"lockstep-export","version":2}                                  always first
    {"type":"counter","name":"visits","value":42,"version":7}               by name
    {"type":"record","id":"cfg","value":{"a":1},"version":3,"updated_at":"…"}  by id
    {"type":"lock","name":"payments","last_token":42}                       by name
    {"type":"end","counters":1,"records":1,"locks":1}                       always last

A record's value is carried as the exact JSON text the database holds, so values (integers
of any size included), versions and timestamps come back byte for byte, and exporting an
imported database gives the export it came from. Counters come before records, each kind
in ascending byte order of its names, which is also how an import finds a repeated name
without holding every name in memory. The ``end`` line tells a complete export from one
that was cut off. Idempotency keys are not carried: they only matter to retries of
requests already answered.

A lock carries only the last fencing token it issued: the import stores it free, with that
token as the floor, so the next lease on the new database gets a greater token than any a
holder on the old one could still present (a lease held at export ends there; its holder's
fenced writes are refused). Version 1 exports, from before locks were carried, read as
before.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Annotated

import msgspec

from app.domain import INT64_MAX, INT64_MIN, NAME_RE, NAME_RULE

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: no lock lines

Int64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
# What app.domain.now_iso writes: RFC 3339 UTC, milliseconds.
Timestamp = Annotated[str, msgspec.Meta(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")]


class Header(msgspec.Struct, tag="lockstep-export", tag_field="type", forbid_unknown_fields=True):
    version: int


class CounterLine(msgspec.Struct, tag="counter", tag_field="type", forbid_unknown_fields=True):
    name: str
    value: Int64
    # Exports written before counters had versions carry none: they start at 1.
    version: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)] = 1


class RecordLine(msgspec.Struct, tag="record", tag_field="type", forbid_unknown_fields=True):
    id: str
    value: msgspec.Raw  # the stored JSON text, as it is
    version: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)]
    updated_at: Timestamp


class LockLine(msgspec.Struct, tag="lock", tag_field="type", forbid_unknown_fields=True):
    name: str
    last_token: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)]


class End(msgspec.Struct, tag="end", tag_field="type", forbid_unknown_fields=True):
    counters: int
    records: int
    locks: int = 0  # absent in version 1


Row = CounterLine | RecordLine | LockLine
_decoder = msgspec.json.Decoder(Header | CounterLine | RecordLine | LockLine | End)
_encoder = msgspec.json.Encoder()


class BadExport(Exception):
    """The input is not a complete, well-formed lockstep export; the message says where."""


# The tables an import fills or requires empty.
TABLES = ("counters", "items", "idempotency", "locks")


class TargetNotEmpty(Exception):
    """An import found rows in the database it was to fill; it wrote nothing."""

    def __init__(self, tables: list[str]) -> None:
        names = {"items": "records", "idempotency": "idempotency keys"}
        what = ", ".join(names.get(t, t) for t in tables)
        super().__init__(
            f"the target database is not empty (it holds {what}); import only into a new one"
            " (a fresh LOCKSTEP_DATA_DIR, or an empty PostgreSQL database)"
        )


def header_line() -> bytes:
    return _encoder.encode(Header(FORMAT_VERSION)) + b"\n"


def counter_line(name: str, value: int, version: int = 1) -> bytes:
    return _encoder.encode(CounterLine(name, value, version)) + b"\n"


def record_line(record_id: str, value_json: str, version: int, updated_at: str) -> bytes:
    return (
        _encoder.encode(RecordLine(record_id, msgspec.Raw(value_json), version, updated_at)) + b"\n"
    )


def lock_line(name: str, last_token: int) -> bytes:
    return _encoder.encode(LockLine(name, last_token)) + b"\n"


def end_line(counters: int, records: int, locks: int = 0) -> bytes:
    return _encoder.encode(End(counters, records, locks)) + b"\n"


CounterRow = tuple[str, int, int]  # name, value, version
RecordRow = tuple[str, str, int, str]  # id, value as JSON text, version, updated_at
LockRow = tuple[str, int]  # name, last_token: stored free


@dataclass(slots=True)
class Batch:
    """Rows of each table for one round of ``executemany``."""

    counters: list[CounterRow] = field(default_factory=list)
    records: list[RecordRow] = field(default_factory=list)
    locks: list[LockRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.counters) + len(self.records) + len(self.locks)


def in_batches(rows: Iterable[Row], size: int = 1000) -> Iterator[Batch]:
    """``rows`` as database rows, in batches of at most ``size`` for ``executemany``."""
    batch = Batch()
    for row in rows:
        if isinstance(row, CounterLine):
            batch.counters.append((row.name, row.value, row.version))
        elif isinstance(row, RecordLine):
            batch.records.append((row.id, bytes(row.value).decode(), row.version, row.updated_at))
        else:
            batch.locks.append((row.name, row.last_token))
        if len(batch) >= size:
            yield batch
            batch = Batch()
    yield batch


def read_export(lines: Iterable[bytes]) -> Iterator[Row]:
    """The rows of an export, checked line by line; raises ``BadExport`` at the first fault.

    Rows are yielded as they are read, so a caller loading them inside one transaction
    rolls everything back when a later line turns out bad (or the ``end`` line is missing).
    """
    started = ended = False
    counts: dict[type[Row], int] = {CounterLine: 0, RecordLine: 0, LockLine: 0}
    last: dict[type[Row], bytes] = {}
    number = 0
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        if ended:
            raise BadExport(f"line {number}: data after the end line")
        try:
            line = _decoder.decode(raw)
        except msgspec.DecodeError as e:  # ValidationError included
            if not raw.endswith(b"\n"):
                raise BadExport(f"line {number}: the export was cut off mid-line") from e
            what = "" if started else "not a lockstep export: "
            raise BadExport(f"line {number}: {what}{e}") from e
        if not started:
            if not isinstance(line, Header):
                raise BadExport(f"line {number}: not a lockstep export (no header line)")
            if line.version not in READABLE_VERSIONS:
                raise BadExport(
                    f"line {number}: export format version {line.version}; this lockstep"
                    f" reads versions {READABLE_VERSIONS[0]} to {FORMAT_VERSION}"
                )
            started = True
        elif isinstance(line, Header):
            raise BadExport(f"line {number}: a second header line")
        elif isinstance(line, End):
            _check_end(number, line, counts)
            ended = True
        else:
            kind = type(line)
            later = _KINDS[_KINDS.index(kind) + 1 :]
            if any(counts[k] for k in later):
                raise BadExport(
                    f"line {number}: a {_WHAT[kind]} after the {_WHAT[later[0]]}s"
                    " (counters, then records, then locks)"
                )
            counts[kind] += 1
            _check_order(number, line.id if isinstance(line, RecordLine) else line.name, last, kind)
            yield line
    if not started:
        raise BadExport("the input is empty: expected a lockstep export")
    if not ended:
        raise BadExport(f"the export ends at line {number} without its end line: it was cut off")


_KINDS: tuple[type[Row], ...] = (CounterLine, RecordLine, LockLine)
_WHAT: dict[type[Row], str] = {CounterLine: "counter", RecordLine: "record", LockLine: "lock"}


def _check_end(number: int, end: End, counts: dict[type[Row], int]) -> None:
    said = (end.counters, end.records, end.locks)
    came = (counts[CounterLine], counts[RecordLine], counts[LockLine])
    if said != came:
        raise BadExport(
            f"line {number}: the end line counts {said[0]} counters, {said[1]} records and"
            f" {said[2]} locks, but {came[0]}, {came[1]} and {came[2]} came before it"
        )


def _check_order(number: int, name: str, last: dict[type[Row], bytes], kind: type[Row]) -> None:
    if NAME_RE.fullmatch(name) is None:
        raise BadExport(f"line {number}: {name!r} is not a valid name ({NAME_RULE})")
    key = name.encode()
    previous = last.get(kind)
    if previous is not None and key <= previous:
        raise BadExport(f"line {number}: {name!r} repeated or out of order (names ascend)")
    last[kind] = key
