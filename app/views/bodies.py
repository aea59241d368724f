"""The API's JSON bodies as msgspec structs.

Handlers decode request bodies and encode answers with these; the OpenAPI document takes
its schemas from the same structs (``msgspec.json.schema_components``), so the two cannot
differ. Event and statistics bodies are built elsewhere as dictionaries; their structs
describe them, and tests check the live answers against the document.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from app.domain import INT64_MAX, INT64_MIN, NAME_RE

Name = Annotated[str, Meta(pattern=f"^{NAME_RE.pattern}$")]
Int64 = Annotated[int, Meta(ge=INT64_MIN, le=INT64_MAX)]
Version = Annotated[int, Meta(ge=1)]
Time = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]
AnyJson = Annotated[Any, Meta(description="Any JSON value.")]
MergePatch = Annotated[Any, Meta(description="An RFC 7396 JSON Merge Patch.")]
Count = Annotated[int, Meta(ge=0)]
Revision = Annotated[int, Meta(ge=0)]


class IncrementBody(msgspec.Struct, forbid_unknown_fields=True):
    """How much to add; the body may be left out (then 1)."""

    by: Int64 = 1


class SetBody(msgspec.Struct, forbid_unknown_fields=True):
    """The counter's new value."""

    value: Int64


class PutBody(msgspec.Struct, forbid_unknown_fields=True):
    """The record's new value."""

    value: AnyJson


class Counter(msgspec.Struct):
    """A counter, its committed value, and its version (operations applied; the ETag)."""

    name: Name
    value: Int64
    version: Version


class Record(msgspec.Struct):
    """A record as committed; its ETag is its version in quotes."""

    id: Name
    value: AnyJson
    version: Version
    updated_at: Time


class CounterPage(msgspec.Struct):
    """Counters by name; ``next`` is the ``after`` of the following page (null: the last)."""

    items: list[Counter]
    next: str | None


class RecordPage(msgspec.Struct):
    """Records by id; ``next`` is the ``after`` of the following page (null: the last)."""

    items: list[Record]
    next: str | None


class Status(msgspec.Struct, omit_defaults=True):
    """A probe's answer; ``writes`` says why writes have been failing lately (a full disk)."""

    status: str
    writes: Annotated[
        str | None,
        Meta(description="/readyz only: why writes have been failing lately (a full disk)."),
    ] = None


class Problem(msgspec.Struct):
    """RFC 9457 problem details; ``type`` is ``urn:lockstep:problem:<slug>`` or about:blank."""

    type: str
    title: str
    status: int
    detail: str


class CounterEvent(msgspec.Struct):
    """The data of an ``event: counter``; ``value`` is null once the counter is deleted."""

    name: Name
    value: Int64 | None
    time: Time


class RecordEvent(msgspec.Struct):
    """The data of an ``event: item``; all but ``id`` and ``time`` are null once deleted."""

    id: Name
    value: AnyJson
    version: Version | None
    updated_at: Time | None
    time: Time


class Change(msgspec.Struct, omit_defaults=True):
    """What one commit did to one resource: counters are named by ``name``, records by ``id``;
    ``value`` and ``version`` are null once it is deleted."""

    revision: Revision
    kind: Literal["counter", "item", "lock"]
    value: AnyJson
    version: Version | None
    time: Time
    name: Name | None = None
    id: Name | None = None


class ChangesPage(msgspec.Struct):
    """Change-log entries in revision order, whole commits only; ``next`` is the ``since`` of
    the following page, ``oldest`` the oldest revision the log still holds."""

    changes: list[Change]
    next: Revision
    oldest: Revision


class ChangeEvent(msgspec.Struct):
    """The data of an ``event: change`` (its id is the revision): one commit's entries for
    what the stream watches."""

    revision: Revision
    changes: list[Change]


class SnapshotEvent(msgspec.Struct):
    """The data of an ``event: snapshot`` (its id is the revision it was read at): one entry
    per resource the stream watches, null if absent. A large part of the feed comes in
    several: each but the last has ``more`` true and no id, and a later entry for a
    resource replaces an earlier one; taken in order they are the state at the last's id."""

    revision: Revision
    changes: list[Change]
    more: bool = False


class ResetEvent(msgspec.Struct):
    """The data of an ``event: reset``: the resume point is older than the log; a snapshot
    follows."""

    oldest: Revision


class RecordVersion(msgspec.Struct):
    """One retained version of a record, and the revision that wrote it."""

    id: Name
    value: AnyJson
    version: Version
    updated_at: Time
    revision: Revision


class RecordVersionPage(msgspec.Struct):
    """A record's versions, newest first; ``next`` is the ``before`` of the following page."""

    items: list[RecordVersion]
    next: Revision | None


class Stats(msgspec.Struct):
    """Totals since start over every worker; rates come from two samples."""

    requests: Annotated[Count, Meta(description="HTTP requests answered.")]
    lock_waits: Annotated[Count, Meta(description="Requests that waited for a resource.")]
    lock_waits_uncontended: Annotated[
        Count, Meta(description="Of those, waits under 0.1 ms (nobody was ahead).")
    ]
    lock_wait_seconds: Annotated[float, Meta(ge=0, description="Total time spent in those waits.")]
    lock_timeouts: Annotated[Count, Meta(description="Requests that gave up waiting (503).")]
    locks_held: Annotated[Count, Meta(description="Resource locks held now.")]
    locks_waiting: Annotated[Count, Meta(description="Requests queued for a lock now.")]
    commits: Annotated[Count, Meta(description="Write transactions committed.")]
    committed_resources: Annotated[
        Count, Meta(description="Resources written by those transactions.")
    ]
    event_streams: Annotated[Count, Meta(description="Event streams open now.")]


# --- /locks ------------------------------------------------------------------------

Ttl = Annotated[float, Meta(ge=1, le=3600, description="Seconds the lease lasts unless renewed.")]
Owner = Annotated[str, Meta(max_length=200, description="Free text naming the holder.")]
Token = Annotated[int, Meta(ge=1, description="The fencing token; it only ever increases.")]


class AcquireBody(msgspec.Struct, forbid_unknown_fields=True):
    """Hold the lock for ``ttl`` seconds, waiting up to ``wait`` seconds for it."""

    ttl: Ttl
    wait: Annotated[float, Meta(ge=0, le=60, description="Seconds to queue for it.")] = 0
    owner: Owner | None = None


class RenewBody(msgspec.Struct, forbid_unknown_fields=True):
    """Extend the lease to ``ttl`` seconds from now."""

    ttl: Ttl


class Lock(msgspec.Struct):
    """A lease as acquired or renewed, and the commit that recorded it (the ETag is the token)."""

    name: Name
    token: Token
    owner: str | None
    expires_at: Time
    revision: Revision


class LockStatus(msgspec.Struct):
    """A held lock, and how many requests wait for it."""

    name: Name
    token: Token
    owner: str | None
    expires_at: Time
    waiting: Count


class HeldLock(msgspec.Struct):
    """A held lock in a listing."""

    name: Name
    token: Token
    owner: str | None
    expires_at: Time


class LockPage(msgspec.Struct):
    """Held locks by name; ``next`` is the ``after`` of the following page (null: the last)."""

    items: list[HeldLock]
    next: str | None


# --- POST /txn ---------------------------------------------------------------------

Comparison = Literal["==", "!=", "<", "<=", ">", ">="]
TxnOpName = Literal["get", "set", "increment", "put", "patch", "delete"]


class TxnCondition(msgspec.Struct, forbid_unknown_fields=True):
    """A test on one resource: ``counter`` or ``item``, and ``cmp`` + ``value``, ``version`` or
    ``exists``. ``cmp`` compares a counter's value; a missing resource is absent, for which
    only ``exists: false`` holds. ``lock`` + ``token`` is a fence: unless that lock is held
    with that token the whole transaction is refused (412 fence-stale)."""

    counter: Name | None = None
    item: Name | None = None
    lock: Name | None = None
    token: Token | None = None
    cmp: Comparison | None = None
    value: Int64 | None = None
    version: Version | None = None
    exists: bool | None = None


class TxnOperation(msgspec.Struct, forbid_unknown_fields=True):
    """One operation on ``counter`` (get, set, increment, delete) or ``item`` (get, put,
    patch, delete): ``by`` for increment (default 1), ``value`` for set, put and patch (an
    RFC 7396 merge patch)."""

    op: TxnOpName
    counter: Name | None = None
    item: Name | None = None
    by: Int64 | None = None
    value: AnyJson = msgspec.UNSET


class TxnBody(msgspec.Struct, forbid_unknown_fields=True, rename={"if_": "if", "else_": "else"}):
    """If every condition of ``if`` holds, ``then`` is applied, else ``else``; all or nothing."""

    if_: list[TxnCondition] = []
    then: list[TxnOperation] = []
    else_: list[TxnOperation] = []


# The OpenAPI document's worked example: move one unit of stock into a new order.
TxnRequest = Annotated[
    TxnBody,
    Meta(
        examples=[
            {
                "if": [
                    {"counter": "stock", "cmp": ">=", "value": 1},
                    {"item": "order-9", "exists": False},
                ],
                "then": [
                    {"op": "increment", "counter": "stock", "by": -1},
                    {"op": "put", "item": "order-9", "value": {"qty": 1}},
                ],
                "else": [{"op": "get", "counter": "stock"}],
            }
        ]
    ),
]


class TxnCounter(msgspec.Struct):
    """A counter after a set or increment, or as a get found it (all but ``name`` null: absent)."""

    name: Name
    value: Int64 | None
    version: Version | None


class TxnRecord(msgspec.Struct):
    """A record after a put or patch, or as a get found it (all but ``id`` null: absent)."""

    id: Name
    value: AnyJson
    version: Version | None
    updated_at: Time | None


class TxnDeleted(msgspec.Struct):
    """A delete that applied."""

    deleted: bool


def _inline(*types: type) -> list[dict[str, Any]]:
    _, components = msgspec.json.schema_components(types)
    return [components[t.__name__] for t in types]


class TxnAnswer(msgspec.Struct):
    """Which branch ran, the commit that applied it (or, if it changed nothing, the last one
    before its reads), and one result per operation of the branch, in order."""

    succeeded: bool
    revision: Annotated[int, Meta(ge=0)]
    results: Annotated[
        # msgspec cannot describe a union of untagged structs: the items' schema is theirs.
        list[Any],
        Meta(extra_json_schema={"items": {"anyOf": _inline(TxnCounter, TxnRecord, TxnDeleted)}}),
    ]
