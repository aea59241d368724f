"""The API contract: an OpenAPI 3.1 document of every route, served at ``GET /openapi.json``.

Written by hand next to the handlers it describes; tests compare it with the route table
and fuzz the live service against it, so it cannot drift silently. Limits come from the
settings, so the document states what this deployment actually accepts.
"""

from __future__ import annotations

from typing import Any

from app.domain import INT64_MAX, INT64_MIN
from app.settings import Settings
from app.views.dashboard import ASSETS

Json = dict[str, Any]

NAME_PATTERN = r"^(?!\.\.?$)[A-Za-z0-9._~:-]{1,200}$"
PROBLEM = "application/problem+json"
EVENT_STREAM = "text/event-stream"
# Operations that answer with a never-ending event stream carry this tag; the fuzz run
# excludes it (tests/test_fuzz.py) and hand-written tests cover those operations.
STREAMS_TAG = "streams"
# prometheus-client's exposition format, as GET /metrics labels it.
METRICS_MEDIA = "text/plain; version=0.0.4"
INT64: Json = {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX}

_ERRORS: dict[str, str] = {
    "400": "The body is not UTF-8 JSON, nests too deeply, repeats a key, ended early, or is "
    "not valid in its Content-Encoding; or (tokens on) the request has two Authorization "
    "headers.",
    "401": "A tokens file is configured and the request has no known bearer token.",
    "403": "The token's scope does not cover this request.",
    "404": "The counter or record does not exist.",
    "408": "The body did not arrive within LOCKSTEP_BODY_TIMEOUT seconds; the connection is "
    "closed and nothing changed.",
    "409": "The change would leave the signed 64-bit range, or a request with the same "
    "Idempotency-Key is still in flight; nothing changed.",
    "412": "An If-Match / If-None-Match precondition failed; nothing changed.",
    "413": "The body is larger than LOCKSTEP_MAX_BODY_BYTES, or the record would be larger "
    "than LOCKSTEP_MAX_RECORD_BYTES; nothing changed.",
    "415": "A body's Content-Encoding must be gzip, deflate or none; PATCH needs "
    "Content-Type: application/merge-patch+json.",
    "422": "A bad name, query parameter or body field, or an Idempotency-Key reused for a "
    "different request.",
    "431": "The header lines add up to more than LOCKSTEP_MAX_HEADER_BYTES.",
    "503": "The resource's lock or the database was not available in time; retry.",
}
_HEADERS: dict[str, Json] = {
    "401": {"WWW-Authenticate": {"$ref": "#/components/headers/WWW-Authenticate"}},
    "403": {"WWW-Authenticate": {"$ref": "#/components/headers/WWW-Authenticate"}},
    "415": {
        "Accept-Encoding": {"$ref": "#/components/headers/Accept-Encoding"},
        "Accept-Patch": {"$ref": "#/components/headers/Accept-Patch"},
    },
    "503": {"Retry-After": {"$ref": "#/components/headers/Retry-After"}},
}
# Errors the envelope (app.envelope) can answer on a route before its handler runs: headers
# over LOCKSTEP_MAX_HEADER_BYTES on every route; and on those that need a token, a missing or
# unknown token, one of too narrow a scope, an unusable tokens file (503), or two
# Authorization headers (400).
_EVERY_ROUTE = ("431",)
_SCOPED = ("400", "401", "403", "503")


def _ref(kind: str, name: str) -> Json:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema: Json, media: str = "application/json") -> Json:
    return {"content": {media: {"schema": schema}}}


def _operation(
    summary: str,
    scope: str | None,
    ok: dict[str, Json],
    errors: tuple[str, ...] = (),
    *,
    parameters: list[Json] | None = None,
    body: Json | None = None,
    description: str = "",
    tags: tuple[str, ...] = (),
) -> Json:
    """One operation: its success responses plus a problem response per error status."""
    responses = dict(ok)
    for status in (*errors, *_EVERY_ROUTE, *(() if scope is None else _SCOPED)):
        responses[status] = {
            "description": _ERRORS[status],
            "headers": _HEADERS.get(status, {}),
            **_json(_ref("schemas", "Problem"), PROBLEM),
        }
    op: Json = {
        "summary": summary,
        "description": description or summary,
        "security": [] if scope is None else [{"bearer": [scope]}],
        "responses": dict(sorted(responses.items())),
    }
    if tags:
        op["tags"] = list(tags)
    if parameters:
        op["parameters"] = parameters
    if body is not None:
        op["requestBody"] = body
    return op


def _counter_ok(description: str) -> dict[str, Json]:
    return {"200": {"description": description, **_json(_ref("schemas", "Counter"))}}


def _record_ok(status: str, description: str) -> dict[str, Json]:
    return {
        status: {
            "description": description,
            "headers": {"ETag": _ref("headers", "ETag")},
            **_json(_ref("schemas", "Record")),
        }
    }


def _list_params() -> list[Json]:
    return [_ref("parameters", n) for n in ("prefix", "after", "limit")]


def _components(settings: Settings) -> Json:
    name = {"type": "string", "pattern": NAME_PATTERN}
    etag_list = {"type": "string", "description": 'Entity tags such as "3", or *.'}
    return {
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "Tokens from `lockstep token new`; roles are scopes: "
                "read (GET), write (changes, and read), metrics (/metrics).",
            }
        },
        "parameters": {
            "name": {"name": "name", "in": "path", "required": True, "schema": name},
            "id": {"name": "id", "in": "path", "required": True, "schema": name},
            "prefix": {"name": "prefix", "in": "query", "schema": name},
            "after": {"name": "after", "in": "query", "schema": name},
            "limit": {
                "name": "limit",
                "in": "query",
                "schema": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": settings.list_limit_max,
                    "default": 100,
                },
            },
            "counter": {
                "name": "counter",
                "in": "query",
                "description": "A counter to watch; repeat for several.",
                "schema": {"type": "array", "items": name},
                "style": "form",
                "explode": True,
            },
            "item": {
                "name": "item",
                "in": "query",
                "description": "A record to watch; repeat for several.",
                "schema": {"type": "array", "items": name},
                "style": "form",
                "explode": True,
            },
            "filename": {
                "name": "filename",
                "in": "path",
                "required": True,
                "description": "One of the dashboard's assets.",
                "schema": {"type": "string", "enum": sorted(ASSETS)},
            },
            "If-Match": {"name": "If-Match", "in": "header", "schema": etag_list},
            "Idempotency-Key": {
                "name": "Idempotency-Key",
                "in": "header",
                "description": "Makes the request exactly-once: a repeat with the same key "
                "and the same request gets the stored response (Idempotent-Replayed: true) and "
                "changes nothing, from any worker and after restarts, until the key expires.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            },
            "If-None-Match": {"name": "If-None-Match", "in": "header", "schema": etag_list},
        },
        "headers": {
            "ETag": {"schema": {"type": "string"}, "description": 'The version, e.g. "3".'},
            "Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait."},
            "WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer challenge."},
            "Accept-Encoding": {
                "schema": {"const": "gzip, deflate"},
                "description": "The Content-Encodings a body may have (when that was the fault).",
            },
            "Accept-Patch": {
                "schema": {"const": "application/merge-patch+json"},
                "description": "The media type PATCH takes (when that was the fault).",
            },
            "Idempotent-Replayed": {
                "schema": {"const": "true"},
                "description": "Present when the answer is the stored one for an Idempotency-Key.",
            },
        },
        "schemas": {
            "Problem": {
                "type": "object",
                "description": "RFC 9457 problem details.",
                "required": ["type", "title", "status", "detail"],
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                },
            },
            "Counter": {
                "type": "object",
                "required": ["name", "value"],
                "properties": {"name": name, "value": INT64},
            },
            "Record": {
                "type": "object",
                "required": ["id", "value", "version", "updated_at"],
                "properties": {
                    "id": name,
                    "value": {"description": "Any JSON value."},
                    "version": {"type": "integer", "minimum": 1},
                    "updated_at": {"type": "string", "format": "date-time"},
                },
            },
            "CounterPage": _page("Counter"),
            "RecordPage": _page("Record"),
            "Status": {
                "type": "object",
                "required": ["status"],
                "properties": {
                    "status": {"type": "string"},
                    "writes": {
                        "type": "string",
                        "description": "/readyz only: why writes have been failing lately"
                        " (a full disk), until one succeeds.",
                    },
                },
            },
            "CounterEvent": {
                "type": "object",
                "description": "`data` of an `event: counter`; `value` is null once deleted.",
                "required": ["name", "value", "time"],
                "properties": {
                    "name": name,
                    "value": {"anyOf": [INT64, {"type": "null"}]},
                    "time": {"type": "string", "format": "date-time"},
                },
            },
            "ItemEvent": {
                "type": "object",
                "description": "`data` of an `event: item`; all but `id` are null once deleted.",
                "required": ["id", "value", "version", "updated_at", "time"],
                "properties": {
                    "id": name,
                    "value": {"description": "Any JSON value."},
                    "version": {"type": ["integer", "null"], "minimum": 1},
                    "updated_at": {"type": ["string", "null"], "format": "date-time"},
                    "time": {"type": "string", "format": "date-time"},
                },
            },
            "Stats": _stats_schema(),
        },
    }


def _stats_schema() -> Json:
    counts = {
        "requests": "HTTP requests answered.",
        "lock_waits": "Requests that waited for a resource (counter or record).",
        "lock_waits_uncontended": "Of those, waits under 0.1 ms (nobody was ahead).",
        "lock_timeouts": "Requests that gave up waiting for their resource (503).",
        "locks_held": "Resource locks held now.",
        "locks_waiting": "Requests queued for a resource lock now.",
        "commits": "Write transactions committed.",
        "committed_resources": "Resources written by those transactions.",
        "event_streams": "Event streams open now.",
    }
    properties: Json = {
        k: {"type": "integer", "minimum": 0, "description": d} for k, d in counts.items()
    }
    properties["lock_wait_seconds"] = {
        "type": "number",
        "minimum": 0,
        "description": "Total time spent in those waits.",
    }
    return {
        "type": "object",
        "description": "Totals since start over every worker; rates come from two samples.",
        "required": sorted(properties),
        "properties": properties,
    }


def _stream_ok(*events: str) -> Json:
    described = ", ".join(f"`event: {e}` (data: {e.title()}Event)" for e in events)
    return {
        "200": {
            "description": "Server-Sent Events, never ending on their own: first the current "
            f"state, then one event per committed change: {described}; `: keep-alive` "
            "comments when quiet; `event: shutdown` when the service stops; with tokens on, "
            "`event: unauthorized` (data: status and detail, as a request would get now) "
            "once the stream's token is revoked or the tokens file becomes unusable.",
            "headers": {"Cache-Control": {"schema": {"const": "no-store"}}},
            "content": {
                EVENT_STREAM: {
                    "schema": {"type": "string"},
                    "x-events": {e: _ref("schemas", f"{e.title()}Event") for e in events},
                }
            },
        }
    }


def _page(item: str) -> Json:
    return {
        "type": "object",
        "required": ["items", "next"],
        "properties": {
            "items": {"type": "array", "items": _ref("schemas", item)},
            "next": {"type": ["string", "null"], "description": "`after` for the next page."},
        },
    }


def _body(schema: Json, media: str = "application/json", required: bool = True) -> Json:
    return {"required": required, **_json(schema, media)}


def _paths() -> Json:
    name, item_id = [_ref("parameters", "name")], [_ref("parameters", "id")]
    conditional = [*item_id, _ref("parameters", "If-Match"), _ref("parameters", "If-None-Match")]
    bad_body = ("400", "408", "413", "415", "422")
    increment = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"by": {**INT64, "default": 1}},
    }
    set_body = {
        "type": "object",
        "additionalProperties": False,
        "required": ["value"],
        "properties": {"value": INT64},
    }
    put_body = {"type": "object", "additionalProperties": False, "required": ["value"],
                "properties": {"value": {"description": "Any JSON value."}}}  # fmt: skip
    status = {"200": {"description": "OK", **_json(_ref("schemas", "Status"))}}
    docs = "the API reference"
    return {
        "/access": {
            "get": _operation(
                "Count one access",
                "write",
                {
                    "200": {
                        "description": "The value after this request's increment.",
                        "headers": {"Cache-Control": {"schema": {"const": "no-store"}}},
                        "content": {
                            "text/plain": {"schema": {"type": "string"}},
                            "application/json": {"schema": _ref("schemas", "Counter")},
                        },
                    }
                },
                ("409",),
                description="Increments counter `access`; JSON when `Accept` weighs "
                "`application/json` above zero and not below `text/plain`. "
                "Changes state, so it needs the write scope and HEAD is refused.",
            )
        },
        "/counters": {
            "get": _operation(
                "List counters by name",
                "read",
                {"200": {"description": "A page.", **_json(_ref("schemas", "CounterPage"))}},
                ("422",),
                parameters=_list_params(),
            )
        },
        "/counters/{name}": {
            "get": _operation(
                "Get a counter", "read", _counter_ok("The value."), ("404", "422"), parameters=name
            ),
            "put": _operation(
                "Set a counter",
                "write",
                _counter_ok("The new value."),
                bad_body,
                parameters=name,
                body=_body(set_body),
            ),
            "delete": _operation(
                "Delete a counter",
                "write",
                {"204": {"description": "Deleted."}},
                ("404", "422"),
                parameters=name,
            ),
        },
        "/counters/{name}/increment": {
            "post": _operation(
                "Add to a counter",
                "write",
                _counter_ok("The value after this increment."),
                (*bad_body, "409"),
                parameters=name,
                body=_body(increment, required=False),
                description="Adds `by` (default 1), creating the counter at 0 first.",
            )
        },
        "/items": {
            "get": _operation(
                "List records by id",
                "read",
                {"200": {"description": "A page.", **_json(_ref("schemas", "RecordPage"))}},
                ("422",),
                parameters=_list_params(),
            )
        },
        "/items/{id}": {
            "get": _operation(
                "Get a record",
                "read",
                _record_ok("200", "The record."),
                ("404", "422"),
                parameters=item_id,
            ),
            "put": _operation(
                "Create or replace a record",
                "write",
                {**_record_ok("200", "Replaced."), **_record_ok("201", "Created.")},
                (*bad_body, "412"),
                parameters=conditional,
                body=_body(put_body),
            ),
            "patch": _operation(
                "Merge-patch a record (RFC 7396)",
                "write",
                _record_ok("200", "Patched."),
                (*bad_body, "404", "412"),
                parameters=conditional,
                body=_body({"description": "A JSON Merge Patch."}, "application/merge-patch+json"),
            ),
            "delete": _operation(
                "Delete a record",
                "write",
                {"204": {"description": "Deleted."}},
                ("404", "412", "422"),
                parameters=conditional,
            ),
        },
        "/healthz": {"get": _operation("Liveness", None, status)},
        "/readyz": {
            "get": _operation(
                "Readiness",
                None,
                status,
                ("503",),
                description="The database answers, is the file this worker opened, and a"
                " write transaction can start; 503 otherwise and from the start of a graceful"
                " shutdown. Writes failing for a full disk are reported in `writes`.",
            )
        },
        "/openapi.json": {
            "get": _operation("This document", "read", {"200": {"description": docs, **_json({})}})
        },
        "/docs": {
            "get": _operation(
                "The reference page",
                "read",
                {"200": {"description": docs, **_json({"type": "string"}, "text/html")}},
            )
        },
        **_observability_paths(),
    }


def _observability_paths() -> Json:
    name, item_id = [_ref("parameters", "name")], [_ref("parameters", "id")]
    html = {"type": "string"}
    return {
        "/metrics": {
            "get": _operation(
                "Prometheus metrics",
                "metrics",
                {
                    "200": {
                        "description": "Every worker's metrics, summed, in the Prometheus "
                        "text exposition format 0.0.4.",
                        **_json({"type": "string"}, METRICS_MEDIA),
                    }
                },
                description="For a scraper: needs a token of its own scope, `metrics` "
                "(read and write tokens get 403).",
            )
        },
        "/stats": {
            "get": _operation(
                "Service figures for the dashboard",
                "read",
                {
                    "200": {
                        "description": "Totals over every worker.",
                        "headers": {"Cache-Control": {"schema": {"const": "no-store"}}},
                        **_json(_ref("schemas", "Stats")),
                    }
                },
                description="A few unlabelled totals from the same figures as /metrics, "
                "readable with a read token; the dashboard polls it for its rates.",
            )
        },
        "/events": {
            "get": _operation(
                "Stream several resources",
                "read",
                _stream_ok("counter", "item"),
                ("422",),
                parameters=[_ref("parameters", "counter"), _ref("parameters", "item")],
                description="One stream for up to LOCKSTEP_EVENTS_MAX_RESOURCES counters and "
                "records: `?counter=a&counter=b&item=c`; at least one is needed.",
                tags=(STREAMS_TAG,),
            )
        },
        "/counters/{name}/events": {
            "get": _operation(
                "Stream a counter",
                "read",
                _stream_ok("counter"),
                ("422",),
                parameters=name,
                description="The counter's value now (null if absent), then on every change "
                "committed by any worker.",
                tags=(STREAMS_TAG,),
            )
        },
        "/items/{id}/events": {
            "get": _operation(
                "Stream a record",
                "read",
                _stream_ok("item"),
                ("422",),
                parameters=item_id,
                description="The record now (nulls if absent), then on every change "
                "committed by any worker.",
                tags=(STREAMS_TAG,),
            )
        },
        "/": {
            "get": _operation(
                "The dashboard page",
                None,
                {"200": {"description": "HTML; holds no data.", **_json(html, "text/html")}},
                description="Open even with tokens on: it holds no data, and the token typed "
                "into it is sent on its own calls.",
            )
        },
        "/static/{filename}": {
            "get": _operation(
                "The dashboard's assets",
                None,
                {
                    "200": {
                        "description": "The file.",
                        "content": {
                            media: {"schema": {"type": "string"}}
                            for media in sorted(set(ASSETS.values()))
                        },
                    }
                },
                ("404",),
                parameters=[_ref("parameters", "filename")],
                description="The packaged script and stylesheet (`app/static/`), by exact "
                "name; open, they hold no data.",
            )
        },
    }


# The operations that take an Idempotency-Key (app/views/idempotent.py).
IDEMPOTENT = (
    ("/counters/{name}/increment", "post"),
    ("/counters/{name}", "put"),
    ("/counters/{name}", "delete"),
    ("/items/{id}", "put"),
    ("/items/{id}", "patch"),
    ("/items/{id}", "delete"),
)


def _with_idempotency(paths: Json) -> Json:
    """Add the Idempotency-Key header, its replay header and its error statuses."""
    for path, method in IDEMPOTENT:
        op = paths[path][method]
        op["parameters"] = [*op.get("parameters", []), _ref("parameters", "Idempotency-Key")]
        for status, response in op["responses"].items():
            if status.startswith("2"):
                response.setdefault("headers", {})["Idempotent-Replayed"] = _ref(
                    "headers", "Idempotent-Replayed"
                )
        for status in ("409", "422"):
            op["responses"].setdefault(
                status,
                {
                    "description": _ERRORS[status],
                    **_json(_ref("schemas", "Problem"), PROBLEM),
                },
            )
        op["responses"] = dict(sorted(op["responses"].items()))
    return paths


def openapi_document(settings: Settings) -> Json:
    """The whole API as an OpenAPI 3.1 document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "lockstep",
            "version": "0.1.0",
            "description": "Counters and JSON records over HTTP that stay correct under any "
            "concurrency. Errors are RFC 9457 problem bodies. With a tokens file configured, "
            "every operation but /healthz and /readyz needs `Authorization: Bearer <token>`.",
        },
        "security": [{"bearer": ["read"]}],
        "paths": _with_idempotency(_paths()),
        "components": _components(settings),
    }
