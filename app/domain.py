"""What the operations mean, independent of HTTP and of the database.

Storage backends read a resource's current state inside a write transaction, hand it
to ``apply_counter_ops`` / ``apply_record_ops`` together with every operation queued for
that resource, and write back the single resulting state. Each operation gets its own
outcome (a value, a record or an error), exactly as if the operations had run one at a
time in queue order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import msgspec

from app.errors import (
    InvalidInput,
    LockstepError,
    NotFound,
    OutOfRange,
    PreconditionFailed,
    RecordTooLarge,
)
from app.idempotency import Claim, Replay

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# "." and ".." are dot segments: clients and proxies rewrite URLs holding them.
NAME_RE = re.compile(r"(?!\.\.?$)[A-Za-z0-9._~:-]{1,200}")
NAME_RULE = "1-200 characters from A-Z a-z 0-9 . _ ~ : -, and not . or .."
# The largest character a name may contain is "~"; every name starting with a prefix
# sorts below prefix + this, which keeps prefix listings on the primary-key index.
NAME_CEILING = "\x7f"


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a valid counter name or record id, else raise ``InvalidInput``."""
    if NAME_RE.fullmatch(name) is None:
        raise InvalidInput(f"{what} must be {NAME_RULE}")
    return name


# --- commits --------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Commit:
    """The write transaction an operation runs in: its revision and its time (RFC 3339).

    Storage reads ``revision`` (the last committed one + 1) once it holds the database's
    write lock, so every outcome can name the commit that applied it; the number is used
    only if something changed (``docs/design.md``).
    """

    revision: int
    time: str


@dataclass(slots=True, frozen=True)
class Precondition:
    """Parsed If-Match / If-None-Match headers."""

    if_match: frozenset[int] | None = None  # None: header absent
    if_match_any: bool = False  # If-Match: *
    if_none_match: frozenset[int] | None = None  # None: header absent
    if_none_match_any: bool = False  # If-None-Match: *
    hint: str = ""  # added to an If-Match failure's detail (a tag sent without quotes)
    # If-None-Match holds a tag without quotes: this hint, and the condition fails. Such a
    # tag never matches, so RFC 9110 would let the write go ahead, and the client's guard
    # would silently do nothing; lockstep refuses it as If-Match: 1 is refused.
    unquoted_none_match: str = ""

    def check(self, version: int | None, what: str = "record") -> None:
        """Raise ``PreconditionFailed`` unless the headers hold for the current ``version``.

        ``version`` is None when the counter or record (``what``) does not exist.
        """
        if self.unquoted_none_match:
            raise PreconditionFailed(
                f"If-None-Match holds a tag without quotes, which matches nothing"
                f"{self.unquoted_none_match}"
            )
        if self.if_none_match_any and version is not None:
            raise PreconditionFailed(f"If-None-Match: * but the {what} exists")
        if self.if_none_match and version is not None and version in self.if_none_match:
            raise PreconditionFailed("If-None-Match matched the current version")
        if self.if_match_any and version is None:
            raise PreconditionFailed(f"If-Match: * but the {what} does not exist")
        if self.if_match is not None and (version is None or version not in self.if_match):
            have = "absent" if version is None else f'"{version}"'
            raise PreconditionFailed(
                f"If-Match did not match the current version ({have}){self.hint}"
            )


NO_PRECONDITION = Precondition()


# --- counters -----------------------------------------------------------------------


class Counter(NamedTuple):
    """A counter as stored: its value and how many operations have been applied to it."""

    name: str
    value: int
    version: int


@dataclass(slots=True, frozen=True)
class Increment:
    by: int
    claim: Claim | None = None
    precondition: Precondition | None = None


@dataclass(slots=True, frozen=True)
class SetValue:
    value: int
    claim: Claim | None = None
    precondition: Precondition | None = None


@dataclass(slots=True, frozen=True)
class DeleteCounter:
    claim: Claim | None = None
    precondition: Precondition | None = None


class Counted(NamedTuple):
    """A successful increment or set: the counter after it, and the commit that applied it."""

    counter: Counter
    revision: int


@dataclass(slots=True, frozen=True)
class Deleted:
    """A successful delete, and the commit that applied it."""

    revision: int


CounterOp = Increment | SetValue | DeleteCounter
# A Replay is the stored response of an op whose Idempotency-Key was already used
# (see app.idempotency).
CounterOutcome = Counted | Deleted | LockstepError | Replay


def apply_counter_ops(
    name: str, current: Counter | None, ops: list[CounterOp], commit: Commit
) -> tuple[Counter | None, list[CounterOutcome]]:
    """Apply ``ops`` in order to counter ``name`` whose stored state is ``current``.

    Every applied operation adds 1 to the version; a failed one changes nothing.
    """
    outcomes: list[CounterOutcome] = []
    counter = current
    revision = commit.revision
    for op in ops:
        if op.precondition is not None:
            try:
                op.precondition.check(None if counter is None else counter.version, "counter")
            except PreconditionFailed as e:
                outcomes.append(e)
                continue
        if isinstance(op, Increment):
            if counter is None:
                value, version = op.by, 1
            else:
                value, version = counter.value + op.by, counter.version + 1
            if INT64_MIN <= value <= INT64_MAX:
                counter = Counter(name, value, version)
                outcomes.append(Counted(counter, revision))
            else:
                outcomes.append(OutOfRange(f"incrementing by {op.by} would leave the 64-bit range"))
        elif isinstance(op, SetValue):
            counter = Counter(name, op.value, 1 if counter is None else counter.version + 1)
            outcomes.append(Counted(counter, revision))
        elif counter is None:
            outcomes.append(NotFound("no such counter"))
        else:
            counter = None
            outcomes.append(Deleted(revision))
    return counter, outcomes


# --- records ------------------------------------------------------------------------


class Record(NamedTuple):
    id: str
    value: Any
    version: int
    updated_at: str


@dataclass(slots=True, frozen=True)
class PutRecord:
    value: Any
    precondition: Precondition = NO_PRECONDITION
    claim: Claim | None = None


@dataclass(slots=True, frozen=True)
class PatchRecord:
    patch: Any
    precondition: Precondition = NO_PRECONDITION
    claim: Claim | None = None
    max_bytes: int | None = None  # largest record_size the result may have (None: any)


@dataclass(slots=True, frozen=True)
class DeleteRecord:
    precondition: Precondition = NO_PRECONDITION
    claim: Claim | None = None


RecordOp = PutRecord | PatchRecord | DeleteRecord


class Written(NamedTuple):
    """A successful PUT/PATCH: the record as stored, the commit, and whether a PUT created it."""

    record: Record
    revision: int
    created: bool = False


# Replay as for counters.
RecordOutcome = Written | Deleted | LockstepError | Replay


# A record's size is that of the smallest PUT body that writes it back: {"value":<value>}.
_PUT_WRAPPER = len(b'{"value":}')
_encode = msgspec.json.Encoder().encode


def record_size(value: Any) -> int:
    """Bytes of the compact PUT body ``{"value": …}`` that stores ``value``."""
    return len(_encode(value)) + _PUT_WRAPPER


def check_record_size(value: Any, max_bytes: int) -> None:
    """Raise ``RecordTooLarge`` when ``value`` would make a record larger than ``max_bytes``."""
    size = record_size(value)
    if size > max_bytes:
        raise RecordTooLarge(
            f"the record would take {size} bytes as a PUT body; the limit is {max_bytes}"
            " (LOCKSTEP_MAX_RECORD_BYTES); nothing was changed"
        )


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON Merge Patch: null deletes a member, arrays and scalars replace."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, val in patch.items():
        if val is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), val)
    return result


def now_iso() -> str:
    """The current UTC time as RFC 3339 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_time(seconds: float) -> str:
    """A Unix time as RFC 3339 with milliseconds, in the form ``now_iso`` gives."""
    stamp = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def apply_record_ops(
    record_id: str, current: Record | None, ops: list[RecordOp], commit: Commit
) -> tuple[Record | None, list[RecordOutcome]]:
    """Apply ``ops`` in order to a record whose stored state is ``current`` (None: absent)."""
    outcomes: list[RecordOutcome] = []
    record = current
    stamp, revision = commit.time, commit.revision
    for op in ops:
        try:
            op.precondition.check(None if record is None else record.version)
        except PreconditionFailed as e:
            outcomes.append(e)
            continue
        if isinstance(op, PutRecord):
            version = 1 if record is None else record.version + 1
            created = record is None
            record = Record(record_id, op.value, version, stamp)
            outcomes.append(Written(record, revision, created))
        elif record is None:
            outcomes.append(NotFound("no such record"))
        elif isinstance(op, PatchRecord):
            value = merge_patch(record.value, op.patch)
            if op.max_bytes is not None:
                try:
                    check_record_size(value, op.max_bytes)
                except RecordTooLarge as e:
                    outcomes.append(e)
                    continue
            record = Record(record_id, value, record.version + 1, stamp)
            outcomes.append(Written(record, revision))
        else:
            record = None
            outcomes.append(Deleted(revision))
    return record, outcomes
