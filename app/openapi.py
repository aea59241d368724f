"""The API contract: an OpenAPI 3.1 document of every route, served at ``GET /openapi.json``.

Written by hand next to the handlers it describes; tests compare it with the route table
and fuzz the live service against it, so it cannot drift silently. Limits come from the
settings, so the document states what this deployment actually accepts.
"""

from __future__ import annotations

from typing import Any

from app.domain import INT64_MAX, INT64_MIN
from app.settings import Settings

Json = dict[str, Any]

NAME_PATTERN = r"^(?!\.\.?$)[A-Za-z0-9._~:-]{1,200}$"
PROBLEM = "application/problem+json"
INT64: Json = {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX}

_ERRORS: dict[str, str] = {
    "400": "The body is not JSON, nests too deeply, repeats a key, or ended early.",
    "401": "A tokens file is configured and the request has no known bearer token.",
    "403": "The token's scope does not cover this request.",
    "404": "The counter or record does not exist.",
    "409": "The change would leave the signed 64-bit range; nothing changed.",
    "412": "An If-Match / If-None-Match precondition failed; nothing changed.",
    "413": "The body is larger than LOCKSTEP_MAX_BODY_BYTES.",
    "415": "PATCH needs Content-Type: application/merge-patch+json.",
    "422": "A bad name, query parameter or body field.",
    "431": "The header lines add up to more than LOCKSTEP_MAX_HEADER_BYTES.",
    "503": "The resource's lock or the database was not available in time; retry.",
}
_HEADERS: dict[str, Json] = {
    "401": {"WWW-Authenticate": {"$ref": "#/components/headers/WWW-Authenticate"}},
    "403": {"WWW-Authenticate": {"$ref": "#/components/headers/WWW-Authenticate"}},
    "503": {"Retry-After": {"$ref": "#/components/headers/Retry-After"}},
}
# Errors any request can meet: auth, oversized headers, an overloaded database.
_ALWAYS = ("401", "403", "431", "503")


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
) -> Json:
    """One operation: its success responses plus a problem response per error status."""
    responses = dict(ok)
    for status in (*errors, *(() if scope is None else _ALWAYS)):
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
            "If-Match": {"name": "If-Match", "in": "header", "schema": etag_list},
            "If-None-Match": {"name": "If-None-Match", "in": "header", "schema": etag_list},
        },
        "headers": {
            "ETag": {"schema": {"type": "string"}, "description": 'The version, e.g. "3".'},
            "Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait."},
            "WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer challenge."},
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
                "properties": {"status": {"type": "string"}},
            },
        },
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
    bad_body = ("400", "413", "422")
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
                description="Increments counter `access`; JSON with `Accept: application/json`. "
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
                (*bad_body, "404", "412", "415"),
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
                description="The database answers; 503 from the start of a graceful shutdown.",
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
    }


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
        "paths": _paths(),
        "components": _components(settings),
    }
