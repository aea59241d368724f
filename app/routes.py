"""The route table: every operation the service answers, declared once.

Each ``Route`` names its method, path, handler, token scope, request and answer bodies
(msgspec structs, ``app.views.bodies``), documented errors, and whether it takes an
``Idempotency-Key``. ``setup_routes`` registers the table with aiohttp's router,
``route_scopes`` gives the middleware (``app.middleware``) each route's scope, and
``app.openapi`` builds the OpenAPI document from the same table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from app.tokens import Scope
from app.views import (
    changes,
    counters,
    dashboard,
    docs,
    events,
    health,
    history,
    locks,
    metrics,
    records,
    txn,
)
from app.views.bodies import (
    AcquireBody,
    ChangeEvent,
    ChangesPage,
    Counter,
    CounterPage,
    IncrementBody,
    Lock,
    LockPage,
    LockStatus,
    MergePatch,
    PutBody,
    Record,
    RecordPage,
    RecordVersion,
    RecordVersionPage,
    RenewBody,
    ResetEvent,
    SetBody,
    SnapshotEvent,
    Stats,
    Status,
    TxnAnswer,
    TxnRequest,
)

JSON = "application/json"
HTML = "text/html"
EVENT_STREAM = "text/event-stream"
# prometheus-client's exposition format, as GET /metrics labels it.
METRICS_MEDIA = "text/plain; version=0.0.4"
# Operations answering a never-ending event stream; fuzzing leaves them out (tests/test_fuzz.py).
STREAMS_TAG = "streams"
_BAD_BODY = (400, 408, 413, 415, 422)
# The operations' groups, in the order the reference shows them.
TAGS = {
    "counters": "Signed 64-bit counters, created at 0 by their first increment.",
    "records": "JSON documents with a version; the ETag is the version in quotes.",
    "changes": "The change log: every commit's changes by revision, and records' history.",
    "transactions": "Conditions and changes over several resources, all or nothing.",
    "locks": "Leases with fencing tokens: asyncio.Lock's contract across workers and hosts.",
    STREAMS_TAG: "Server-Sent Events, one per commit, resumable by revision.",
    "operations": "Probes, metrics and figures for operators.",
    "reference": "This document and its page.",
    "dashboard": "The built-in dashboard.",
}
# The response headers answers document, by name.
HEADERS: dict[str, dict[str, Any]] = {
    name: {"schema": schema, "description": description}
    for name, schema, description in (
        ("ETag", {"type": "string"}, 'The version in quotes, e.g. "3".'),
        ("Retry-After", {"type": "string"}, "Seconds to wait."),
        ("WWW-Authenticate", {"type": "string"}, "The bearer challenge."),
        ("Accept-Encoding", {"const": "gzip, deflate"}, "The codings a body may have."),
        ("Accept-Patch", {"const": "application/merge-patch+json"}, "What PATCH takes."),
        ("Cache-Control", {"const": "no-store"}, "Never cached."),
        ("Idempotent-Replayed", {"const": "true"}, "The stored answer for an Idempotency-Key."),
        ("Lockstep-Revision", {"type": "string"}, "The revision of the commit that applied it."),
    )
}


@dataclass(frozen=True, slots=True)
class Answer:
    """One documented success answer: its media types and their body types."""

    status: int
    description: str
    content: Mapping[str, Any] = field(default_factory=dict)
    headers: tuple[str, ...] = ()  # names of the document's header components
    events: tuple[type, ...] = ()  # an event stream's data types, one per event name


@dataclass(frozen=True, slots=True)
class Route:
    """One operation; ``scope`` None means open even when tokens are required."""

    method: str
    path: str
    handler: Handler
    tag: str
    summary: str
    scope: Scope | None
    answers: tuple[Answer, ...]
    errors: tuple[int, ...] = ()
    description: str = ""
    body: Any = None  # the request body's type; None: the operation takes no body
    body_media: str = JSON
    body_required: bool = True
    params: tuple[str, ...] = ()  # query and header parameters (path ones come from the path)
    idempotent: bool = False  # takes an Idempotency-Key
    head: bool = True  # a GET answers HEAD too


def _json(status: int, body: Any, description: str, *headers: str) -> Answer:
    return Answer(status, description, {JSON: body}, headers)


def _deleted() -> Answer:
    return Answer(204, "Deleted.")


def _stream() -> Answer:
    return Answer(
        200,
        "Server-Sent Events, never ending on their own: without a resume point first `event: "
        "snapshot` (over the whole feed or a prefix, possibly several: all but the last have "
        "`more` true and no `id:`); after `Last-Event-ID` or `since`, every retained commit "
        "after it (`event: reset` and a snapshot when that is older than the log); then one "
        "`event: change` per commit touching what the stream watches, its `id:` the revision; "
        "`: keep-alive` comments when quiet; `event: shutdown` when the service stops; with "
        "tokens on, `event: unauthorized` (data: status and detail, as a request would get now) "
        "once the stream's token is revoked or the tokens file becomes unusable.",
        {EVENT_STREAM: str},
        ("Cache-Control",),
        (ChangeEvent, SnapshotEvent, ResetEvent),
    )


_CONDITIONAL = ("If-Match", "If-None-Match", "Lockstep-Fence")
_PAGE = ("prefix", "after", "limit")
_RESUME = ("since", "Last-Event-ID")

# aiohttp tries the resources under one prefix (/counters, /items) in the order they are
# added: the busiest come first, so a write matches at the first try.
ROUTES: tuple[Route, ...] = (
    Route("GET", "/access", counters.access, "counters", "Count one access", "write",
          (Answer(200, "The value after this request's increment.",
                  {"text/plain": str, JSON: Counter}, ("Cache-Control",)),),
          (400, 409, 412), "Increments counter `access` and answers `Resource accessed N "
          "times.`, or JSON when `Accept` weighs `application/json` above zero and not below "
          "`text/plain`. It changes state, so it needs the write scope and HEAD is refused; "
          "with `Lockstep-Fence` it counts only while those leases are held (else 412 "
          "`fence-stale`).", params=("Lockstep-Fence",), head=False),
    Route("POST", "/counters/{name}/increment", counters.increment, "counters",
          "Add to a counter", "write",
          (_json(200, Counter, "The value after this increment.", "ETag", "Lockstep-Revision"),),
          (*_BAD_BODY, 409, 412), "Adds `by` (default 1), creating the counter at 0 first.",
          body=IncrementBody, body_required=False, params=_CONDITIONAL, idempotent=True),
    Route("GET", "/counters/{name}", counters.get_counter, "counters", "Get a counter", "read",
          (_json(200, Counter, "The committed value.", "ETag"),), (404, 422)),
    Route("PUT", "/counters/{name}", counters.set_counter, "counters", "Set a counter", "write",
          (_json(200, Counter, "The new value.", "ETag", "Lockstep-Revision"),),
          (*_BAD_BODY, 412), "Sets the value, creating the counter if needed; "
          "`If-None-Match: *` creates only, `If-Match` sets only that version.",
          body=SetBody, params=_CONDITIONAL, idempotent=True),
    Route("DELETE", "/counters/{name}", counters.delete_counter, "counters", "Delete a counter",
          "write", (_deleted(),), (404, 412, 422), params=_CONDITIONAL, idempotent=True),
    Route("GET", "/counters", counters.list_counters, "counters", "List counters by name",
          "read", (_json(200, CounterPage, "A page."),), (422,), params=_PAGE),
    Route("GET", "/items/{id}", records.get_record, "records", "Get a record", "read",
          (_json(200, Record, "The record.", "ETag"),), (404, 422)),
    Route("PUT", "/items/{id}", records.put_record, "records", "Create or replace a record",
          "write",
          (_json(200, Record, "Replaced.", "ETag"), _json(201, Record, "Created.", "ETag")),
          (*_BAD_BODY, 412), "`If-None-Match: *` creates only; `If-Match` replaces only that "
          "version.", body=PutBody, params=_CONDITIONAL, idempotent=True),
    Route("PATCH", "/items/{id}", records.patch_record, "records", "Merge-patch a record", "write",
          (_json(200, Record, "Patched.", "ETag"),), (*_BAD_BODY, 404, 412),
          "Applies an RFC 7396 JSON Merge Patch: `null` deletes a member, arrays are replaced "
          "whole.", body=MergePatch, body_media="application/merge-patch+json",
          params=_CONDITIONAL, idempotent=True),
    Route("DELETE", "/items/{id}", records.delete_record, "records", "Delete a record", "write",
          (_deleted(),), (404, 412, 422), params=_CONDITIONAL, idempotent=True),
    Route("GET", "/items", records.list_records, "records", "List records by id", "read",
          (_json(200, RecordPage, "A page."),), (422,), params=_PAGE),
    Route("POST", "/txn", txn.txn, "transactions", "Apply a transaction", "write",
          (_json(200, TxnAnswer, "Which branch ran, its revision, and one result per operation "
                 "of it.", "Lockstep-Revision"),),
          (*_BAD_BODY, 409, 412),
          "If every condition of `if` holds, the operations of `then` run in order, else those "
          "of `else`, each seeing the effects of those before it, all in one commit. A "
          "condition names a `counter` or an `item` and holds one of `cmp` + `value` (a "
          "counter's value: `==` `!=` `<` `<=` `>` `>=`), `version` or `exists`; "
          "a missing resource is absent, for which only `exists: false` holds. An operation "
          "that cannot apply (64-bit overflow, patch or delete of something absent) answers "
          "409 naming it, and nothing is written. A condition `{\"lock\": name, \"token\": "
          "t}` is a fence: unless that lock is held with that token, 412 `fence-stale` and "
          "nothing is written. At most LOCKSTEP_TXN_MAX_OPS conditions and "
          "operations (422 above).",
          body=TxnRequest, params=("Lockstep-Fence",), idempotent=True),
    Route("POST", "/locks/{name}", locks.acquire, "locks", "Acquire a lock", "write",
          (_json(201, Lock, "Held: the token is the ETag; fenced writes name it.", "ETag",
                 "Lockstep-Revision"),),
          (*_BAD_BODY, 409),
          "Takes the lock for `ttl` seconds (1-3600). If it is held, or others queue for it, "
          "the request queues up to `wait` seconds (0-60): waiters get the lock in the order "
          "they asked, across workers and hosts, and the next one holds it as soon as it is "
          "released or expires. Still held after `wait`: 409 `lock-held` with the holder's "
          "`owner` and `expires_at`, and `Retry-After`. Tokens strictly increase per name.",
          body=AcquireBody),
    Route("GET", "/locks/{name}", locks.get_lock, "locks", "Who holds a lock", "read",
          (_json(200, LockStatus, "Held (asyncio's `locked()`).", "ETag"),), (404, 422),
          "404 when the lock is free."),
    Route("PUT", "/locks/{name}", locks.renew, "locks", "Renew a lease", "write",
          (_json(200, Lock, "Renewed: it now expires `ttl` seconds from now.", "ETag",
                 "Lockstep-Revision"),),
          (*_BAD_BODY, 412, 428), "Only the holder renews: `If-Match: \"<token>\"` is "
          "required (428 without), and a token that does not hold the lock gets 412.",
          body=RenewBody, params=("If-Match",)),
    Route("DELETE", "/locks/{name}", locks.release, "locks", "Release a lock", "write",
          (Answer(204, "Released; the first waiter holds it now.", {},
                  ("Lockstep-Revision",)),),
          (412, 422, 428), "Only the holder releases: `If-Match: \"<token>\"` is required "
          "(428 without), and a token that does not hold the lock gets 412, as releasing an "
          "unheld asyncio.Lock raises.", params=("If-Match",)),
    Route("GET", "/locks", locks.list_locks, "locks", "List held locks by name", "read",
          (_json(200, LockPage, "A page."),), (422,), params=_PAGE),
    Route("GET", "/locks/{name}/events", locks.lock_events, STREAMS_TAG, "Stream a lock",
          "read", (_stream(),), (422,),
          "Every change of its lease: acquired, renewed, released, expired.", params=_RESUME),
    Route("GET", "/healthz", health.healthz, "operations", "Liveness", None,
          (_json(200, Status, "The process is alive."),)),
    Route("GET", "/readyz", health.readyz, "operations", "Readiness", None,
          (_json(200, Status, "Ready."),), (503,),
          "The database answers, is the file this worker opened, and a write transaction can "
          "start; 503 otherwise and from the start of a graceful shutdown. Writes failing for "
          "a full disk are reported in `writes`."),
    Route("GET", "/openapi.json", docs.openapi_json, "reference", "This API as OpenAPI 3.1",
          "read", (_json(200, dict[str, Any], "The OpenAPI document."),)),
    Route("GET", "/docs", docs.docs, "reference", "This reference page", "read",
          (Answer(200, "The page.", {HTML: str}),)),
    Route("GET", "/metrics", metrics.metrics, "operations", "Prometheus metrics", "metrics",
          (Answer(200, "Every worker's metrics, summed.", {METRICS_MEDIA: str}),),
          description="For a scraper: needs a token of its own scope, `metrics` (read and "
          "write tokens get 403)."),
    Route("GET", "/stats", metrics.stats, "operations", "Service figures for the dashboard",
          "read", (_json(200, Stats, "Totals over every worker.", "Cache-Control"),),
          description="A few totals from the same figures as /metrics, readable with a read "
          "token; the dashboard polls it for its rates."),
    Route("GET", "/items/{id}/versions", history.record_versions, "changes",
          "List a record's retained versions", "read",
          (_json(200, RecordVersionPage, "A page."),), (422,),
          "Newest first, from the change log (kept LOCKSTEP_CHANGES_RETENTION seconds); "
          "`next` is the `before` of the following page.", params=("before", "limit")),
    Route("GET", "/items/{id}/versions/{version}", history.record_version_view, "changes",
          "Get one retained version of a record", "read",
          (_json(200, RecordVersion, "The version.", "ETag"),), (404, 422),
          "The newest retained entry with that version (a record recreated after a delete "
          "starts again at 1)."),
    Route("GET", "/changes", changes.changes, "changes", "Read the change log", "read",
          (_json(200, ChangesPage, "A page."),), (410, 422),
          "Entries after revision `since`, in revision order, whole commits only (a page may "
          "hold a few more than `limit`); `wait` long-polls until there is one.",
          params=("since", "limit", "kind", "prefix", "wait")),
    Route("GET", "/changes/events", events.feed_events, STREAMS_TAG,
          "Stream the change feed", "read", (_stream(),), (422,),
          "Every commit, or those touching one kind or name prefix (change-data capture).",
          params=("kind", "prefix", *_RESUME)),
    Route("GET", "/events", events.events, STREAMS_TAG, "Stream several resources", "read",
          (_stream(),), (422,),
          "One stream for up to LOCKSTEP_EVENTS_MAX_RESOURCES counters and records: "
          "`?counter=a&counter=b&item=c`; at least one is needed.",
          params=("counter", "item", *_RESUME)),
    Route("GET", "/counters/{name}/events", events.counter_events, STREAMS_TAG,
          "Stream a counter", "read", (_stream(),), (422,),
          "Every commit that changes the counter.", params=_RESUME),
    Route("GET", "/items/{id}/events", events.record_events, STREAMS_TAG, "Stream a record",
          "read", (_stream(),), (422,), "Every commit that changes the record.",
          params=_RESUME),
    Route("GET", "/", dashboard.dashboard, "dashboard", "The dashboard page", None,
          (Answer(200, "HTML; holds no data.", {HTML: str}),),
          description="Open even with tokens on: it holds no data, and the token typed into "
          "it is sent on its own calls."),
    Route("GET", "/static/{filename}", dashboard.asset, "dashboard", "The dashboard's assets",
          None, (Answer(200, "The file.", dict.fromkeys(sorted(set(dashboard.ASSETS.values())),
                                                     str)),),
          (404,), "The packaged script and stylesheet, by exact name; they hold no data."),
)  # fmt: skip


def setup_routes(app: web.Application) -> None:
    """Register every route of the table; a GET answers HEAD too unless its route says not."""
    router = app.router
    for route in ROUTES:
        if route.method == "GET":
            router.add_get(route.path, route.handler, allow_head=route.head)
        else:
            router.add_route(route.method, route.path, route.handler)


def route_scopes() -> dict[tuple[str, str], Scope | None]:
    """The token scope of each method and path template registered; HEAD's is its GET's."""
    scopes = {(route.method, route.path): route.scope for route in ROUTES}
    scopes.update(
        (("HEAD", route.path), route.scope)
        for route in ROUTES
        if route.method == "GET" and route.head
    )
    return scopes
